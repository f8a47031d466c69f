"""Mixed precision and gradient checkpointing act in the PPO loop (not only in the TRL stages)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.ppo_helpers import make_config, make_trainer


def trained(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.policy_parameters()]


def test_gradient_checkpointing_recomputes_layers_in_the_update_and_changes_nothing(
    tiny_sft_model, tmp_path
):
    """The loop keeps its models in eval mode, where Hugging Face layers skip checkpointing;
    with model.gradient_checkpointing each layer's forward runs again in the backward pass."""
    counts, weights = {}, {}
    for checkpointing in (False, True):
        config = make_config(tiny_sft_model, batch_size=4, mini_batch_size=2, ppo_epochs=1)
        config.model.gradient_checkpointing = checkpointing
        trainer = make_trainer(config, tmp_path / str(checkpointing))
        calls = []
        attention = trainer.model.policy.model.layers[0].self_attn  # runs inside the layer
        attention.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        trainer.step()
        counts[checkpointing], weights[checkpointing] = len(calls), trained(trainer)
    # the same generation and rollout passes; then 2 micro-batches, each recomputed once
    assert counts[True] - counts[False] == 2
    for a, b in zip(weights[False], weights[True], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_the_passes_in_half_and_keeps_fp32_weights(
    tiny_sft_model, tmp_path, precision
):
    config = make_config(tiny_sft_model, batch_size=4, mini_batch_size=4, ppo_epochs=2)
    config.model.mixed_precision = precision
    trainer = make_trainer(config, tmp_path)
    dtypes = []
    trainer.model.policy.lm_head.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    before = trained(trainer)
    metrics = trainer.step()
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert dtypes and set(dtypes) == {half}  # generation, rollout passes and update
    assert all(p.dtype == torch.float32 for p in trainer.model.policy_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trained(trainer), strict=True))
    assert math.isfinite(metrics["ppo/loss/policy"]) and math.isfinite(metrics["ppo/loss/value"])
    assert (trainer.precision.scaler is not None) == (precision == "fp16")


def test_native_bf16_is_read_from_the_cpu_flags_and_named_in_the_precision_line(tmp_path):
    from rlhf.ppo.precision import describe_precision, native_bf16_flags

    amx = tmp_path / "amx"
    amx.write_text(
        "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    )
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse avx avx2\n")
    assert native_bf16_flags(amx) == ("amx_bf16", "avx512_bf16")
    assert native_bf16_flags(avx2) == ()
    assert native_bf16_flags(tmp_path / "missing") == ()
    line = describe_precision("bf16", "cpu")
    assert line.startswith("precision: bf16 autocast, fp32 weights")
    assert ("emulated" in line) == (native_bf16_flags() == ())
    assert describe_precision("no", "cuda") == "precision: fp32"
