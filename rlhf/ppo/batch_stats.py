"""Statistics of the global batch in data-parallel PPO: every process holds a shard of the
rollout, and whitening and logged metrics must be those of the whole batch.

- `global_masked_*`: the masked mean, variance and whitening of `core.masked_*` over the
  positions of every process (all-reduced sums, the same two-pass formula as
  `core.masked_var`); with one process they are `core.masked_*` themselves;
- `reduce_metrics`: one value per logged metric for the whole job.
"""

from __future__ import annotations

import torch

from rlhf.ppo import core
from rlhf.runtime import distributed


def global_masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked positions of every process's `values` (B, T)."""
    if distributed.world_size() == 1:
        return core.masked_mean(values, mask)
    sums = torch.stack([core.masked_sum(values, mask), mask.to(values.dtype).sum()])
    total, count = distributed.all_reduce_sum(sums)
    return total / count.clamp(min=1)


def global_masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Bessel-corrected variance over the masked positions of every process (two passes)."""
    if distributed.world_size() == 1:
        return core.masked_var(values, mask)
    mean = global_masked_mean(values, mask)
    centred = torch.where(mask.bool(), values - mean, torch.zeros_like(values))
    sums = torch.stack([(centred**2).sum(), mask.to(values.dtype).sum()])
    squares, count = distributed.all_reduce_sum(sums)
    if count < 2:
        raise ValueError("global_masked_var: unbiased variance needs at least 2 masked values")
    return squares / (count - 1)


def global_masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """`core.masked_whiten` with the mean and variance of the global batch."""
    if distributed.world_size() == 1:
        return core.masked_whiten(values, mask, shift_mean, eps)
    mean, var = global_masked_mean(values, mask), global_masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


SUMMED_METRICS = ("ppo/tokens_per_second", "ppo/policy/skipped_minibatches")


def reduce_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """One value per metric for the whole job: sums for throughput and counts, the slowest
    process for `timing/*`, the mean over processes otherwise (every process holds the same
    number of sequences, so per-sequence means are global means)."""
    if distributed.world_size() == 1:
        return metrics
    per_process = distributed.gather_objects(metrics)
    reduced = {}
    for key in per_process[0]:
        values = [m[key] for m in per_process if key in m]
        if key in SUMMED_METRICS:
            reduced[key] = sum(values)
        elif key.startswith("timing/"):
            reduced[key] = max(values)
        else:
            reduced[key] = sum(values) / len(values)
    return reduced
