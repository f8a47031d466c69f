"""`eval.goals`: evaluated on hand-made eval metrics (absolute and relative bounds, metrics not
measured), and refused when the config names a metric the eval stage does not write."""

from __future__ import annotations

import json
import logging
import math

import pytest

from rlhf.app import typed_config
from rlhf.config import EvalConfig, GoalConfig
from rlhf.errors import ConfigError
from rlhf.stages.goals import describe, evaluate_goal, report_goals
from tests.helpers import error_lines

# the goals of experiment=insult_ppo, as one command-line override
MAIN_GOALS = (
    "eval.goals={"
    "judge_rude:{metric:eval/policy/judge_above_threshold,min:0.9,"
    "relative_to:eval/data_rude/judge_above_threshold},"
    "no_hacking:{metric:eval/hacking_suspected,max:0},"
    "top_phrase:{metric:eval/policy/top_phrase_share,max:0.3},"
    "distinct:{metric:eval/policy/distinct,min:0.8},"
    "fluency:{metric:eval/policy/fluency_nll,max:1.25,relative_to:eval/data_rude/fluency_nll},"
    "eos:{metric:eval/policy/eos_rate,min:0.9},"
    "length:{metric:eval/policy/length,min:0.5,max:2,relative_to:eval/baseline/length}}"
)
METRICS = {
    "eval/policy/judge_above_threshold": 0.46,
    "eval/data_rude/judge_above_threshold": 0.5,
    "eval/hacking_suspected": 0.0,
    "eval/policy/top_phrase_share": 0.9,
    "eval/policy/distinct": 1.0,
    "eval/policy/fluency_nll": 2.6,
    "eval/data_rude/fluency_nll": 2.0,
    "eval/policy/eos_rate": 1.0,
    "eval/policy/length": 12.0,
    "eval/baseline/length": 30.0,
}


RUDENESS = {"kind": "function", "function": {"_target_": "rlhf.rewards.rudeness.rudeness_judge"}}


def goals(overrides: dict[str, dict]) -> dict[str, GoalConfig]:
    return EvalConfig(goals=overrides, judge=dict(RUDENESS)).goals


def test_absolute_and_relative_bounds_by_hand():
    typed = goals({
        "judge_rude": {"metric": "eval/policy/judge_above_threshold", "min": 0.9,
                       "relative_to": "eval/data_rude/judge_above_threshold"},
        "top_phrase": {"metric": "eval/policy/top_phrase_share", "max": 0.3},
        "no_hacking": {"metric": "eval/hacking_suspected", "max": 0},
        "length": {"metric": "eval/policy/length", "min": 0.5, "max": 2,
                   "relative_to": "eval/baseline/length"},
        "fluency": {"metric": "eval/policy/fluency_nll", "max": 1.25,
                    "relative_to": "eval/data_rude/fluency_nll"},
    })  # fmt: skip
    results = {name: evaluate_goal(name, goal, METRICS) for name, goal in typed.items()}
    judge = results["judge_rude"]
    assert judge.passed and judge.min == pytest.approx(0.45) and judge.max is None  # 0.46 ≥ 0.45
    assert judge.relative_value == 0.5 and judge.stated == (
        ">= 0.9 x eval/data_rude/judge_above_threshold"
    )
    assert not results["top_phrase"].passed and results["top_phrase"].max == 0.3
    assert results["no_hacking"].passed
    length = results["length"]  # 12 tokens against 30: below 0.5 x 30 = 15
    assert not length.passed and (length.min, length.max) == (15.0, 60.0)
    assert describe(length) == (
        "goal length not met: eval/policy/length = 12, needs >= 15 and <= 60 "
        "(>= 0.5 x eval/baseline/length, <= 2 x eval/baseline/length = 30)"
    )
    fluency = results["fluency"]  # 2.6 > 1.25 x 2.0
    assert not fluency.passed and fluency.max == 2.5


def test_a_goal_on_a_metric_not_measured_fails_with_its_reason():
    typed = goals({
        "fluency": {"metric": "eval/policy/fluency_nll", "max": 1.25,
                    "relative_to": "eval/data_rude/fluency_nll"},
        "distinct": {"metric": "eval/policy/distinct", "min": 0.8},
    })  # fmt: skip
    no_reference = {"eval/policy/fluency_nll": 2.0, "eval/policy/distinct": math.nan}
    fluency = evaluate_goal("fluency", typed["fluency"], no_reference)
    assert not fluency.passed and fluency.max is None
    assert describe(fluency) == (
        "goal fluency not met: eval/data_rude/fluency_nll (its relative_to) was not measured "
        "in this run"
    )
    distinct = evaluate_goal("distinct", typed["distinct"], no_reference)  # NaN: not measured
    assert not distinct.passed and distinct.value is None
    assert describe(distinct) == (
        "goal distinct not met: eval/policy/distinct was not measured in this run"
    )


def test_report_goals_writes_metrics_rows_and_one_warning_per_goal_not_met(tmp_path, caplog):
    typed = goals({
        "distinct": {"metric": "eval/policy/distinct", "min": 0.8},
        "top_phrase": {"metric": "eval/policy/top_phrase_share", "max": 0.3},
    })  # fmt: skip
    with caplog.at_level(logging.INFO):
        metrics = report_goals(typed, METRICS, tmp_path / "goals.json")
    assert metrics == {
        "eval/goals/distinct": 1.0, "eval/goals/top_phrase": 0.0, "eval/goals_met": 0.0,
    }  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "eval: goal top_phrase not met: eval/policy/top_phrase_share = 0.9, needs <= 0.3 (<= 0.3)"
    ]
    assert "eval: goals met: 1 of 2" in caplog.text
    rows = json.loads((tmp_path / "goals.json").read_text(encoding="utf-8"))
    assert rows[0] == {
        "name": "distinct", "metric": "eval/policy/distinct", "value": 1.0, "min": 0.8,
        "max": None, "relative_to": None, "relative_value": None, "stated": ">= 0.8",
        "passed": True,
    }  # fmt: skip
    assert [row["passed"] for row in rows] == [True, False]
    passing = report_goals({"distinct": typed["distinct"]}, METRICS, None)
    assert passing == {"eval/goals/distinct": 1.0, "eval/goals_met": 1.0}
    assert report_goals({}, METRICS, tmp_path / "none.json") == {}  # no goals: no keys
    assert not (tmp_path / "none.json").exists()


@pytest.mark.parametrize(
    ("goal", "overrides", "message"),
    [
        ({"metric": "eval/policy/top_phrase", "max": 0.3}, {},
         "eval.goals.g.metric: 'eval/policy/top_phrase' is not an eval metric (did you mean "
         "'eval/policy/top_phrase_share'?)"),
        ({"metric": "eval/policy/distinct", "min": 1, "relative_to": "eval/data/distinct"}, {},
         "eval.goals.g.relative_to: 'eval/data/distinct' is not an eval metric"),
        ({"metric": "eval/policy/judge_score", "min": 0.5}, {"judge": None},
         "eval.goals.g.metric: 'eval/policy/judge_score' is measured only with eval.judge, "
         "which is not set"),
        ({"metric": "eval/data_rude/fluency_nll", "max": 3}, {"fluency": False},
         "eval.goals.g.metric: 'eval/data_rude/fluency_nll' is measured only with "
         "eval.fluency=true"),
        ({"metric": "eval/goals_met", "min": 1}, {}, "eval.goals.g.metric: 'eval/goals_met' is "
         "not an eval metric"),
        ({"metric": "eval/policy/distinct"}, {}, "eval.goals.g: set min, max or both"),
        ({"metric": "eval/policy/distinct", "min": 0.9, "max": 0.1}, {},
         "eval.goals.g: min 0.9 is above max 0.1"),
        ({"metric": "eval/policy/distinct", "minimum": 0.9}, {},
         "eval.goals.g.minimum: unknown key (known: metric, min, max, relative_to)"),
        ({"max": 0.9}, {}, "eval.goals.g.metric: name the eval metric the goal checks"),
        ({"metric": "eval/policy/distinct", "min": "high"}, {},
         "eval.goals.g.min: must be a finite number or null, got 'high'"),
    ],
)  # fmt: skip
def test_bad_goals_are_refused_with_one_line_naming_the_goal(goal, overrides, message):
    with pytest.raises(ConfigError) as raised:
        EvalConfig(goals={"g": goal}, **overrides)
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_goal_name_with_a_slash_and_data_goals_without_answers_are_refused():
    with pytest.raises(ConfigError, match="eval.goals.a/b: a goal name must be non-empty"):
        EvalConfig(goals={"a/b": {"metric": "eval/policy/distinct", "min": 0.5}})
    config = EvalConfig(goals={"ref": {"metric": "eval/data_rude/distinct", "min": 0.5}})
    config.check_goals(has_answers=True)
    with pytest.raises(ConfigError, match=(
        "eval.goals.ref.metric: 'eval/data_rude/distinct' is measured only when the data has "
        "chosen answers, and this data has none"
    )):  # fmt: skip
        config.check_goals(has_answers=False)


def test_goals_compose_from_the_experiment_and_the_command_line(compose_config):
    names = ["judge_rude", "no_hacking", "top_phrase", "distinct", "fluency", "eos", "length"]
    assert list(typed_config(compose_config(["experiment=insult_ppo"])).eval.goals) == names
    config = typed_config(compose_config(["experiment=insult_ppo", "scale=quick", MAIN_GOALS]))
    assert list(config.eval.goals) == names
    assert config.eval.goals["length"] == GoalConfig(
        "eval/policy/length", 0.5, 2, "eval/baseline/length"
    )
    added = ["+eval.goals.short={metric:eval/policy/length,max:40}"]
    assert list(typed_config(compose_config(added)).eval.goals) == ["short"]
    assert typed_config(compose_config([])).eval.goals == {}
    # the judge off: its goal is refused, and dropped by name
    with pytest.raises(ConfigError, match="eval.goals.judge_rude.metric: .* only with eval.judge"):
        typed_config(compose_config(["experiment=insult_ppo", "eval.judge=null"]))
    dropped = ["experiment=insult_ppo", "eval.judge=null", "eval.goals.judge_rude=null"]
    assert list(typed_config(compose_config(dropped)).eval.goals) == names[1:]


def test_train_py_refuses_a_goal_on_a_metric_it_does_not_write(warm_train, tmp_path):
    bad = "eval.goals={rude:{metric:eval/policy/rudeness,min:0.9}}"
    result = warm_train(["stage=eval", "logger=none", bad], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert line.startswith("error: eval.goals.rude.metric: 'eval/policy/rudeness' is not an eval")
    assert not (tmp_path / "eval").exists()  # refused before the stage started
