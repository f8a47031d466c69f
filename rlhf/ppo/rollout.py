"""A PPO rollout: the sampled batch and everything the update computes from it.

Prompts are left-padded (B, Tq), responses right-padded (B, Tr); sampling itself is
rlhf/runtime/generation.py, shared with the eval stage and chat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.runtime.generation import EncodedPrompts


@dataclass
class Responses:
    """Sampled answers to a batch of prompts, before scoring (what `PPOSession.generate`
    returns): prompts left-padded (B, Tq), responses right-padded (B, Tr) with everything after
    the first stop token set to pad."""

    prompts: list[str]
    encoded: EncodedPrompts
    responses: torch.Tensor  # (B, Tr)
    mask: torch.Tensor  # (B, Tr) bool, True on real response tokens (the stop token included)
    ended: torch.Tensor  # (B,) bool, stopped at the stop token
    texts: list[str]  # decoded without special tokens
    max_new_tokens: int  # the length limit they were sampled with
    # (B, Tr) the rollout engine's log-probs of the sampled tokens (vLLM); None: sampled by the
    # trained model itself
    engine_logprobs: torch.Tensor | None = None

    @property
    def tokens(self) -> list[torch.Tensor]:
        """Each answer's real tokens (1-D, the stop token included where it ended)."""
        lengths = self.mask.sum(1).tolist()
        return [row[:n] for row, n in zip(self.responses, lengths, strict=True)]


@dataclass
class Rollout:
    prompts: list[str]
    encoded: EncodedPrompts
    responses: torch.Tensor  # (B, Tr)
    mask: torch.Tensor  # (B, Tr) bool, True on real response tokens
    ended: torch.Tensor  # (B,) bool, stopped at the stop token
    texts: list[str]
    raw_scores: torch.Tensor  # (B,) as the reward source gave them
    scores: torch.Tensor  # (B,) after penalty / scale / normalisation / clip
    max_new_tokens: int | None = None  # the length limit these responses were sampled with
    logprobs: torch.Tensor | None = None  # (B, Tr) policy, at sampling time
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    kl_full: torch.Tensor | None = None  # (B, Tr) exact KL from the logits (kl_estimator=full)
    kl: torch.Tensor | None = None  # (B, Tr) estimator used for the penalty
    rewards: torch.Tensor | None = None
    non_score_rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None  # (B, Tr) bool, the tokens the loss trains on
    uniform: torch.Tensor | None = None  # (B,) bool, in a group whose scores are all equal
    engine_logprobs: torch.Tensor | None = None  # (B, Tr) the rollout engine's (vLLM)
    correction: torch.Tensor | None = None  # (B, Tr) importance weights for the engine's gap
    engine_stats: dict | None = None  # the gap and the weights' statistics (0-d tensors)

    @classmethod
    def of(cls, batch: Responses, raw_scores: torch.Tensor, scores: torch.Tensor) -> Rollout:
        """A rollout of sampled (or given) responses and their scores, raw and processed."""
        return cls(
            batch.prompts, batch.encoded, batch.responses, batch.mask, batch.ended, batch.texts,
            raw_scores, scores, max_new_tokens=batch.max_new_tokens,
            engine_logprobs=batch.engine_logprobs,
        )  # fmt: skip


def response_slice(
    hidden_or_logits: torch.Tensor, prompt_width: int, response_width: int
) -> torch.Tensor:
    """The positions that predict each response token: (B, Tq + Tr, ...) → (B, Tr, ...)."""
    return hidden_or_logits[:, prompt_width - 1 : prompt_width - 1 + response_width]
