"""`ppo.checkpoint`, `ppo.hacking_guard` and `ppo.health`: what keeps a PPO run safe to leave
alone: checkpoints and which one is handed on, the reward-versus-judge guard, training alarms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhf.schemas.fields import (
    AT_LEAST_ONE,
    FINITE,
    NON_NEGATIVE,
    POSITIVE,
    SHARE,
    Range,
    check_fields,
    one_of,
    require,
    setting,
)


@dataclass
class CheckpointConfig:
    """PPO checkpoints: `<stage>/checkpoints/update-NNNNNN/`, written whole or not at all, and
    which policy the stage hands on (rlhf/ppo/checkpoint.py)."""

    every: int = setting(
        10,
        "save every N updates and after the last; 0 = no checkpoints (the final model is still "
        "saved)",
        NON_NEGATIVE,
    )
    keep_last: int = setting(
        2, "newest checkpoints kept; older ones are pruned (the best is kept too)", AT_LEAST_ONE
    )
    best_metric: str | None = setting(
        "auto",
        "logged metric that picks the best checkpoint; auto: ppo/eval/judge_above_threshold when "
        "eval.judge is scored in PPO, else ppo/eval/score; null = off",
    )
    best_mode: str = setting(
        "max", "max or min: which direction of best_metric is better (ties: the earlier checkpoint)"
    )
    hand_on: str = setting(
        "best",
        "the policy saved as <stage>/model for later stages: best (the best checkpoint's) or last "
        "(the last update's)",
    )
    max_top_phrase_share: float | None = setting(
        None,
        "a checkpoint whose ppo/eval/top_phrase_share is above this can never be the best "
        "(collapse onto a phrase); null = off",
        SHARE,
    )

    section: ClassVar[str] = "ppo.checkpoint"
    AUTO: ClassVar[str] = "auto"
    EVAL_METRICS: ClassVar[tuple[str, ...]] = (
        "ppo/eval/score", "ppo/eval/length", "ppo/eval/eos_rate", "ppo/eval/distinct",
        "ppo/eval/above_threshold", "ppo/eval/top_phrase_share", "ppo/eval/judge_score",
        "ppo/eval/judge_above_threshold",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)
        one_of(self.best_mode, ("max", "min"), "ppo.checkpoint.best_mode")
        one_of(self.hand_on, ("best", "last"), "ppo.checkpoint.hand_on")
        metric = self.best_metric
        require(
            metric in (None, self.AUTO) or metric.startswith("ppo/"),
            "ppo.checkpoint.best_metric",
            f"{metric!r} is not a metric PPO logs (they start with ppo/; auto: the judge's or "
            "the reward's held-out score)",
        )
        if metric is not None and metric.startswith("ppo/eval/"):
            one_of(metric, self.EVAL_METRICS, "ppo.checkpoint.best_metric")
        require(
            self.every > 0 or self.hand_on == "last" or metric is None,
            "ppo.checkpoint.hand_on",
            "best hands on a saved checkpoint, and ppo.checkpoint.every=0 saves none; set "
            "ppo.checkpoint.every >= 1, hand_on=last or best_metric=null",
        )
        require(
            self.max_top_phrase_share is None or metric is not None,
            "ppo.checkpoint.max_top_phrase_share",
            "bounds which checkpoint can be the best, and ppo.checkpoint.best_metric is null",
        )

    def resolve_best_metric(self, judged: bool) -> None:
        """`auto` → the judge's share above its threshold when eval.judge is scored at PPO's
        evaluations (`judged`), else the reward's mean held-out score."""
        if self.best_metric == self.AUTO:
            self.best_metric = "ppo/eval/judge_above_threshold" if judged else "ppo/eval/score"


@dataclass
class HackingGuardConfig:
    """`ppo.hacking_guard`: acts when PPO's held-out evaluations find the reward and the judge
    (eval.judge) disagreeing: the share of answers above the reward's threshold minus the share
    above the judge's (`ppo/guard/gap`, the eval stage's rm_judge_gap) above `margin` at
    `patience` consecutive evaluations of trained policies (rlhf/ppo/guard.py)."""

    margin: float = setting(0.3, "an evaluation counts when ppo/guard/gap is above this", SHARE)
    patience: int = setting(
        2, "consecutive counted evaluations before the guard acts", AT_LEAST_ONE
    )
    action: str = setting(
        "stop", "stop: training ends (ppo.checkpoint.hand_on picks the model); raise_kl"
    )
    kl_factor: float = setting(
        2.0,
        "raise_kl: kl_coef is multiplied by this each time the guard acts",
        Range(1, low_open=True),
    )

    section: ClassVar[str] = "ppo.hacking_guard"

    def __post_init__(self) -> None:
        check_fields(self)
        one_of(self.action, ("stop", "raise_kl"), "ppo.hacking_guard.action")


@dataclass
class HealthConfig:
    """Training-health alarms (rlhf/ppo/health.py): each threshold null = off; an alarm is logged
    as `health/<name>` and a warning line, and stops the run when its name is in `stop_on`."""

    kl_max: float | None = setting(None, "ppo/objective/kl above this", FINITE)
    kl_min: float | None = setting(
        -1.0, "ppo/objective/kl below this: negative beyond noise", FINITE
    )
    entropy_min: float | None = setting(
        0.01, "ppo/policy/entropy (nats per token) below this: collapse", NON_NEGATIVE
    )
    eos_rate_min: float | None = setting(
        None, "share of answers that stopped at the stop token below this", SHARE
    )
    truncation_rate_max: float | None = setting(
        None, "share of answers cut at max_new_tokens above this", SHARE
    )
    ratio_max: float | None = setting(None, "ppo/policy/ratio_max above this", POSITIVE)
    distinct_min: float | None = setting(
        0.05, "distinct n-grams / all n-grams of a batch's responses below this", SHARE
    )
    distinct_n: int = setting(2, "n of those n-grams (response tokens)", AT_LEAST_ONE)
    top_phrase_max: float | None = setting(
        None,
        "share of a batch's answers holding its most frequent phrase "
        "(ppo/health/top_phrase_share) above this",
        SHARE,
    )
    length_corr_max: float | None = setting(
        0.9, "corr(score, length) above this while the mean score rises", Range(-1, 1)
    )
    length_drift_max: float | None = setting(
        2.0,
        "mean response length of the last trend_window updates over the first trend_window's "
        "outside [1/x, x]",
        Range(1, low_open=True),
    )
    trend_window: int = setting(5, 'updates over which "the score rises" is judged', Range(2))
    stop_on: list[str] = setting(
        list, "alarm names that stop the run, e.g. [kl_max, entropy_min]; the others warn"
    )

    ALARMS: ClassVar[tuple[str, ...]] = (
        "kl_max", "kl_min", "entropy_min", "eos_rate_min", "truncation_rate_max", "ratio_max",
        "distinct_min", "top_phrase_max", "length_corr_max", "length_drift_max",
    )  # fmt: skip

    section: ClassVar[str] = "ppo.health"

    def __post_init__(self) -> None:
        check_fields(self)
        for name in self.stop_on:
            one_of(name, self.ALARMS, "ppo.health.stop_on")
        require(self.distinct_n >= 1, "ppo.health.distinct_n", "must be >= 1")
        require(
            self.length_drift_max is None or self.length_drift_max > 1,
            "ppo.health.length_drift_max",
            f"must be > 1 (a ratio and its inverse bound the drift) when set, "
            f"got {self.length_drift_max}",
        )
        require(self.trend_window >= 2, "ppo.health.trend_window", "must be >= 2")
        require(
            self.kl_min is None or self.kl_max is None or self.kl_min < self.kl_max,
            "ppo.health.kl_min",
            f"{self.kl_min} is not below ppo.health.kl_max={self.kl_max}: every KL would alarm",
        )
