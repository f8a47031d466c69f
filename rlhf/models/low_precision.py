"""Low-precision compute shared by every stage that runs a model: the autocast context of a
`model.mixed_precision` mode, and frozen models whose linear weights are cast once."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(mode: str, device_type: str) -> contextlib.AbstractContextManager:
    """torch.autocast in the dtype of `mode` ("no": a context that does nothing)."""
    dtype = AUTOCAST_DTYPES.get(mode)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def cast_frozen_linears(model: nn.Module, mode: str) -> nn.Module:
    """A frozen model's linear weights cast once to the autocast dtype of `mode` (in place;
    nothing under "no"). Under autocast a linear layer casts its fp32 weight to bf16 at every
    call, so casting once gives the same matmul inputs, hence the same outputs, without the
    per-call copy, at half the weights' memory. Embeddings and norms stay fp32: autocast leaves
    them in fp32 too. A linear layer whose weight is shared with a module that is not a linear
    layer (an LM head tied to the input embedding) gets its own cast copy, so the embedding keeps
    its fp32 values. Only for models nothing trains: the casts would drop their fp32 masters."""
    dtype = AUTOCAST_DTYPES.get(mode)
    if dtype is None:
        return model
    if any(p.requires_grad for p in model.parameters()):
        raise ValueError("cast_frozen_linears: the model has trainable parameters")
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    shared = {
        id(p)
        for m in model.modules()
        if not isinstance(m, nn.Linear)
        for p in m.parameters(recurse=False)
        if id(p) in linear_weights
    }
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        if id(module.weight) in shared:
            module.weight = nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)
        else:
            module.to(dtype)
    release_loaded_files(model, dtype)
    return model


def release_loaded_files(model: nn.Module, cast_dtype: torch.dtype) -> None:
    """Copy the tensors of `model` that a cast to `cast_dtype` left as they were loaded into
    memory of the process's own, so that the files they were loaded from can be unmapped.
    transformers maps safetensors files and every tensor loaded from one keeps the whole mapping
    alive: after the cast, the pages read for the float32 weights stay resident (and in peak RSS)
    beside their bf16 copies for as long as one embedding or norm of the file is left. Copying
    those few (~20 % of a SmolLM2) lets the mapping go: ~400 MiB less RSS a frozen SmolLM2."""
    for param in model.parameters():  # each shared (tied) parameter once
        if param.dtype != cast_dtype:
            param.data = param.data.clone()  # the same Parameter: ties and names hold
    copies: dict[int, torch.Tensor] = {}  # a buffer shared by modules stays shared
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.dtype == cast_dtype:
                continue
            if id(buffer) not in copies:
                copies[id(buffer)] = buffer.clone()
            module._buffers[name] = copies[id(buffer)]
