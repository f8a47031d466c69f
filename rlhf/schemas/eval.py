"""`eval`: the policy against the baseline on held-out prompts, the judge, the hacking checks and
the goals a run must meet."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from rlhf.schemas.fields import (
    AT_LEAST_ONE,
    FINITE,
    SHARE,
    Range,
    check_fields,
    require,
    setting,
    typed_section,
)
from rlhf.schemas.reward import JudgeConfig


@dataclass
class GoalConfig:
    """One goal of `eval.goals`: an eval metric within [min, max] (either bound may be left
    out), each bound multiplied by the value of the metric `relative_to` when that is set."""

    metric: str = setting("", "the eval metric checked, e.g. eval/policy/top_phrase_share")
    min: float | None = setting(
        None, "passed when the metric >= min (x relative_to); null: no lower bound"
    )
    max: float | None = setting(
        None, "passed when the metric <= max (x relative_to); null: no upper bound"
    )
    relative_to: str | None = setting(
        None, "eval metric the bounds are multiplied by; null: absolute"
    )


@dataclass
class EvalConfig:
    policy_model: str | None = setting(
        None, "model folder to evaluate (null: the pipeline's PPO model)"
    )
    baseline_model: str | None = setting(
        None, "model to compare with (null: the pipeline's SFT model)"
    )
    reward_model: str | None = setting(
        None, "RM scoring both (null: reward.model_path, else the run's RM)"
    )
    num_prompts: int = setting(
        100, "held-out prompts (test split) answered by both models", AT_LEAST_ONE
    )
    max_new_tokens: int = setting(48, "longest answer", AT_LEAST_ONE)
    do_sample: bool = setting(False, "greedy by default, so runs compare prompt by prompt")
    batch_size: int = setting(16, "prompts per generation batch", AT_LEAST_ONE)
    threshold: float | None = setting(
        None, "null: midpoint of the RM's mean chosen and mean rejected test scores", FINITE
    )
    collapse_distinct: float = setting(
        0.5, "share of distinct answers below which a policy has collapsed", SHARE
    )
    judge: Any = setting(None, "a reward config scored beside the RM (conf/eval/judge/); null: off")
    judge_threshold: float | None = setting(
        None,
        "judge score above which an answer counts; null: a judge RM's midpoint, else 0",
        FINITE,
    )
    judge_in_ppo: bool = setting(
        True,
        "with a judge: PPO's evaluations every ppo.eval_every updates score it too "
        "(ppo/eval/judge_*)",
    )
    hacking_margin: float | None = setting(
        0.3,
        '"reward hacking suspected" when the policy\'s RM share − judge share passes this, '
        "beyond the same gap on the data's preferred answers when measured; null: off",
        SHARE,
    )
    length_drift_factor: float | None = setting(
        2.0,
        '"reward hacking suspected" also when policy/baseline mean answer length leaves [1/f, f]; '
        "null: off",
        Range(1, low_open=True),
    )
    phrase_margin: float | None = setting(
        0.25,
        '"reward hacking suspected" also when the policy\'s top-phrase share '
        "(eval/<model>/top_phrase_share) − the baseline's passes this; null: off",
        SHARE,
    )
    fluency: bool = setting(
        True,
        "eval/<model>/fluency_nll: NLL per character of the answers under the run's untouched "
        "base model (loads it once more)",
    )
    goals: Any = setting(
        None,
        "name → {metric, min, max, relative_to}, checked when the stage ends (eval/goals/<name> = "
        "1 or 0, eval/goals_met); either bound may be left out, relative_to multiplies both by "
        "that metric; a goal set to null is dropped; null: none",
    )

    section: ClassVar[str] = "eval"
    DATA_ROW: ClassVar[str] = "data_rude"  # the data's chosen answers, measured as a reference
    # the metrics the eval stage writes → what each needs besides the two models: "judge"
    # (eval.judge), "fluency" (eval.fluency), "answers" (the data's chosen answers)
    RUN_METRICS: ClassVar[dict[str, tuple[str, ...]]] = {
        "threshold": (), "num_prompts": (), "win_rate": (), "kl": (), "length_ratio": (),
        "top_phrase_gap": (), "hacking_suspected": (), "judge_threshold": ("judge",),
        "judge_win_rate": ("judge",),
    }  # fmt: skip
    MODEL_METRICS: ClassVar[dict[str, tuple[str, ...]]] = {
        "score": (), "above_threshold": (), "length": (), "eos_rate": (), "distinct": (),
        "distinct_2": (), "collapsed": (), "top_phrase_share": (), "fluency_nll": ("fluency",),
        "judge_score": ("judge",), "judge_above_threshold": ("judge",),
        "rm_judge_gap": ("judge",),
    }  # fmt: skip
    DATA_METRICS: ClassVar[tuple[str, ...]] = (
        "score", "above_threshold", "length", "distinct", "distinct_2", "top_phrase_share",
        "fluency_nll", "judge_score", "judge_above_threshold", "rm_judge_gap",
    )  # fmt: skip

    def __post_init__(self) -> None:
        # typed here, not by the schema: OmegaConf cannot merge `eval.judge={...}` into a null
        # structured node, so the field is open and converted once
        if isinstance(self.judge, dict):
            self.judge = typed_section(self.judge, JudgeConfig)
        require(
            self.judge is None or isinstance(self.judge, JudgeConfig),
            "eval.judge",
            f"a reward config ({{kind: ..., ...}}) or null, got {self.judge!r}",
        )
        check_fields(self)
        require(
            self.hacking_margin is None or 0 <= self.hacking_margin <= 1,
            "eval.hacking_margin",
            f"must be in [0, 1] (a difference of two shares) when set, got {self.hacking_margin}",
        )
        require(
            self.length_drift_factor is None or self.length_drift_factor > 1,
            "eval.length_drift_factor",
            f"must be > 1 when set, got {self.length_drift_factor}",
        )
        # typed here, not by the schema, for the same reason as judge: `eval.goals={name: {...}}`
        # on the command line cannot merge into a typed mapping
        goals = {} if self.goals is None else self.goals
        require(isinstance(goals, dict), "eval.goals", f"a mapping name → goal, got {goals!r}")
        self.goals = {  # a goal set to null is dropped: eval.goals.<name>=null
            name: self._typed_goal(str(name), goal)
            for name, goal in goals.items()
            if goal is not None
        }
        self.check_goals(has_answers=True)  # the data's answers are known when the stage runs

    @classmethod
    def metric_needs(cls) -> dict[str, tuple[str, ...]]:
        """Every metric the eval stage can write → what it needs besides the two models."""
        needs = {f"eval/{name}": need for name, need in cls.RUN_METRICS.items()}
        for model in ("baseline", "policy"):
            needs.update({f"eval/{model}/{k}": need for k, need in cls.MODEL_METRICS.items()})
        for name in cls.DATA_METRICS:
            needs[f"eval/{cls.DATA_ROW}/{name}"] = ("answers", *cls.MODEL_METRICS[name])
        # the policy's RM-judge gap beyond the data's own (rlhf/stages/hacking.py)
        needs["eval/policy/rm_judge_excess"] = ("answers", "judge")
        return needs

    def check_goals(self, has_answers: bool) -> None:
        """Every goal's metric and relative_to is a metric this stage writes under this config
        (`has_answers`: the data has chosen answers); one line naming the goal otherwise."""
        needs = self.metric_needs()
        missing = {
            "judge": "only with eval.judge, which is not set",
            "fluency": "only with eval.fluency=true",
            "answers": "only when the data has chosen answers, and this data has none",
        }
        present = {"judge": self.judge is not None, "fluency": self.fluency, "answers": has_answers}
        for name, goal in self.goals.items():
            for field_name in ("metric", "relative_to"):
                metric = getattr(goal, field_name)
                if metric is None:
                    continue
                key = f"eval.goals.{name}.{field_name}"
                close = difflib.get_close_matches(metric, list(needs), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                require(metric in needs, key, f"{metric!r} is not an eval metric{hint}")
                for need in needs[metric]:
                    require(
                        present[need],
                        key,
                        f"{metric!r} is measured {missing[need]}; drop the goal with "
                        f"eval.goals.{name}=null",
                    )

    @staticmethod
    def _typed_goal(name: str, goal: Any) -> GoalConfig:
        key = f"eval.goals.{name}"
        require(
            bool(name) and "/" not in name and not any(c.isspace() for c in name),
            key,
            "a goal name must be non-empty, without '/' or spaces (it names eval/goals/<name>)",
        )
        if isinstance(goal, dict):
            goal = typed_section(goal, GoalConfig, key)
        require(
            isinstance(goal, GoalConfig),
            key,
            f"must be {{metric, min, max, relative_to}}, got {goal!r}",
        )
        require(bool(goal.metric), f"{key}.metric", "name the eval metric the goal checks")
        require(goal.min is not None or goal.max is not None, key, "set min, max or both")
        for bound in ("min", "max"):
            value = getattr(goal, bound)
            require(
                value is None or (isinstance(value, (int, float)) and math.isfinite(value)),
                f"{key}.{bound}",
                f"must be a finite number or null, got {value!r}",
            )
        if goal.min is not None and goal.max is not None:
            require(goal.min <= goal.max, key, f"min {goal.min:g} is above max {goal.max:g}")
        return goal
