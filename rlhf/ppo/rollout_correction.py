"""The rollout–trainer probability gap, as pure functions: an engine that samples in another
precision (vLLM in bf16) gives each sampled token a slightly different log-probability than the
trainer computes for it. `gap_stats` measures that; `importance_weights` is the truncated (or
masked) importance-sampling correction the field uses for it (TRL 1.16's
`vllm_importance_sampling_mode`: token_truncate, token_mask, sequence_truncate, sequence_mask),
multiplied into the per-token policy loss.

Shapes: (B, T) log-probs of the sampled tokens, `mask` True on real response tokens."""

from __future__ import annotations

import torch

from rlhf.ppo import core

MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def gap_stats(
    trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """|trainer − engine| per token (mean and max), and KL(engine ‖ trainer) per token by k3
    (≥ 0, unbiased on the engine's samples)."""
    diff = (trainer_logprobs - engine_logprobs).float()
    absolute = diff.abs()
    return {
        "logprob_gap_mean": core.masked_mean(absolute, mask),
        "logprob_gap_max": absolute.masked_fill(~mask.bool(), 0).max(),
        "engine_kl_k3": core.masked_mean(torch.expm1(diff) - diff, mask),
    }


def importance_weights(
    trainer_logprobs: torch.Tensor,
    engine_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    high: float,
    low: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) weights π_trainer / π_engine of the sampled tokens (token modes) or of whole
    answers (sequence modes, one ratio of the summed log-ratios per answer), truncated into
    [low, high] or set to 0 outside it (mask modes); 0 on padding. No gradient flows through
    them (both log-probs are of the sampling-time policy). Also returns where the ratio fell
    outside [low, high] (the tokens the correction changed), (B, T) bool."""
    if mode not in MODES:
        raise ValueError(f"unknown correction mode {mode!r}; one of {MODES}")
    log_ratio = torch.where(mask.bool(), trainer_logprobs - engine_logprobs, 0.0).detach()
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(dim=1, keepdim=True).expand_as(log_ratio)
    ratio = torch.exp(log_ratio)
    floor = 0.0 if low is None else low
    outside = ((ratio > high) | (ratio < floor)) & mask.bool()
    if mode.endswith("truncate"):
        weights = ratio.clamp(min=floor, max=high)
    else:
        weights = ratio.masked_fill(outside, 0.0)
    return torch.where(mask.bool(), weights, torch.zeros_like(weights)), outside


def weight_stats(
    weights: torch.Tensor, outside: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Mean, min and max of the weights over real tokens, and the share of tokens the
    correction changed (truncated or masked)."""
    real = mask.bool()
    return {
        "correction_mean": core.masked_mean(weights, mask),
        "correction_min": weights.masked_fill(~real, float("inf")).min(),
        "correction_max": weights.masked_fill(~real, 0).max(),
        "correction_changed": core.masked_mean(outside.float(), mask),
    }
