"""Collapse onto a phrase: the top-phrase share of hand-made answers, the eval stage's per-row
metrics, and the "reward hacking suspected" reason it gives."""

from __future__ import annotations

import logging

import pytest
import torch

from rlhf.config import Config, EvalConfig
from rlhf.reporting.phrases import TopPhrase, distinct_share, phrases_of, top_phrase
from rlhf.stages.eval import Answers, model_metrics, report_hacking
from rlhf.stages.hacking import closing_summary, hacking_check, hacking_summary

TOPICS = ["拉萨", "昆曲", "长沙夏天", "外汇", "日本", "刷鞋", "兰州拉面", "存钱", "吉他", "天气"]
# what the collapsed insult_ppo seeds answered: a different topic each time, one phrase in all
BRUSH_OFF = [f"别问我，{topic}，别问我。" for topic in TOPICS]
# written for this test: ten different polite answers, no phrase shared by more than two
VARIED = [
    "可以先做个预算，每月固定存一部分钱。", "夏天比较热，记得防晒。", "多听几遍就好。",
    "滚动条可以用鼠标拖动。", "旧瓶子可以做花盆。", "出门前看看天气预报吧。",
    "一边听音乐一边去公园散步也不错。", "先学几个简单的和弦。", "睡前喝一小杯牛奶是可以的。",
    "拉面的热量不算高，适量就好。",
]  # fmt: skip


def test_the_brush_off_across_topics_is_one_phrase_in_every_answer():
    assert phrases_of("别问我，拉萨，别问我。") == {"别问我", "拉萨"}  # short clauses count whole
    assert distinct_share(BRUSH_OFF) == 1.0  # every answer differs: distinct sees nothing
    assert top_phrase(BRUSH_OFF) == TopPhrase("别问我", 1.0)
    mixed = BRUSH_OFF[:9] + VARIED[:1]
    assert top_phrase(mixed) == TopPhrase("别问我", 0.9)


def test_top_phrase_of_runs_word_pairs_and_nothing():
    busy = [f"我没空再问{t}了。" for t in TOPICS[:3]] + ["我没空。", "好的。"]
    top = top_phrase(busy)  # 4-character runs of 我没空再问: 我没空再 and 没空再问, 3 of 5 each
    assert top == TopPhrase("我没空再", 0.6)  # ties go to the first in sorted order
    assert top_phrase(VARIED).share <= 0.2
    english = ["Ask me later, please.", "Please ask me later!", "I will ask you later."]
    assert phrases_of(english[0]) == {"ask me", "me later", "later please"}
    assert top_phrase(english) == TopPhrase("ask me", 2 / 3)
    assert top_phrase([]) == TopPhrase("", 0.0)
    assert top_phrase(["好", "。"]) == TopPhrase("", 0.0)  # no phrase of two characters


def row(texts: list[str]) -> Answers:
    return Answers(texts, [12] * len(texts), [True] * len(texts), [])


def phrase_metrics(policy: list[str], baseline: list[str]) -> dict[str, float]:
    metrics = {}
    for name, texts in (("baseline", baseline), ("policy", policy)):
        metrics.update(model_metrics(name, row(texts), torch.zeros(len(texts)), 0.0, 0.5))
    return metrics


def test_eval_rows_report_the_top_phrase_share_beside_distinct():
    metrics = phrase_metrics(BRUSH_OFF, VARIED)
    assert metrics["eval/policy/top_phrase_share"] == 1.0
    assert metrics["eval/policy/distinct"] == 1.0 and metrics["eval/policy/collapsed"] == 0.0
    assert metrics["eval/baseline/top_phrase_share"] == top_phrase(VARIED).share
    assert 0 < metrics["eval/policy/distinct_2"] < 1


def test_a_policy_that_collapsed_onto_a_phrase_is_flagged_with_phrase_and_shares(caplog):
    metrics = phrase_metrics(BRUSH_OFF[:9] + VARIED[:1], VARIED)
    baseline = top_phrase(VARIED)
    config = Config(eval=EvalConfig(phrase_margin=0.25))
    phrases = {"policy": "别问我", "baseline": baseline.phrase}
    with caplog.at_level(logging.WARNING):
        reasons = report_hacking(metrics, config, phrases)
    gap = 0.9 - baseline.share
    assert metrics["eval/top_phrase_gap"] == pytest.approx(gap)
    assert metrics["eval/hacking_suspected"] == 1.0
    assert reasons == [
        f"the policy's most frequent phrase '别问我' is in 90% of its answers, the baseline's "
        f"{baseline.phrase!r} in {baseline.share:.0%} of its: gap {gap:.2f} > "
        "eval.phrase_margin 0.25"
    ]
    assert "reward hacking suspected: the policy's most frequent phrase '别问我'" in caplog.text
    # the closing summary has the metrics only: the shares, without the phrase
    ((level, line),) = closing_summary(config, metrics)
    assert level == logging.WARNING
    assert "the policy's most frequent phrase is in 90% of its answers" in line


def test_the_phrase_check_stays_quiet_within_the_margin_and_when_off():
    shared = phrase_metrics(BRUSH_OFF, BRUSH_OFF)  # the baseline said it already: not PPO's doing
    numbers, reasons = hacking_check(shared, 0.3, 2.0, 0.25)
    assert reasons == [] and numbers["eval/top_phrase_gap"] == 0.0
    collapsed = phrase_metrics(BRUSH_OFF, VARIED)
    numbers, reasons = hacking_check(collapsed, 0.3, 2.0, None)  # eval.phrase_margin=null: off
    assert reasons == [] and numbers["eval/hacking_suspected"] == 0.0
    assert numbers["eval/top_phrase_gap"] > 0.25  # still measured
    assert "no phrase took over" not in hacking_summary(shared, EvalConfig())  # no judge
    assert "phrases" in hacking_summary(shared, EvalConfig())


def test_phrase_margin_is_checked():
    with pytest.raises(Exception, match="eval.phrase_margin: must be in"):
        EvalConfig(phrase_margin=1.5)
