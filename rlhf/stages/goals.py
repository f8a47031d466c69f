"""`eval.goals`: what an experiment states its policy must reach, checked on the eval stage's
metrics.

A goal (GoalConfig in rlhf/config.py) is one eval metric within [min, max], either bound left
out; with `relative_to` each bound is multiplied by that metric's value, so "the policy's judge
share at least 0.9 of the data's" is `{metric: eval/policy/judge_above_threshold, min: 0.9,
relative_to: eval/data_rude/judge_above_threshold}`. The config checks the metric names before
anything loads; a metric that was named but not measured in this run (NaN, or absent) fails its
goal. The eval stage writes `eval/goals/<name>` = 1 or 0 per goal and `eval/goals_met` = 1 when
all passed into its final metrics, `<eval stage folder>/goals.json` (one row per goal) and a
warning line per goal not met.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhf.config import GoalConfig

log = logging.getLogger(__name__)


@dataclass
class GoalResult:
    name: str
    metric: str
    value: float | None  # the metric's value; None: not measured in this run
    min: float | None  # the lower bound applied (times relative_to's value when set)
    max: float | None  # the upper bound applied
    relative_to: str | None
    relative_value: float | None  # relative_to's value; None when unset or not measured
    stated: str  # the goal as configured, e.g. ">= 0.9 x eval/data_rude/judge_above_threshold"
    passed: bool


def _measured(metrics: dict[str, float], name: str | None) -> float | None:
    value = metrics.get(name) if name is not None else None
    return None if value is None or not math.isfinite(value) else float(value)


def stated(goal: GoalConfig) -> str:
    """The bounds as written: '>= 0.5 x eval/baseline/length, <= 2 x eval/baseline/length'."""
    scale = f" x {goal.relative_to}" if goal.relative_to else ""
    parts = [f"{sign} {bound:g}{scale}" for sign, bound in ((">=", goal.min), ("<=", goal.max))
             if bound is not None]  # fmt: skip
    return ", ".join(parts)


def evaluate_goal(name: str, goal: GoalConfig, metrics: dict[str, float]) -> GoalResult:
    value = _measured(metrics, goal.metric)
    reference = _measured(metrics, goal.relative_to)
    scale = 1.0 if goal.relative_to is None else reference
    low = goal.min * scale if goal.min is not None and scale is not None else None
    high = goal.max * scale if goal.max is not None and scale is not None else None
    passed = (
        value is not None
        and scale is not None
        and (low is None or value >= low)
        and (high is None or value <= high)
    )
    return GoalResult(
        name, goal.metric, value, low, high, goal.relative_to, reference, stated(goal), passed
    )


def evaluate_goals(goals: dict[str, GoalConfig], metrics: dict[str, float]) -> list[GoalResult]:
    return [evaluate_goal(name, goal, metrics) for name, goal in goals.items()]


def goal_metrics(results: list[GoalResult]) -> dict[str, float]:
    """`eval/goals/<name>` = 1.0 / 0.0 and `eval/goals_met` (none when there are no goals)."""
    if not results:
        return {}
    metrics = {f"eval/goals/{r.name}": float(r.passed) for r in results}
    metrics["eval/goals_met"] = float(all(r.passed for r in results))
    return metrics


def describe(result: GoalResult) -> str:
    """One line: 'goal fluency not met: eval/policy/fluency_nll = 3.2, needs <= 2.9 (<= 1.25 x
    eval/data_rude/fluency_nll = 2.32)'."""
    if result.value is None:
        return f"goal {result.name} not met: {result.metric} was not measured in this run"
    if result.relative_to is not None and result.relative_value is None:
        return (
            f"goal {result.name} not met: {result.relative_to} (its relative_to) was not "
            "measured in this run"
        )
    needs = [f"{sign} {bound:.4g}" for sign, bound in ((">=", result.min), ("<=", result.max))
             if bound is not None]  # fmt: skip
    relative = f" = {result.relative_value:.4g}" if result.relative_value is not None else ""
    verdict = "met" if result.passed else "not met"
    return (
        f"goal {result.name} {verdict}: {result.metric} = {result.value:.4g}, needs "
        f"{' and '.join(needs)} ({result.stated}{relative})"
    )


def report_goals(
    goals: dict[str, GoalConfig], metrics: dict[str, float], path: Path | None
) -> dict[str, float]:
    """Evaluate the goals on `metrics`, warn once per goal not met, write `path` (goals.json;
    None: not written) and return the goal metrics."""
    results = evaluate_goals(goals, metrics)
    for result in results:
        if not result.passed:
            log.warning("eval: %s", describe(result))
    if results:
        met = sum(r.passed for r in results)
        log.info("eval: goals met: %d of %d", met, len(results))
    if path is not None and results:
        rows = [asdict(result) for result in results]
        path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return goal_metrics(results)
