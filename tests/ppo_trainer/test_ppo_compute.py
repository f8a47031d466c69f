"""Mixed precision and gradient checkpointing act in the PPO loop (not only in the TRL stages)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.ppo import make_config, make_trainer


def trained(trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.policy_parameters()]


def test_gradient_checkpointing_recomputes_layers_in_the_update_and_changes_nothing(
    tiny_sft_model, tmp_path
):
    """The loop keeps its models in eval mode, where Hugging Face layers skip checkpointing;
    with model.gradient_checkpointing each layer's forward runs again in the backward pass."""
    counts, weights = {}, {}
    for checkpointing in (False, True):
        config = make_config(tiny_sft_model, batch_size=4, micro_batch_size=2, ppo_epochs=1)
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
    config = make_config(tiny_sft_model, batch_size=4, micro_batch_size=4, ppo_epochs=2)
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


def tied_tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def test_frozen_linears_cast_once_give_exactly_the_autocast_outputs():
    """Autocast casts each fp32 linear weight to bf16 at every call; casting a frozen model's
    linear weights once feeds the matmuls the same values, so the outputs are bit-identical,
    with the embedding (tied to the LM head) and the norms still fp32."""
    import copy

    from rlhf.models.low_precision import autocast, cast_frozen_linears

    reference = tied_tiny_llama()
    cast = cast_frozen_linears(copy.deepcopy(reference), "bf16")
    ids = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(1))
    with autocast("bf16", "cpu"):
        expected, got = reference(ids).logits, cast(ids).logits
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
    linears = [m for m in cast.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 7 + 1 and all(m.weight.dtype == torch.bfloat16 for m in linears)
    embedding = cast.get_input_embeddings().weight
    assert embedding.dtype == torch.float32
    assert torch.equal(embedding, reference.get_input_embeddings().weight)
    assert cast.lm_head.weight.data_ptr() != embedding.data_ptr()  # its own bf16 copy
    assert all(
        m.weight.dtype == torch.float32 for m in cast.modules() if "Norm" in type(m).__name__
    )
    assert not any(p.requires_grad for p in cast.parameters())


def test_frozen_linears_are_left_alone_in_fp32_and_refused_when_trainable():
    from rlhf.models.low_precision import cast_frozen_linears

    model = tied_tiny_llama()
    assert all(p.dtype == torch.float32 for p in cast_frozen_linears(model, "no").parameters())
    model.lm_head.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="trainable"):
        cast_frozen_linears(model, "bf16")


def test_bf16_ppo_keeps_the_reference_and_reward_model_linears_in_bf16(
    tiny_sft_model, tiny_rm, tmp_path
):
    """Under model.mixed_precision=bf16 the frozen reference and the reward model hold bf16
    linear weights (scored under autocast); the trained policy keeps its fp32 masters."""
    from rlhf.config import ModelConfig
    from rlhf.rewards.reward_model import RewardModelScorer

    config = make_config(tiny_sft_model, batch_size=4, micro_batch_size=4, ppo_epochs=1)
    config.model.mixed_precision = "bf16"
    trainer = make_trainer(config, tmp_path)
    reference_linears = [
        m for m in trainer.model.reference.modules() if isinstance(m, torch.nn.Linear)
    ]
    assert reference_linears and all(m.weight.dtype == torch.bfloat16 for m in reference_linears)
    assert all(p.dtype == torch.float32 for p in trainer.model.policy_parameters())
    metrics = trainer.step()
    # policy (fp32 masters, cast at every call) and reference (cast once) start from the same
    # weights, so the first rollout's log-probs agree exactly: KL 0
    assert metrics["ppo/objective/kl"] == 0.0

    prompts, answers = (
        ["你好", "为什么天是蓝的？"],
        ["滚。", "因为瑞利散射，短波长的光散射得更多。"],
    )
    full = RewardModelScorer(tiny_rm, None, ModelConfig())(prompts, answers)
    half_scorer = RewardModelScorer(tiny_rm, None, ModelConfig(mixed_precision="bf16"))
    assert half_scorer.model.score.weight.dtype == torch.bfloat16
    half = half_scorer(prompts, answers)
    assert half.dtype == torch.float32
    # bf16 keeps 8 significant bits (relative step 2**-8 = 0.4 %): two layers and the head
    # stay within a few per cent of the largest score
    torch.testing.assert_close(half, full, rtol=0, atol=0.05 * full.abs().max().item() + 1e-3)


def test_bf16_leaves_a_reference_handed_in_as_it_is(tiny_sft_model):
    """build_actor_critic uses a given reference as it is: only one it built is cast."""
    from rlhf.models.loading import load_model_and_tokenizer
    from rlhf.stages.ppo import build_actor_critic

    config = make_config(tiny_sft_model)
    config.model.mixed_precision = "bf16"
    policy, tokenizer = load_model_and_tokenizer(config.model, config.cache_dir)
    reference = load_model_and_tokenizer(config.model, config.cache_dir)[0]
    model = build_actor_critic(config, policy, tokenizer, reference=reference)
    assert model.reference is reference
    assert all(p.dtype == torch.float32 for p in reference.parameters())
