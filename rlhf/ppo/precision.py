"""How the PPO loop computes: autocast mixed precision (bf16 / fp16 with loss scaling) and
gradient checkpointing for models the loop keeps in eval mode.

Mixed precision keeps fp32 weights and optimiser state and runs the forward passes (generation,
rollout log-probs and values, the update's passes) under `torch.autocast`; rollout and update
run in the same precision, so the first epoch's ratio stays 1. fp16 also scales the loss
(GradScaler): a step whose gradients overflowed is skipped and the scale lowered.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from rlhf.models.low_precision import autocast

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo: bf16 matmuls in hardware

log = logging.getLogger(__name__)


@functools.cache
def native_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """The CPU's bf16 matmul instruction sets (empty: none, or not Linux)."""
    try:
        flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return ()
    present = set(flags.split(":", 1)[1].split())
    return tuple(flag for flag in NATIVE_BF16_FLAGS if flag in present)


def describe_precision(mode: str, device_type: str) -> str:
    """The log line saying how the PPO loop computes and, on a CPU, why bf16 is or is not the
    better choice there (measured on SmolLM2-135M PPO updates, experiments/benchmarks.md)."""
    what = "fp32" if mode == "no" else f"{mode} autocast, fp32 weights and optimiser state"
    if device_type != "cpu":
        return f"precision: {what}"
    flags = native_bf16_flags()
    if flags:
        hint = (
            f"this CPU has {'/'.join(flags)}: model.mixed_precision=bf16 runs matmuls in bf16 "
            "(measured on a CPU with avx512_bf16: a SmolLM2-135M PPO update with four full "
            "models took 0.76x the fp32 seconds)"
        )
    else:
        capability = torch.backends.cpu.get_cpu_capability()
        hint = (
            f"this CPU ({capability}) has no {' / '.join(NATIVE_BF16_FLAGS)}: bf16 autocast "
            "would be emulated (slower), fp32 is the faster choice"
        )
    return f"precision: {what}; {hint}"


class MixedPrecision:
    def __init__(self, mode: str, device: torch.device):
        self.mode = mode
        self.device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type) if mode == "fp16" else None

    @property
    def scales_loss(self) -> bool:
        """True when gradients are scaled, so an overflow skips the step instead of failing."""
        return self.scaler is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.mode, self.device_type)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler else loss

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true size before clipping."""
        if self.scaler:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


@contextlib.contextmanager
def checkpointing_in_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode for the whole model, with gradient checkpointing still acting.

    Hugging Face layers recompute activations only when `layer.training` is set, and PPO keeps
    its models in eval mode (dropout off, so the first epoch's ratio is 1): checkpointing was
    silently off. This sets the training flag of the checkpointed layers themselves only; their
    attention and MLP submodules, which own the dropout, stay in eval mode. Restored on exit, so
    that generation keeps its KV cache (a checkpointed layer in training mode turns it off)."""
    model.eval()
    layers = [
        module
        for module in model.modules()
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing
    ]
    previous = [layer.training for layer in layers]
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer, was_training in zip(layers, previous, strict=True):
            layer.training = was_training
