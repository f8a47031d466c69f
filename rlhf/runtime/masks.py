"""Masks and positions from lengths and stop tokens, never from the pad id (with SmolLM2
pad == EOS, and EOS also sits inside every chat-formatted prompt). Pure tensor functions."""

from __future__ import annotations

import torch


def last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) → (B,) index of the last set position (0 for an all-zero row; any padding side)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * positions).argmax(dim=1)


def truncate_after_stop(
    responses: torch.Tensor, stop_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Tr) sampled ids → (response_mask (B, Tr) bool, ended (B,) bool).

    The mask keeps every token up to and including the first stop token; a row without one is
    kept whole and marked as not ended (truncated by max_new_tokens)."""
    is_stop = responses == stop_token_id
    ended = is_stop.any(dim=1)
    length = responses.shape[1]
    first_stop = torch.where(
        ended, is_stop.int().argmax(dim=1), torch.full_like(ended, length - 1, dtype=torch.long)
    )
    positions = torch.arange(length, device=responses.device)
    return positions.unsqueeze(0) <= first_stop.unsqueeze(1), ended
