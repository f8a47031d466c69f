"""The one-adapter fast path in front of vLLM's CPU LoRA ops gives what vLLM's own ops give:
on one adapter for every token (the fast path) and on mixed adapters (vLLM's op), float64."""

from __future__ import annotations

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops  # the vllm extra, which make test installs

from rlhf.runtime import vllm_cpu_lora

TOKENS, IN, RANK, OUT, ADAPTERS = 5, 12, 4, 10, 3


def stacked(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("indices", [[1] * TOKENS, [0, 2, 1, 1, 0]], ids=["one", "mixed"])
def test_shrink_expand_and_expand_slice_agree_with_vllm(indices):
    indices = torch.tensor(indices)
    x, a = stacked((TOKENS, IN), 0), stacked((ADAPTERS, 1, RANK, IN), 1)
    h, b = stacked((TOKENS, RANK), 2), stacked((ADAPTERS, 1, OUT, RANK), 3)
    cases = [
        (vllm_cpu_lora.fast_shrink, lora_ops.bgmv_shrink, (x, a), RANK, (indices, 0.5)),
        (vllm_cpu_lora.fast_expand, lora_ops.bgmv_expand, (h, b), OUT, (indices, True)),
        (vllm_cpu_lora.fast_expand, lora_ops.bgmv_expand, (h, b), OUT, (indices, False)),
        (
            vllm_cpu_lora.fast_expand_slice, lora_ops.bgmv_expand_slice, (h, b), OUT + 6,
            (indices, 3, OUT, True),
        ),
    ]  # fmt: skip
    for wrap, original, (inputs, weights), width, rest in cases:
        start = stacked((TOKENS, width), 4)
        expected, got = start.clone(), start.clone()
        original(inputs, weights, expected, *rest)
        wrap(original)(inputs, weights, got, *rest)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_one_adapter_names_the_shared_matrix_or_none():
    weights = stacked((ADAPTERS, 1, OUT, RANK), 5)
    torch.testing.assert_close(
        vllm_cpu_lora.one_adapter(weights, torch.tensor([2, 2])), weights[2, 0]
    )
    assert vllm_cpu_lora.one_adapter(weights, torch.tensor([2, 1])) is None
    assert vllm_cpu_lora.one_adapter(weights, torch.tensor([], dtype=torch.long)) is None


def test_a_layer_whose_b_matrices_are_zero_is_skipped_until_they_are_written():
    calls = []

    def original(self, y, x, lora_a, lora_b, scale, slices):
        calls.append(scale)
        y += x @ lora_a[0][0, 0].T @ lora_b[0][0, 0].T * scale

    add = vllm_cpu_lora.skip_untargeted(original)
    x, a = stacked((TOKENS, IN), 6), (stacked((1, 1, RANK, IN), 7),)
    b = (torch.zeros((1, 1, OUT, RANK), dtype=torch.float64),)
    y = stacked((TOKENS, OUT), 8)
    before = y.clone()
    add(None, y, x, a, b, 2.0, (OUT,))
    assert calls == [] and torch.equal(y, before)  # y + x·A·0: nothing to do
    b[0].copy_(stacked((1, 1, OUT, RANK), 9))  # a new adapter written in place
    add(None, y, x, a, b, 2.0, (OUT,))
    assert calls == [2.0]
    torch.testing.assert_close(y, before + x @ a[0][0, 0].T @ b[0][0, 0].T * 2.0)
    b[0].zero_()  # the adapter removed
    add(None, y, x, a, b, 2.0, (OUT,))
    assert calls == [2.0]
