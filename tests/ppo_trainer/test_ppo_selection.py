"""What PPO hands on and what it watches: a critic from the reward model in the calibrated units,
held-out prompts the eval stage never sees, the best eligible checkpoint as the stage's model, and
the hacking guard that stops (or raises kl_coef) when the reward and the judge disagree."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from rlhf.app import typed_config
from rlhf.config import CheckpointConfig, HackingGuardConfig, ModelConfig, RewardConfig
from rlhf.data.loading import limit_lengths, load_preference_data
from rlhf.errors import ConfigError
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.models.scoring import conversation_token_batch, turn_suffix_ids
from rlhf.models.tokenizers import tokenizer_at
from rlhf.ppo.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from rlhf.ppo.guard import HackingGuard
from rlhf.ppo.kl_control import FixedKLController
from rlhf.ppo.rollout import response_slice
from rlhf.ppo.trainer import PPOTrainer
from rlhf.rewards import build_reward
from rlhf.runtime.generation import joined_inputs
from rlhf.stages import ppo as ppo_stage
from tests.helpers import read_jsonl
from tests.helpers.ppo import PROMPTS, make_config, make_trainer

EPS64 = torch.finfo(torch.float64).eps


# --- 1. the critic from the reward model, in the calibrated reward's units -------------------


# the tiny random model (model=tiny): no SFT needed to check units, prompts and checkpoints
TINY = "tiny"


def reward_model_folder(cache, folder):
    """A reward model on the tiny body with a random (seeded) unit-scale score head, saved."""
    rm, tokenizer = load_model_and_tokenizer(ModelConfig(), cache, kind="reward", new_head=True)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        rm.score.weight.copy_(torch.randn(rm.score.weight.shape, generator=generator))
    rm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def critic_config(model_dir, rm_dir, **ppo):
    config = make_config(model_dir, **ppo)
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, dtype="float64"),  # exact up to rounding
        reward=RewardConfig(
            kind="reward_model", model_path=str(rm_dir), calibrate=True, calibrate_samples=8
        ),
        ppo=dataclasses.replace(config.ppo, critic_init="reward_model"),
    )


def test_a_critic_from_the_reward_model_predicts_in_the_calibrated_units(
    offline_environment, tmp_path
):
    rm_dir = reward_model_folder(offline_environment, tmp_path / "rm")
    config = critic_config(TINY, rm_dir, critic_warmup_updates=1)
    reward = build_reward(config.reward, None, None, config.model)
    trainer = make_trainer(config, tmp_path / "run", reward=reward)
    calibrated = ppo_stage.calibrate(config, trainer, PROMPTS, str(rm_dir))
    gain, bias = calibrated["gain"], calibrated["bias"]
    assert calibrated["critic"] == {"gain": gain, "bias": bias}  # reward.scale = 1
    assert abs(gain - 1) > 1e-3 and abs(bias) > 1e-3  # a real change of units

    rollout = trainer.sample_and_score(*trainer.next_prompts())
    critic = trainer.model.critic
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir, torch_dtype=torch.float64)
    hidden_size = rm.config.hidden_size

    def tolerance(hidden, weight):  # rounding of gain·(w·h) against (gain·w)·h, summed over h
        magnitude = abs(gain) * (hidden.abs() @ weight.abs().T).squeeze(-1) + abs(bias)
        return 4 * hidden_size * EPS64 * magnitude

    # the value of the final state (after the last token, as the RM reads it) = gain·score + bias
    tokenizer = trainer.tokenizer
    ids, mask = conversation_token_batch(
        rollout.encoded.input_ids, rollout.encoded.attention_mask, rollout.responses,
        rollout.mask, rollout.ended, tokenizer.eos_token_id, turn_suffix_ids(tokenizer),
        tokenizer.pad_token_id,
    )  # fmt: skip
    rows, last = torch.arange(len(ids)), mask.sum(1) - 1  # right-padded: the last real token
    with torch.no_grad():
        rm_hidden = rm.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[rows, last]
        rm_scores = rm.score(rm_hidden).squeeze(-1)
        critic_hidden = critic.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        final_values = critic.score(critic_hidden[rows, last]).squeeze(-1)
    final_values = final_values + trainer.model.value_offset
    bound = tolerance(rm_hidden, rm.score.weight).max().item()
    torch.testing.assert_close(final_values, gain * rm_scores + bias, rtol=0, atol=bound)
    # ... which is what PPO's reward read (scores are handed on in float32)
    eps32 = torch.finfo(torch.float32).eps
    atol = 2 * eps32 * rm_scores.abs().max().item()
    torch.testing.assert_close(rollout.raw_scores.double(), rm_scores, rtol=0, atol=atol)

    # the values PPO trains on, at every response token, the last one included
    inputs = joined_inputs(rollout.encoded, rollout.responses, rollout.mask)
    widths = (rollout.encoded.input_ids.shape[1], rollout.responses.shape[1])
    with torch.no_grad():
        values = trainer.model.critic_forward(inputs, *widths)
        hidden = response_slice(rm.base_model(**inputs).last_hidden_state, *widths)
        rm_values = rm.score(hidden).squeeze(-1)
    real = rollout.mask.bool()
    bound = tolerance(hidden[real], rm.score.weight).max().item()
    torch.testing.assert_close(values[real], gain * rm_values[real] + bias, rtol=0, atol=bound)

    # critic warm-up with this critic: only the critic moves, and its explained variance is logged
    policy_before = [p.detach().clone() for p in trainer.model.policy_parameters()]
    critic_before = [p.detach().clone() for p in trainer.model.critic_parameters()]
    metrics = trainer.step()
    policy_after = trainer.model.policy_parameters()
    assert all(torch.equal(a, b) for a, b in zip(policy_before, policy_after, strict=True))
    critic_after = trainer.model.critic_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(critic_before, critic_after, strict=True))
    assert math.isfinite(metrics["ppo/val/explained_variance"])


def test_a_resume_takes_the_critics_units_from_the_checkpoint(offline_environment, tmp_path):
    rm_dir = reward_model_folder(offline_environment, tmp_path / "rm")
    config = critic_config(TINY, rm_dir)
    reward = build_reward(config.reward, None, None, config.model)
    trainer = make_trainer(config, tmp_path / "run", reward=reward)
    ppo_stage.calibrate(config, trainer, PROMPTS, str(rm_dir))
    save_checkpoint(trainer, tmp_path / "checkpoint", {})
    resumed = make_trainer(config, tmp_path / "again", reward=reward)  # raw RM units again
    assert resumed.model.value_offset == 0.0
    load_checkpoint(resumed, tmp_path / "checkpoint")
    assert resumed.model.value_offset == trainer.model.value_offset != 0.0
    assert torch.equal(resumed.model.critic.score.weight, trainer.model.critic.score.weight)


# --- 2. held-out prompts the eval stage never sees -------------------------------------------


def test_ppo_evaluates_on_prompts_the_eval_stage_never_sees(
    compose_config, offline_environment, caplog
):
    tokenizer = tokenizer_at(TINY, ModelConfig(), offline_environment)
    pipeline = ["stage=pipeline", "ppo.eval_prompts=8", "eval.num_prompts=100"]
    config = typed_config(compose_config(pipeline))
    train, held_out, _ = ppo_stage.load_prompts(config, tokenizer, check=True)
    data = load_preference_data(config.data)
    test = list(limit_lengths(data.test, tokenizer, config.data, "test", answers=())["prompt"])
    graded = test[: config.eval.num_prompts]  # the eval stage's prompts (rlhf/stages/eval.py)
    assert len(held_out) == 8 and not set(held_out) & set(graded)
    assert held_out == test[-8:]

    too_many = typed_config(compose_config([*pipeline, f"eval.num_prompts={len(test) - 4}"]))
    with pytest.raises(ConfigError, match=r"^ppo.eval_prompts: the test split has \d+ prompts"):
        ppo_stage.load_prompts(too_many, tokenizer, check=True)
    # PPO alone: a warning (an eval stage may still grade this policy later)
    alone = typed_config(compose_config(["stage=ppo", "eval.num_prompts=118"]))
    with caplog.at_level(logging.WARNING, logger="rlhf.stages.ppo"):
        assert len(ppo_stage.load_prompts(alone, tokenizer, check=True)[1]) == 16
    assert "would grade answers to prompts that PPO's evaluations" in caplog.text
    # no evaluation in PPO: nothing to overlap
    ppo_stage.load_prompts(
        typed_config(compose_config([*pipeline, "eval.num_prompts=118", "ppo.eval_every=0"])),
        tokenizer,
        check=True,
    )


# --- 3. the best eligible checkpoint is the model handed on ----------------------------------


class FakeTrainer:
    """The state a Checkpointer reads and writes, around one weight vector."""

    def __init__(self) -> None:
        self.update = 0
        self.weight = torch.zeros(3)

    def state_dict(self) -> dict:
        return {
            "update": self.update, "data_order": [], "kl_controller": {},
            "score_processor": {}, "health": {}, "trainable": {"w": self.weight.clone()},
            "optimizer": None, "scheduler": {}, "rng": {},
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.update = state["update"]
        self.load_trainable(state["trainable"])

    def load_trainable(self, tensors: dict) -> None:
        self.weight = tensors["w"].clone()


def run_checkpointer(stage_dir, evaluations: dict[int, tuple[float, float]], **settings):
    """Updates 1..N (N = the last evaluated), weight = [update] * 3; `evaluations`: update →
    (ppo/eval/score, ppo/eval/top_phrase_share)."""
    config = CheckpointConfig(**{"every": 1, "keep_last": 1, **settings})
    total = max(evaluations)
    checkpointer = Checkpointer(config, stage_dir, total, run_id=None)
    trainer = FakeTrainer()
    start = {"ppo/eval/score": -1.0, "ppo/eval/top_phrase_share": 0.1}
    checkpointer.at_start(trainer, start)
    for update in range(1, total + 1):
        trainer.update, trainer.weight = update, torch.full((3,), float(update))
        metrics = {"ppo/objective/scores": 0.0}
        if update in evaluations:
            score, share = evaluations[update]
            metrics.update({"ppo/eval/score": score, "ppo/eval/top_phrase_share": share})
        checkpointer.after_update(trainer, metrics)
    return checkpointer, trainer


def test_a_collapsed_checkpoint_is_never_kept_and_ties_go_to_the_earlier(tmp_path):
    evaluations = {2: (0.5, 0.2), 4: (0.9, 0.8), 6: (0.5, 0.1), 7: (float("nan"), 0.0)}
    checkpointer, trainer = run_checkpointer(
        tmp_path, evaluations, max_top_phrase_share=0.5, best_metric="ppo/eval/score"
    )
    kept = checkpointer.hand_on(trainer)
    assert kept["update"] == 2 and kept["checkpoint"] == "checkpoints/update-000002"
    assert torch.equal(trainer.weight, torch.full((3,), 2.0))  # update 2's weights, loaded
    assert kept["held_out"] == {"ppo/eval/score": 0.5, "ppo/eval/top_phrase_share": 0.2}
    assert "of 3 scored update(s)" in kept["reason"] and "update(s) 4" in kept["reason"]
    best = json.loads((tmp_path / "best_checkpoint.json").read_text())
    assert best["update"] == 2 and (tmp_path / best["checkpoint"]).is_dir()

    # the same choice after a resume from the newest checkpoint
    again = Checkpointer(checkpointer.config, tmp_path, 7, run_id=None)
    again.resume(FakeTrainer(), tmp_path / "checkpoints" / "update-000007")
    assert again.kept() == checkpointer.kept()


def test_with_every_checkpoint_collapsed_the_starting_policy_is_handed_on(tmp_path):
    checkpointer, trainer = run_checkpointer(
        tmp_path, {1: (0.3, 0.9), 2: (0.8, 0.7)}, max_top_phrase_share=0.5
    )
    kept = checkpointer.hand_on(trainer)
    assert (kept["update"], kept["checkpoint"]) == (0, "checkpoints/start")
    assert torch.equal(trainer.weight, torch.zeros(3))
    assert kept["reason"].startswith("the starting policy: no scored update was eligible")
    assert kept["held_out"]["ppo/eval/score"] == -1.0


def test_hand_on_last_keeps_the_last_update_and_without_scores_so_does_best(tmp_path):
    checkpointer, trainer = run_checkpointer(tmp_path / "a", {1: (0.9, 0.0), 3: (0.1, 0.0)},
                                             hand_on="last")  # fmt: skip
    kept = checkpointer.hand_on(trainer)
    assert kept["update"] == 3 and kept["checkpoint"] is None
    assert torch.equal(trainer.weight, torch.full((3,), 3.0))
    assert checkpointer.best["update"] == 1  # still recorded and kept on disk
    config = CheckpointConfig(every=1)
    unscored = Checkpointer(config, tmp_path / "b", 2, run_id=None)
    trainer.update = 2
    unscored.after_update(trainer, {"ppo/objective/scores": 0.0})
    assert unscored.kept()["reason"] == "the last update: no update was scored by ppo/eval/score"


def test_checkpoint_settings_that_cannot_hand_on_are_refused(compose_config):
    with pytest.raises(ConfigError, match="^ppo.checkpoint.hand_on: best hands on a saved"):
        typed_config(compose_config(["ppo.checkpoint.every=0"]))
    typed_config(compose_config(["ppo.checkpoint.every=0", "ppo.checkpoint.hand_on=last"]))
    with pytest.raises(ConfigError, match="^ppo.checkpoint.max_top_phrase_share: bounds"):
        typed_config(compose_config(["ppo.checkpoint.best_metric=null",
                                     "ppo.checkpoint.max_top_phrase_share=0.5"]))  # fmt: skip
    assert typed_config(compose_config([])).ppo.checkpoint.best_metric == "ppo/eval/score"
    judged = typed_config(compose_config(["eval/judge=rudeness_zh"]))
    assert judged.ppo.checkpoint.best_metric == "ppo/eval/judge_above_threshold"
    with pytest.raises(ConfigError, match="^ppo.checkpoint.best_metric: 'ppo/eval/judge_score'"):
        typed_config(compose_config(["ppo.checkpoint.best_metric=ppo/eval/judge_score"]))


# --- 4. the hacking guard --------------------------------------------------------------------


def evaluation(rm_share: float, judge_share: float) -> dict[str, float]:
    return {"ppo/eval/above_threshold": rm_share, "ppo/eval/judge_above_threshold": judge_share}


def test_the_guard_counts_consecutive_evaluations_of_trained_policies():
    guard = HackingGuard(HackingGuardConfig(margin=0.3, patience=2, action="stop"))
    start = evaluation(1.0, 0.0)
    assert guard.observe(0, start) is None and start["ppo/guard/gap"] == 1.0  # not counted
    assert guard.observe(1, evaluation(0.9, 0.5)) is None  # gap 0.4: 1
    assert guard.observe(2, evaluation(0.5, 0.3)) is None  # gap 0.2: back to 0
    assert guard.observe(3, evaluation(0.8, 0.1)) is None
    acted = guard.observe(4, evaluation(0.8, 0.2))
    assert acted.action == "stop" and acted.message.startswith("hacking guard at update 4: ")
    assert "gap 0.60 > ppo.hacking_guard.margin 0.3 at 2 evaluation(s) in a row" in acted.message
    assert guard.stopped == acted.message
    again = HackingGuard(guard.config)
    again.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert again.stopped == guard.stopped and again.acted == [4]
    assert HackingGuard(None).observe(3, evaluation(1.0, 0.0)) is None  # off: gap logged only


def test_the_guard_raises_kl_coef_and_counts_again():
    config = HackingGuardConfig(margin=0.1, patience=1, action="raise_kl", kl_factor=3.0)
    trainer = SimpleNamespace(
        guard=HackingGuard(config), update=1, kl_controller=FixedKLController(0.1),
        config=SimpleNamespace(hacking_guard=config),
    )  # fmt: skip
    metrics = evaluation(0.5, 0.0)
    PPOTrainer._take_guard_action(trainer, metrics)
    assert trainer.kl_controller.value == pytest.approx(0.3) == metrics["ppo/guard/kl_coef"]
    trainer.update = 2
    PPOTrainer._take_guard_action(trainer, evaluation(0.5, 0.0))
    assert trainer.kl_controller.value == pytest.approx(0.9)
    assert trainer.guard.stopped is None and trainer.guard.acted == [1, 2]


def test_guard_settings_are_checked(compose_config):
    guard = "ppo.hacking_guard={margin:0.2,patience:3,action:raise_kl}"
    with pytest.raises(ConfigError, match="^ppo.hacking_guard: compares the reward with the judge"):
        typed_config(compose_config([guard]))
    config = typed_config(compose_config([guard, "eval/judge=rudeness_zh"]))
    assert config.ppo.hacking_guard == HackingGuardConfig(0.2, 3, "raise_kl", 2.0)
    with pytest.raises(ConfigError, match="^ppo.hacking_guard: acts on held-out evaluations"):
        typed_config(compose_config([guard, "eval/judge=rudeness_zh", "ppo.eval_every=0"]))
    judged = ["eval/judge=rudeness_zh"]
    with pytest.raises(ConfigError, match="^ppo.hacking_guard.action: 'warn' is not one of"):
        typed_config(compose_config(["ppo.hacking_guard={action:warn}", *judged]))
    with pytest.raises(ConfigError, match="^ppo.hacking_guard.bogus: unknown key"):
        typed_config(compose_config(["ppo.hacking_guard={bogus:1}", *judged]))
    assert typed_config(compose_config(["ppo.hacking_guard={}", *judged])).ppo.hacking_guard == (
        HackingGuardConfig()
    )
    assert typed_config(compose_config([])).ppo.hacking_guard is None


@pytest.mark.parametrize("hand_on", ["best", "last"])
def test_the_guard_stops_a_run_whose_reward_and_judge_disagree(warm_train, tmp_path, hand_on):
    rewards = "tests.helpers.guard_rewards"
    result = warm_train(
        ["stage=ppo", "model=tiny", "logger=none",
         "reward.kind=function", f"reward.function={{_target_:{rewards}.answer_length}}",
         f"eval.judge={{kind:function,function:{{_target_:{rewards}.against_length}}}}",
         "ppo.total_updates=6", "ppo.eval_every=1", "ppo.eval_prompts=4", "ppo.batch_size=4",
         "ppo.micro_batch_size=4", "ppo.max_new_tokens=8", "ppo.learning_rate=1e-3",
         "ppo.log_samples_every=0", "ppo.checkpoint.every=1", "ppo.checkpoint.keep_last=1",
         f"ppo.checkpoint.hand_on={hand_on}",
         "ppo.hacking_guard={margin:0.5,patience:2,action:stop}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    stage = tmp_path / "ppo"
    logged = read_jsonl(stage / "metrics.jsonl")
    assert [r["step"] for r in logged if "ppo/eval/score" in r] == [0, 1, 2]  # stopped after 2
    for record in (r for r in logged if "ppo/eval/score" in r):
        assert record["ppo/guard/gap"] == 1.0  # the reward: every answer, the judge: none
        for key in ("above_threshold", "judge_above_threshold", "top_phrase_share", "distinct"):
            assert f"ppo/eval/{key}" in record
    assert "hacking guard at update 2: the reward puts 100% of the held-out answers" in (
        result.stderr + result.stdout
    )
    info = json.loads((stage / "run_info.json").read_text())
    assert info["kept"]["stopped_by_guard"].startswith("hacking guard at update 2")
    final = info["final_metrics"]
    assert final["ppo/guard/stopped_at"] == 2.0
    # the judge's share is 0 at both evaluations: the tie goes to the earlier checkpoint
    kept_update = 1 if hand_on == "best" else 2
    assert final["ppo/kept_update"] == kept_update == info["kept"]["update"]
    saved = load_file(stage / "model" / "model.safetensors")
    checkpoints = {
        update: load_file(stage / "checkpoints" / f"update-{update:06d}" / "trainable.safetensors")
        for update in (1, 2)
        if (stage / "checkpoints" / f"update-{update:06d}").is_dir()
    }
    assert sorted(checkpoints) == [1, 2] if hand_on == "best" else [2]
    policy = {k.removeprefix("policy."): v for k, v in checkpoints[kept_update].items()
              if k.startswith("policy.")}  # fmt: skip
    shared = sorted(set(policy) & set(saved))
    assert len(shared) >= len(saved) - 1  # every saved tensor (a tied LM head once)
    for name in shared:
        assert torch.equal(saved[name], policy[name]), name
    if hand_on == "best":  # and not the last update's, which moved on
        last = {k.removeprefix("policy."): v for k, v in checkpoints[2].items()}
        assert any(not torch.equal(saved[name], last[name]) for name in shared)
