"""The token ids behind a batch of answers, handed to reward sources that can read them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ResponseTokens:
    """What the policy produced, as token ids (B rows)."""

    prompt_ids: torch.Tensor  # (B, Tq) chat-formatted prompts, left-padded
    prompt_mask: torch.Tensor  # (B, Tq) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, Tr) sampled tokens, right-padded, cut after the stop token
    response_mask: torch.Tensor  # (B, Tr) True on real response tokens
    ended: torch.Tensor  # (B,) True where the answer stopped at the stop token
