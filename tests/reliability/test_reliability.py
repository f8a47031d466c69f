"""Health monitors on hand-made numbers, numeric guards with injected NaNs, and checkpoints
that refuse a poisoned state."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.config import CheckpointConfig, HealthConfig
from rlhf.errors import ConfigError, NumericError
from rlhf.ppo.checkpoint import Checkpointer
from rlhf.ppo.health import (
    HealthMonitor,
    HealthStop,
    distinct_ngrams,
    length_alarm,
    length_drift_alarm,
    pearson,
    slope,
    threshold_alarms,
)
from rlhf.runs.resume import ppo_checkpoints
from tests.helpers.ppo import make_config, make_trainer

OFF = {name: None for name in HealthConfig.ALARMS}


def test_distinct_ngrams_correlation_and_slope_by_hand():
    # bigrams (1,2) (2,1) (1,2) | (1,2): 2 distinct of 4
    assert distinct_ngrams([[1, 2, 1, 2], [1, 2]], 2) == 0.5
    assert distinct_ngrams([[7, 7, 7]], 1) == pytest.approx(1 / 3)
    assert distinct_ngrams([[1]], 2) == 1.0  # no bigram at all: nothing collapsed
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0
    assert slope([0.1, 0.2, 0.3]) == pytest.approx(0.1)


def test_each_threshold_raises_its_alarm_and_only_it():
    cfg = HealthConfig(kl_max=10, kl_min=-0.5, entropy_min=0.1, eos_rate_min=0.8,
                       truncation_rate_max=0.3, ratio_max=5, distinct_min=0.2)  # fmt: skip
    healthy = {"ppo/objective/kl": 2.0, "ppo/policy/entropy": 1.5, "ppo/eos_rate": 0.9,
               "ppo/truncation_rate": 0.1, "ppo/policy/ratio_max": 1.3,
               "ppo/health/distinct": 0.7}  # fmt: skip
    assert threshold_alarms(healthy, cfg) == []
    cases = {
        "kl_max": ("ppo/objective/kl", 12.0), "kl_min": ("ppo/objective/kl", -0.8),
        "entropy_min": ("ppo/policy/entropy", 0.05), "eos_rate_min": ("ppo/eos_rate", 0.5),
        "truncation_rate_max": ("ppo/truncation_rate", 0.5),
        "ratio_max": ("ppo/policy/ratio_max", 9.0), "distinct_min": ("ppo/health/distinct", 0.1),
    }  # fmt: skip
    for name, (key, value) in cases.items():
        (alarm,) = threshold_alarms({**healthy, key: value}, cfg)
        assert alarm.name == name and key in alarm.message and f"{value:.4g}" in alarm.message
    assert threshold_alarms({"ppo/objective/kl": 99.0}, HealthConfig(**OFF)) == []  # all off


def test_length_alarm_needs_a_rising_score_and_a_high_correlation():
    cfg = HealthConfig(length_corr_max=0.9, trend_window=3)
    assert length_alarm(0.95, [0.1, 0.2, 0.4], cfg).name == "length_corr_max"
    assert length_alarm(0.95, [0.4, 0.2, 0.1], cfg) is None  # score falling
    assert length_alarm(0.5, [0.1, 0.2, 0.4], cfg) is None  # length does not explain it
    assert length_alarm(0.95, [0.1, 0.2], cfg) is None  # too few updates to judge


def test_monitor_logs_alarms_as_metrics_and_stops_when_configured(caplog):
    cfg = HealthConfig(**{**OFF, "length_corr_max": 0.9}, trend_window=2,
                       stop_on=["length_corr_max"])  # fmt: skip
    monitor = HealthMonitor(cfg)
    responses = [[1, 2], [1, 2, 3, 4], [5, 6, 7, 8, 9, 10]]
    metrics = {}
    assert monitor.observe(metrics, responses, [0.2, 0.4, 0.6]) == []  # one update: no trend
    assert metrics["ppo/health/length_score_corr"] == pytest.approx(1.0)
    assert metrics["ppo/health/distinct"] == pytest.approx(8 / 9)  # (1, 2) twice in 9 bigrams
    metrics = {}
    alarms = monitor.observe(metrics, responses, [0.4, 0.8, 1.2])  # mean rose 0.4 → 0.8
    assert metrics["health/length_corr_max"] == 1.0 and "length_corr_max" in caplog.text
    with pytest.raises(HealthStop, match="at update 7 .*last good checkpoint: ckpt-6"):
        monitor.stop_if_configured(alarms, 7, "ckpt-6")
    restored = HealthMonitor(cfg)
    restored.load_state_dict(monitor.state_dict())
    assert restored.score_history == pytest.approx([0.4, 0.8])


def test_length_drift_alarm_on_hand_made_lengths():
    cfg = HealthConfig(**{**OFF, "length_drift_max": 2.0}, trend_window=2)
    assert length_drift_alarm([39.0], [39.0], cfg) == (None, None)  # the start is not in yet
    ratio, alarm = length_drift_alarm([39.0, 37.0], [12.0, 10.0], cfg)  # 39 → 11 tokens
    assert ratio == pytest.approx(11 / 38) and alarm.name == "length_drift_max"
    assert "11.0 tokens over the last 2 updates against 38.0" in alarm.message
    assert "ratio 0.29 outside [0.50, 2]" in alarm.message
    assert length_drift_alarm([20.0, 20.0], [30.0, 38.0], cfg) == (pytest.approx(1.7), None)
    assert length_drift_alarm([20.0, 20.0], [40.0, 44.0], cfg)[1].name == "length_drift_max"
    off = HealthConfig(**OFF, trend_window=2)
    assert length_drift_alarm([40.0, 40.0], [4.0, 4.0], off) == (pytest.approx(0.1), None)


def test_monitor_watches_length_drift_over_updates_and_keeps_it_on_resume():
    cfg = HealthConfig(**{**OFF, "length_drift_max": 2.0}, trend_window=2,
                       stop_on=["length_drift_max"])  # fmt: skip
    monitor = HealthMonitor(cfg)
    ratios, fired = [], []
    for length in (40, 38, 12, 10):  # batch mean lengths: two responses of that many tokens
        metrics = {}
        alarms = monitor.observe(metrics, [[1] * length, [2] * length], [0.5, 0.5])
        ratios.append(metrics.get("ppo/health/length_ratio"))
        fired.append("health/length_drift_max" in metrics)
    # first window (40, 38); last windows (40, 38), (38, 12), (12, 10)
    assert ratios == [None, 1.0, pytest.approx(25 / 39), pytest.approx(11 / 39)]
    assert fired == [False, False, False, True]
    with pytest.raises(HealthStop, match="ratio 0.28 outside"):
        monitor.stop_if_configured(alarms, 4, "ckpt-3")
    restored = HealthMonitor(cfg)
    restored.load_state_dict(monitor.state_dict())
    assert (restored.start_lengths, restored.recent_lengths) == ([40.0, 38.0], [12.0, 10.0])
    older = HealthMonitor(cfg)  # a checkpoint from before the alarm: it starts watching afresh
    older.load_state_dict({"score_history": [0.1]})
    assert older.start_lengths == [] and older.score_history == [0.1]
    with pytest.raises(ConfigError, match="ppo.health.length_drift_max: must be > 1"):
        HealthConfig(length_drift_max=0.5)


def test_health_stop_in_the_loop_keeps_the_last_good_checkpoint(tiny_sft_model, tmp_path):
    # entropy is always below 100 nats: the alarm goes off at update 2, after a warm-up update
    config = make_config(tiny_sft_model, total_updates=4, eval_every=0, log_samples_every=0,
                         critic_warmup_updates=1)  # fmt: skip
    config.ppo.health = HealthConfig(**{**OFF, "entropy_min": 100.0}, stop_on=["entropy_min"])
    trainer = make_trainer(config, tmp_path)
    trainer.health = HealthyFirstUpdate(config.ppo.health)
    checkpoints = Checkpointer(CheckpointConfig(every=1), tmp_path, 4, run_id=None)
    with pytest.raises(HealthStop, match=r"ppo/policy/entropy = .* < entropy_min 100 at update 2"):
        trainer.train(checkpoints)
    assert [p.name for p in ppo_checkpoints(tmp_path)] == ["update-000001"]
    logged = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert '"health/entropy_min": 1.0' in logged[-1] and '"step": 2' in logged[-1]


class HealthyFirstUpdate(HealthMonitor):
    """The real monitor, which raises no alarm on the first update it sees."""

    def __init__(self, cfg: HealthConfig):
        super().__init__(cfg)
        self.seen = 0

    def observe(self, metrics, responses, scores, texts=None):
        self.seen += 1
        alarms = super().observe(metrics, responses, scores, texts)
        return alarms if self.seen > 1 else []


def nan_on_call(call: int):
    """A reward (unchecked, as a buggy normaliser would pass it on) that is NaN on one call."""
    calls = []

    def reward(prompts, completions):
        calls.append(1)
        value = float("nan") if len(calls) == call else 0.5
        return torch.full((len(completions),), value)

    return reward


def params(trainer):
    return [p.detach().clone() for p in trainer.model.policy_parameters()]


def test_nan_reward_stops_naming_phase_and_update_and_no_checkpoint_is_written(
    tiny_sft_model, tmp_path
):
    config = make_config(tiny_sft_model, total_updates=4, eval_every=0, log_samples_every=0)
    trainer = make_trainer(config, tmp_path, reward=nan_on_call(3))
    checkpoints = Checkpointer(CheckpointConfig(every=1), tmp_path, 4, run_id=None)
    with pytest.raises(NumericError, match=r"update 3, phase score: non-finite scores \(8 of 8\)"):
        trainer.train(checkpoints)
    assert [p.name for p in ppo_checkpoints(tmp_path)] == ["update-000001", "update-000002"]


def test_nan_reward_skips_the_batch_when_configured(tiny_sft_model, tmp_path, caplog):
    config = make_config(tiny_sft_model, on_nonfinite="skip")
    trainer = make_trainer(config, tmp_path, reward=nan_on_call(1))
    before = params(trainer)
    assert trainer.step() == {"ppo/nonfinite_skipped_batches": 1.0}
    assert "update 1, phase score" in caplog.text and "batch skipped" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(before, params(trainer), strict=True))
    assert trainer.step()["ppo/policy/nonfinite_skipped"] == 0  # the next batch trains
    assert any(not torch.equal(a, b) for a, b in zip(before, params(trainer), strict=True))


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nan_loss_stops_or_skips_its_mini_batches(tiny_sft_model, tmp_path, mode):
    trainer = make_trainer(make_config(tiny_sft_model, on_nonfinite=mode), tmp_path)
    # NaN values from the critic's head in the update's passes only (the rollout's run without
    # gradients), so the advantages stay finite and the value loss is not
    nan_values_in_update(trainer)
    before = params(trainer)
    if mode == "stop":
        with pytest.raises(NumericError, match="update 1, phase update: non-finite value loss"):
            trainer.step()
    else:
        metrics = trainer.step()
        assert metrics["ppo/policy/nonfinite_skipped"] == 8  # 4 epochs × 2 mini-batches
    # the policy loss had been back-propagated already: its gradients are dropped, not applied
    assert all(torch.equal(a, b) for a, b in zip(before, params(trainer), strict=True))


def nan_values_in_update(trainer):
    def poison(module, inputs, output):
        return output * float("nan") if torch.is_grad_enabled() else output

    trainer.model.critic.score.register_forward_hook(poison)


def nan_values(trainer):
    trainer.model.critic.score.register_forward_hook(lambda m, i, output: output * float("nan"))


def inf_gradient(trainer):
    trainer.model.policy_parameters()[0].register_hook(lambda grad: grad * float("inf"))


@pytest.mark.parametrize(
    "inject,message",
    [
        (nan_values, "update 1, phase advantages: non-finite advantages"),
        (inf_gradient, "update 1, phase update: non-finite policy gradient norm"),
    ],
    ids=["advantage", "gradient-norm"],
)
def test_nan_advantage_and_gradient_norm_stop_with_phase_and_update(
    tiny_sft_model, tmp_path, inject, message
):
    trainer = make_trainer(make_config(tiny_sft_model), tmp_path)
    inject(trainer)
    before = params(trainer)
    with pytest.raises(NumericError, match=message):
        trainer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params(trainer), strict=True))


def test_a_poisoned_state_is_never_checkpointed(tiny_sft_model, tmp_path):
    trainer = make_trainer(make_config(tiny_sft_model, total_updates=1), tmp_path)
    trainer.step()
    with torch.no_grad():
        trainer.model.policy_parameters()[0][0] = float("nan")
    checkpoints = Checkpointer(CheckpointConfig(every=1), tmp_path, 1, run_id=None)
    with pytest.raises(NumericError, match="phase checkpoint: non-finite .*no checkpoint written"):
        checkpoints.after_update(trainer, {})
    assert ppo_checkpoints(tmp_path) == [] and not list(tmp_path.glob("checkpoints/.tmp-*"))


def test_checkpoint_records_its_process_count_and_refuses_another(tiny_sft_model, tmp_path):
    # each process's RNG states are in the checkpoint: a resume needs as many processes
    trainer = make_trainer(make_config(tiny_sft_model, total_updates=1), tmp_path)
    folder = Checkpointer(CheckpointConfig(every=1), tmp_path, 1, run_id=None).after_update(
        trainer, {}
    )
    state_file = folder / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["processes"] == 1
    state_file.write_text(json.dumps({**state, "processes": 2}))
    resumed = make_trainer(make_config(tiny_sft_model, total_updates=1), tmp_path / "again")
    checkpoints = Checkpointer(CheckpointConfig(every=1), tmp_path, 1, run_id=None)
    with pytest.raises(ConfigError, match=r"written by 2 process\(es\), this run has 1; resume "):
        checkpoints.resume(resumed, folder)
    assert resumed.update == 0  # nothing was loaded
