"""Numeric guards of the PPO update: a NaN or inf in a score, advantage, loss or gradient norm
stops the update before it reaches the weights, naming the phase and the update. Under several
processes the guards count every process's values (or agree on one process's error), so all
processes stop, or skip the batch, alike and meet at the same collectives afterwards."""

from __future__ import annotations

import logging

import torch

from rlhf.errors import NumericError
from rlhf.runtime import distributed

log = logging.getLogger(__name__)


def check_finite(
    update: int, phase: str, what: str, value: torch.Tensor, everywhere: bool = False
) -> None:
    """Raise NumericError when `value` holds a NaN or inf, naming phase and update. With
    `everywhere` (a point every process reaches) the count covers all processes, so every
    process stops, or skips, alike."""
    finite = torch.isfinite(value)
    bad, total = int((~finite).sum()), finite.numel()
    if everywhere and distributed.world_size() > 1:
        counts = torch.tensor([bad, total], dtype=torch.float64, device=distributed.device())
        bad, total = (int(x) for x in distributed.all_reduce_sum(counts).tolist())
    if bad:
        count = f" ({bad} of {total})" if total > 1 else ""
        raise NumericError(
            f"update {update}, phase {phase}: non-finite {what}{count}; "
            "stopped before it reached the weights"
        )


def agree_on(update: int, error: NumericError | None) -> None:
    """Raise a numeric error met by this process or by any other on every process (a loss
    check is local: a micro-batch skipped for its ratio does not reach it)."""
    if distributed.world_size() > 1 and distributed.any_process(error is not None):
        raise error or NumericError(
            f"update {update}, phase update: non-finite loss on another process; "
            "stopped before it reached the weights"
        )
    if error is not None:
        raise error


def stop_or_skip(on_nonfinite: str, error: NumericError, what: str) -> None:
    """ppo.on_nonfinite: re-raise `error` (stop), or log that `what` is skipped (skip)."""
    if on_nonfinite == "stop":
        raise error
    log.warning("%s; %s skipped (ppo.on_nonfinite=skip)", error, what)
