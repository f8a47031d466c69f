"""A faster LoRA path for vLLM's CPU backend when every token uses the same adapter.

vLLM's CPU LoRA ops (`vllm.lora.ops.torch_ops`, bgmv_shrink / bgmv_expand /
bgmv_expand_slice) gather a copy of the adapter's matrix for every token
(`weights[indices]`, (tokens, out, rank)) and contract them one by one: on SmolLM2-135M with
LoRA on q/v that made sampling 2.6× slower than without the adapter. PPO's rollouts all use one
adapter (the policy's), so here a token batch whose indices are all equal takes one matmul with
that adapter's matrix, which is the same sum; mixed batches keep vLLM's own op. And vLLM wraps
every linear layer it can adapt, so a layer the adapter does not target (SmolLM2 with LoRA on
q/v: o, gate/up and down) still runs the ops on zero matrices: a layer whose B matrices are all
zero is skipped (y += x·A·B·scale adds nothing). Whether they are is computed once per change of
the stacked weights (their in-place version counter). Installed once per process by `install`,
only for the CPU backend (rlhf/runtime/vllm_engine.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

_INSTALLED = False


def one_adapter(weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
    """The (out, in) matrix every token's index selects from the stacked `weights`
    ((adapters, [1,] out, in)), or None when the tokens use different ones."""
    if indices.numel() == 0:
        return None
    first = indices[0]
    if not bool((indices == first).all()):
        return None
    matrix = weights[first]
    return matrix.squeeze(0) if matrix.dim() == 3 else matrix


def fast_shrink(original: Callable) -> Callable:
    @functools.wraps(original)
    def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
        matrix = one_adapter(lora_a_weights, lora_indices_tensor)
        if matrix is None:
            return original(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        dtype = output_tensor.dtype
        outputs = inputs.to(dtype) @ matrix.to(dtype).T
        output_tensor[:, : outputs.shape[1]] = scaling * outputs

    return bgmv_shrink


def fast_expand(original: Callable) -> Callable:
    @functools.wraps(original)
    def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
        matrix = one_adapter(lora_b_weights, lora_indices_tensor)
        if matrix is None or inputs.shape[0] != output_tensor.shape[0]:
            return original(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs)
        dtype = output_tensor.dtype
        outputs = inputs.to(dtype) @ matrix.to(dtype).T
        common = min(outputs.shape[1], output_tensor.shape[1])  # the two may pad differently
        if add_inputs:
            output_tensor[:, :common] += outputs[:, :common]
        else:
            output_tensor[:, :common] = outputs[:, :common]

    return bgmv_expand


def fast_expand_slice(original: Callable) -> Callable:
    @functools.wraps(original)
    def bgmv_expand_slice(
        inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size,
        add_inputs=True,
    ):  # fmt: skip
        matrix = one_adapter(lora_b_weights, lora_indices_tensor)
        if matrix is None:
            return original(
                inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset,
                slice_size, add_inputs,
            )  # fmt: skip
        dtype = output_tensor.dtype
        outputs = inputs.to(dtype) @ matrix.to(dtype).T
        window = output_tensor[:, slice_offset : slice_offset + slice_size]
        if add_inputs:
            window += outputs
        else:
            window.copy_(outputs)

    return bgmv_expand_slice


_ZERO: dict[tuple[int, int], tuple[int, bool]] = {}  # (id, address) → (version, all zero)


def all_zero(weights: torch.Tensor) -> bool:
    """Whether the stacked `weights` are all zero, recomputed only after they were written."""
    key = (id(weights), weights.data_ptr())
    cached = _ZERO.get(key)
    if cached is not None and cached[0] == weights._version:
        return cached[1]
    zero = not bool(weights.any())
    _ZERO[key] = (weights._version, zero)
    return zero


def skip_untargeted(original: Callable) -> Callable:
    @functools.wraps(original)
    def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, *args, **kwargs):
        if all(all_zero(b) for b in lora_b_stacked):
            return None  # y += x·A·0
        return original(self, y, x, lora_a_stacked, lora_b_stacked, *args, **kwargs)

    return add_lora_linear


def install() -> None:
    """Put the fast path in front of vLLM's CPU LoRA ops (where they are defined, which the sgmv
    ops call, and where the CPU punica wrapper imported them); once per process."""
    global _INSTALLED
    if _INSTALLED:
        return
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for name, wrap in (
        ("bgmv_shrink", fast_shrink),
        ("bgmv_expand", fast_expand),
        ("bgmv_expand_slice", fast_expand_slice),
    ):
        fast = wrap(getattr(lora_ops, name))
        for module in (lora_ops, torch_ops, punica_cpu):
            if hasattr(module, name):
                setattr(module, name, fast)
    wrapper = punica_cpu.PunicaWrapperCPU
    wrapper.add_lora_linear = skip_untargeted(wrapper.add_lora_linear)
    _INSTALLED = True
