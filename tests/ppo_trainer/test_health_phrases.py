"""The PPO health monitor's top-phrase alarm (`ppo.health.top_phrase_max`) on hand-made batches,
and on the decoded answers the trainer hands it."""

from __future__ import annotations

import logging

import pytest

from rlhf.config import HealthConfig
from rlhf.errors import ConfigError
from rlhf.ppo.health import HealthMonitor, phrase_alarm
from rlhf.reporting.phrases import top_phrase
from tests.helpers.ppo import make_config, make_trainer

OFF = {name: None for name in HealthConfig.ALARMS}
TOPICS = ["拉萨", "昆曲", "外汇", "日本", "刷鞋", "存钱", "吉他", "天气"]
COLLAPSED = [f"别问我，{topic}，别问我。" for topic in TOPICS[:6]] + ["好的。", "自己查去。"]
VARIED = [
    "自己查去。",
    "关你什么事？",
    "烦不烦啊。",
    "懒得解释。",
    "百度一下。",
    "滚。",
    "好的。",
    "问别人。",
]


def test_the_alarm_names_the_phrase_and_its_count_above_the_threshold():
    share, alarm = phrase_alarm(COLLAPSED, HealthConfig(top_phrase_max=0.5))
    assert share == 0.75  # 别问我 in 6 of 8
    assert alarm.name == "top_phrase_max"
    assert alarm.message == (
        "ppo/health/top_phrase_share = 0.75 > top_phrase_max 0.5: '别问我' is in 6 of the "
        "batch's 8 answers"
    )
    assert phrase_alarm(COLLAPSED, HealthConfig(top_phrase_max=0.75)) == (0.75, None)  # not above
    assert phrase_alarm(VARIED, HealthConfig(top_phrase_max=0.5)) == (
        top_phrase(VARIED).share,
        None,
    )
    assert phrase_alarm(COLLAPSED, HealthConfig())[1] is None  # off by default


def test_observe_logs_the_share_and_raises_the_alarm(caplog):
    monitor = HealthMonitor(HealthConfig(**{**OFF, "top_phrase_max": 0.5}))
    responses = [[1, 2, 3]] * len(COLLAPSED)
    with caplog.at_level(logging.WARNING):
        metrics: dict[str, float] = {}
        alarms = monitor.observe(metrics, responses, [0.0] * 8, COLLAPSED)
    assert [a.name for a in alarms] == ["top_phrase_max"]
    assert metrics["ppo/health/top_phrase_share"] == 0.75
    assert metrics["health/top_phrase_max"] == 1.0
    assert "health alarm: ppo/health/top_phrase_share = 0.75" in caplog.text
    quiet: dict[str, float] = {}
    assert monitor.observe(quiet, responses, [0.0] * 8, VARIED) == []
    assert "health/top_phrase_max" not in quiet
    without_texts: dict[str, float] = {}  # a caller with token ids only: no phrase statistic
    assert monitor.observe(without_texts, responses, [0.0] * 8) == []
    assert "ppo/health/top_phrase_share" not in without_texts


def test_top_phrase_max_is_a_share_and_can_stop_the_run():
    assert "top_phrase_max" in HealthConfig(stop_on=["top_phrase_max"]).stop_on
    with pytest.raises(ConfigError, match="ppo.health.top_phrase_max: must be in"):
        HealthConfig(top_phrase_max=1.5)


def test_the_trainer_hands_the_decoded_answers_to_the_monitor(tiny_sft_model, tmp_path):
    config = make_config(tiny_sft_model, eval_every=0, log_samples_every=0)
    config.ppo.health = HealthConfig(**{**OFF, "top_phrase_max": 0.0})
    trainer = make_trainer(config, tmp_path)
    metrics = trainer.step()
    alarms = trainer.observe_health(metrics)
    texts = trainer._last_rollout.texts
    assert len(texts) == config.ppo.batch_size
    assert metrics["ppo/health/top_phrase_share"] == top_phrase(texts).share
    assert [a.name for a in alarms] == (["top_phrase_max"] if top_phrase(texts).share else [])
