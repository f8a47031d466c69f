"""How the PPO loop computes: autocast mixed precision (bf16 / fp16 with loss scaling) and
gradient checkpointing for models the loop keeps in eval mode.

Mixed precision keeps fp32 weights and optimiser state and runs the forward passes (generation,
rollout log-probs and values, the update's passes) under `torch.autocast`; rollout and update
run in the same precision, so the first epoch's ratio stays 1. fp16 also scales the loss
(GradScaler): a step whose gradients overflowed is skipped and the scale lowered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    def __init__(self, mode: str, device: torch.device):
        self.mode = mode
        self.device_type = torch.device(device).type
        self.dtype = AUTOCAST_DTYPES.get(mode)
        self.scaler = torch.amp.GradScaler(self.device_type) if mode == "fp16" else None

    @property
    def scales_loss(self) -> bool:
        """True when gradients are scaled, so an overflow skips the step instead of failing."""
        return self.scaler is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

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
