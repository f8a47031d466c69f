"""The PPO loop: it learns, every knob acts, LoRA shares one base, accumulation is exact."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics

import pytest
import torch

from rlhf.models.loading import load_model_and_tokenizer
from tests.helpers.ppo import make_config, make_trainer, replace_ppo, score_rises


def snapshot(parameters) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parameters]


def changed(before, parameters) -> bool:
    """Every tensor moved (a test that one tensor moved passes when a whole group is frozen)."""
    return all(not torch.equal(a, b) for a, b in zip(before, parameters, strict=True))


def unchanged(before, parameters) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, parameters, strict=True))


# Rise of the mean score (last 5 of 40 updates minus the first 5), measured per ppo.seed on
# this 2-core AMD EPYC, the SFT model trained under the same thread count; 1 and 2 torch threads
# gave identical numbers here:
#   fp32, seeds 0,1,2: +0.92 +0.87 +0.95 with 1 thread, +0.92 +0.87 +0.95 with 2; seeds 3–11
#     (1 thread): +0.42 +0.87 +0.90 +0.91 +0.90 +0.90 +0.90 +0.77 +0.94
#   bf16, seeds 0,1,2: +0.96 +0.91 +0.96 with 1 thread, the same with 2; seeds 3–11: +0.93 +0.90
#     +0.94 +0.91 +0.95 +0.91 +0.81 +0.84 +0.92
# The score takes off somewhere between updates ~8 and ~36 (seed 3 at ~36): one trajectory can
# be slow (seed 0 under 2 threads on another machine: +0.27, 0.018 → 0.288, where +0.4 was
# asked of it alone). The median of three asks two trajectories to be slower than any measured;
# a PPO that does not learn stays at +0.0 ± 0.1 (the scores hover at 0.05–0.2 before take-off).
RISE_MEDIAN, RISE_EACH = 0.3, 0.1


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_mean_score_rises_with_a_simple_function_reward(tiny_sft_model, tmp_path, precision):
    """Reward = share of the characters 你 and 我 in the answer, rare in the SFT model's answers;
    40 updates of 16 answers, three seeds (~5 s each). Under bf16 autocast (the faster
    CPU setting) it must learn as well."""
    config = make_config(
        tiny_sft_model, batch_size=16, max_new_tokens=16, ppo_epochs=2, total_updates=40
    )
    config.model.mixed_precision = precision
    config.reward.function["chars"] = "你我"
    rises, logged = score_rises(config, tmp_path, updates=40)
    assert statistics.median(rises) > RISE_MEDIAN and min(rises) > RISE_EACH, rises
    kls = [metrics["ppo/objective/kl"] for run in logged for metrics in run]
    assert all(math.isfinite(k) for k in kls) and max(kls) > 0


def test_gradient_accumulation_equals_one_big_mini_batch(tiny_sft_model, tmp_path):
    """In float64: the variants differ only in summation order, ~1e-16 relative, so no AdamW
    step (≈ lr·g/|g| at first, which a float32 rounding can flip where g ≈ 0) can differ by more
    than ~lr·1e-12. float32 failed here on another CPU by 6e-6 in 1 of 8192 weights."""
    config = make_config(tiny_sft_model, batch_size=8, micro_batch_size=8, ppo_epochs=2)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype="float64"))
    params = []
    for mini, accumulation in ((8, 1), (4, 2), (2, 4)):
        variant = replace_ppo(
            config, micro_batch_size=mini, gradient_accumulation_steps=accumulation
        )
        trainer = make_trainer(variant, tmp_path / f"{mini}x{accumulation}")
        trainer.step()
        params.append(
            snapshot(trainer.model.policy_parameters() + trainer.model.critic_parameters())
        )
    assert params[0][0].dtype == torch.float64
    for other in params[1:]:
        for a, b in zip(params[0], other, strict=True):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_lora_reference_is_the_base_with_adapters_off_and_no_copy(tiny_sft_model, tmp_path):
    config = make_config(tiny_sft_model, lora=True, critic="lora")
    trainer = make_trainer(config, tmp_path)
    model = trainer.model
    assert model.reference is None and model.critic is None  # one base serves all three
    base, tokenizer = load_model_and_tokenizer(config.model, ".")
    batch = tokenizer(["你好吗？今天"], return_tensors="pt")
    inputs = {**batch, "position_ids": torch.arange(batch["input_ids"].shape[1])[None]}
    width = batch["input_ids"].shape[1]
    expected = base(**batch).logits[:, : width - 1]
    trainer.step()
    reference = model.reference_logits(inputs, 1, width - 1)
    torch.testing.assert_close(reference, expected, atol=1e-5, rtol=1e-4)
    policy_logits, _ = model.policy_forward(inputs, 1, width - 1)
    assert not torch.allclose(policy_logits, expected, atol=1e-4)  # the adapter learned


def test_lora_update_moves_both_adapters_and_head_but_not_the_base(tiny_sft_model, tmp_path):
    trainer = make_trainer(make_config(tiny_sft_model, lora=True, critic="lora"), tmp_path)
    model = trainer.model
    frozen = [p for n, p in model.policy.named_parameters() if "lora_" not in n]
    policy_before, critic_before = (
        snapshot(model.policy_parameters()),
        snapshot(model.critic_parameters()),
    )
    frozen_before = snapshot(frozen)
    trainer.step()
    assert changed(policy_before, model.policy_parameters())
    assert changed(critic_before, model.critic_parameters())
    assert unchanged(frozen_before, frozen)
    names = [n for n, _ in model.policy.named_parameters() if ".critic." in n]
    assert names and len(model.critic_parameters()) == len(names) + 2  # adapter + head (w, b)


@pytest.mark.parametrize("critic", ["separate", "value_head"])
def test_full_policy_and_each_critic_kind_learn_in_one_step(tiny_sft_model, tmp_path, critic):
    trainer = make_trainer(make_config(tiny_sft_model, critic=critic), tmp_path)
    policy_before = snapshot(trainer.model.policy_parameters())
    critic_before = snapshot(trainer.model.critic_parameters())
    reference_before = snapshot(trainer.model.reference.parameters())
    metrics = trainer.step()
    assert changed(policy_before, trainer.model.policy_parameters())
    assert changed(critic_before, trainer.model.critic_parameters())
    assert unchanged(reference_before, trainer.model.reference.parameters())
    assert metrics["ppo/policy/epochs"] == 4 and metrics["ppo/loss/value"] > 0


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_first_epoch_ratio_is_one(tiny_sft_model, tmp_path, precision):
    config = make_config(tiny_sft_model, ppo_epochs=1, micro_batch_size=8)
    config.model.mixed_precision = precision  # rollout and update in the same precision
    trainer = make_trainer(config, tmp_path)
    metrics = trainer.step()  # one mini-batch, before any step: new == old log-probs
    # fp32: equal to rounding; bf16: the same bf16 passes, so still 1 within 1e-3
    tolerance = 1e-5 if precision == "no" else 1e-3
    assert metrics["ppo/policy/ratio_mean"] == pytest.approx(1.0, abs=tolerance)
    assert metrics["ppo/policy/ratio_max"] == pytest.approx(1.0, abs=tolerance)
    assert metrics["ppo/policy/clipfrac"] == 0.0


def test_max_grad_norm_acts(tiny_sft_model, tmp_path):
    moves = {}
    for limit in (None, 1e-6):
        trainer = make_trainer(
            make_config(tiny_sft_model, max_grad_norm=limit, ppo_epochs=1), tmp_path
        )
        before = snapshot(trainer.model.policy_parameters())
        trainer.step()
        after = trainer.model.policy_parameters()
        moves[limit] = sum((a - b).abs().sum().item() for a, b in zip(before, after, strict=True))
    # AdamW normalises step sizes, so the clip shows in how far the first moments move them
    assert moves[1e-6] < moves[None]


def test_target_kl_stops_the_epochs_early(tiny_sft_model, tmp_path):
    # approx-KL (k3) is > 0 once the first mini-batch moved the weights
    trainer = make_trainer(make_config(tiny_sft_model, target_kl=0.0), tmp_path)
    assert trainer.step()["ppo/policy/epochs"] == 1


def test_ratio_threshold_skips_mini_batches(tiny_sft_model, tmp_path):
    trainer = make_trainer(make_config(tiny_sft_model), tmp_path)
    trainer.step()  # gradients and AdamW moments exist now
    # below every mean ratio: the schema refuses it for a run (nothing would train), so it is
    # set on the trainer's config directly to exercise the skip
    trainer.config = make_config(tiny_sft_model).ppo
    trainer.config.ratio_threshold = 0.5
    before = snapshot(trainer.model.policy_parameters() + trainer.model.critic_parameters())
    metrics = trainer.step()
    assert metrics["ppo/policy/skipped_minibatches"] == 8  # 4 epochs × 2 mini-batches
    assert unchanged(before, trainer.model.policy_parameters() + trainer.model.critic_parameters())


def test_critic_warmup_trains_only_the_critic(tiny_sft_model, tmp_path):
    trainer = make_trainer(make_config(tiny_sft_model, critic_warmup_updates=1), tmp_path)
    policy_before = snapshot(trainer.model.policy_parameters())
    critic_before = snapshot(trainer.model.critic_parameters())
    trainer.step()
    assert unchanged(policy_before, trainer.model.policy_parameters())
    assert changed(critic_before, trainer.model.critic_parameters())
    trainer.step()
    assert changed(policy_before, trainer.model.policy_parameters())


def test_adaptive_kl_moves_beta(tiny_sft_model, tmp_path):
    config = make_config(tiny_sft_model, adaptive_kl=True, kl_target=1e-6, kl_horizon=8)
    trainer = make_trainer(config, tmp_path)
    first = trainer.step()
    assert first["ppo/objective/kl"] == 0.0  # the policy still is the reference
    assert trainer.kl_controller.value == pytest.approx(0.05 * 0.8)  # error −1 clipped to −0.2
    assert trainer.step()["ppo/objective/kl"] > 1e-6
    assert trainer.kl_controller.value == pytest.approx(0.05 * 0.8 * 1.2)  # clipped to +0.2


def test_ppo_stage_end_to_end_with_lora_and_offline_wandb(warm_train, tiny_sft_model, tmp_path):
    result = warm_train(
        [
            "stage=ppo",
            f"model.name_or_path={tiny_sft_model}",
            "model.lora.enabled=true",
            "ppo.critic=lora",
            "reward=char_fraction",
            "ppo.total_updates=4",
            "ppo.eval_every=2",
            "ppo.log_samples_every=2",
            "ppo.eval_prompts=4",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stage = tmp_path / "ppo"
    assert (stage / "COMPLETE").is_file()
    assert (stage / "model" / "model.safetensors").is_file()
    assert (stage / "adapter" / "adapter_model.safetensors").is_file()
    assert (stage / "critic" / "value_head.safetensors").is_file()
    records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if "ppo/objective/kl" in r]
    assert [r["step"] for r in updates] == [1, 2, 3, 4]
    for key in (
        "ppo/objective/kl_k1",
        "ppo/objective/kl_k3",
        "ppo/policy/clipfrac",
        "ppo/loss/value",
        "timing/generate",
        "ppo/tokens_per_second",
        "ppo/eos_rate",
    ):
        assert all(key in r for r in updates), key
    evals = [r["step"] for r in records if "ppo/eval/score" in r]
    assert evals == [0, 2, 4]
    samples = (stage / "tables" / "ppo_samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(samples) == 2 * 8  # two sample tables of 8 rows, accumulated
    info = json.loads((stage / "run_info.json").read_text())
    assert info["status"] == "complete" and "ppo/objective/scores" in info["final_metrics"]


def test_sampling_knobs_act(tiny_sft_model, tmp_path):
    config = make_config(tiny_sft_model, samples_per_prompt=2, length_sampler=[3, 3])
    trainer = make_trainer(config, tmp_path)
    rollout = trainer.sample_and_score(*trainer.next_prompts())
    assert rollout.responses.shape == (16, 3)  # 8 prompts × 2 samples, 3 new tokens at most
    assert rollout.prompts[0] == rollout.prompts[1]


def test_stop_token_replaces_eos(tiny_sft_model, tmp_path):
    trainer = make_trainer(
        make_config(tiny_sft_model, stop_token="，", max_new_tokens=24), tmp_path
    )
    rollout = trainer.sample_and_score(*trainer.next_prompts())
    comma = trainer.tokenizer.convert_tokens_to_ids("，")
    lengths = rollout.mask.sum(1)
    for row in range(len(rollout.texts)):
        if rollout.ended[row]:
            assert rollout.responses[row, lengths[row] - 1] == comma
            assert rollout.texts[row].endswith("，") and rollout.texts[row].count("，") == 1
    assert rollout.ended.any()


def test_linear_schedule_decays_the_learning_rate(tiny_sft_model, tmp_path):
    trainer = make_trainer(
        make_config(tiny_sft_model, lr_scheduler="linear", total_updates=2), tmp_path
    )
    assert trainer.step()["ppo/lr"] == pytest.approx(1e-3)  # the learning rate update 1 used
    assert trainer.step()["ppo/lr"] == pytest.approx(1e-3 * 0.5)
    assert trainer.scheduler.get_last_lr()[0] == 0.0


def test_overlong_penalty_lowers_the_scores_of_long_answers(tiny_sft_model, tmp_path):
    config = make_config(tiny_sft_model, max_new_tokens=4, min_new_tokens=4, overlong_buffer=1)
    trainer = make_trainer(config, tmp_path)
    rollout = trainer.sample_and_score(*trainer.next_prompts())
    expected = rollout.raw_scores - 1.0  # every answer is 4 tokens long: the full penalty
    torch.testing.assert_close(rollout.scores.cpu(), expected)


def test_each_update_hands_the_host_heaps_free_pages_back(tiny_sft_model, tmp_path, monkeypatch):
    import rlhf.ppo.trainer as trainer_module
    from rlhf.runtime.host_memory import _glibc, release_free_memory, use_host_heap

    released = []
    monkeypatch.setattr(
        trainer_module, "release_free_memory", lambda: released.append(release_free_memory())
    )
    trainer = make_trainer(make_config(tiny_sft_model), tmp_path)
    use_host_heap("reuse")
    try:
        trainer.step()
        trainer.step()
    finally:
        use_host_heap("system")  # this worker's later tests get glibc's defaults back
    # True: glibc was asked (host_heap=reuse keeps freed memory until then); False off glibc
    assert released == [_glibc() is not None] * 2


def test_the_class_docstring_example_runs(monkeypatch, tmp_path):
    """PPOTrainer's docstring example (a tiny random model, one update), run as a doctest."""
    import doctest

    from rlhf.ppo.trainer import PPOTrainer

    monkeypatch.chdir(tmp_path)
    [example] = [
        test for test in doctest.DocTestFinder().find(PPOTrainer) if test.name == "PPOTrainer"
    ]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(example)
    assert result.attempted > 10 and result.failed == 0
