"""`reward` (PPO's score) and `eval.judge` (a second measure scored beside it): a reward model, a
Python function, a classifier, a weighted sum or an ensemble of reward models."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from omegaconf import OmegaConf

from rlhf.schemas.fields import (
    FINITE,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    check_fields,
    one_of,
    require,
    setting,
    typed_section,
)


@dataclass
class RewardConfig:
    kind: str = setting("reward_model", "reward_model, function, classifier, weighted or ensemble")
    model_path: str | None = setting(
        None, "reward_model: folder of a trained RM (null: the rm stage's)"
    )
    function: Any = setting(
        None, "function: {_target_: module.fn, ...kwargs}; fn(prompts, completions)"
    )
    classifier: str | None = setting(None, "classifier: text-classification model id or folder")
    label: str | None = setting(None, "classifier: label whose score is the reward")
    use_logit: bool = setting(True, "classifier: reward = logit (true) or probability (false)")
    components: list[Any] = setting(list, "weighted: [{weight, <reward config>}]")
    members: list[str] = setting(list, "ensemble: RM folders or glob patterns")
    aggregate: str = setting("mean", "ensemble: mean, min (worst case) or mean_minus_std")
    std_coef: float = setting(
        1.0, "ensemble, mean_minus_std: score = mean − std_coef · std of members", NON_NEGATIVE
    )
    calibrate: bool = setting(
        False, "before PPO: gain and bias so the starting policy's scores are N(0, 1)"
    )
    calibrate_samples: int = setting(
        64, "answers of the starting policy scored for that calibration", Range(2)
    )
    scale: float = setting(1.0, "multiply raw scores by this", FINITE)
    normalize: bool = setting(False, "running mean/std normalisation of scores")
    clip: float | None = setting(None, "clip scores to [-clip, clip] after scaling", POSITIVE)

    section: ClassVar[str] = "reward"  # where this config sits, the prefix of its error keys
    KINDS: ClassVar[tuple[str, ...]] = (
        "reward_model", "function", "classifier", "weighted", "ensemble",
    )  # fmt: skip
    AGGREGATES: ClassVar[tuple[str, ...]] = ("mean", "min", "mean_minus_std")

    def __post_init__(self) -> None:
        key = self.section
        check_fields(self)
        require(self.scale != 0, f"{key}.scale", "must not be 0 (every score would be 0)")
        one_of(self.kind, self.KINDS, f"{key}.kind")
        if self.kind == "function":
            require(
                isinstance(self.function, dict) and "_target_" in self.function,
                f"{key}.function",
                "needs a _target_ naming a Python function",
            )
        if self.kind == "classifier":
            require(self.classifier is not None, f"{key}.classifier", "needs a model id or folder")
        if self.kind == "weighted":
            require(bool(self.components), f"{key}.components", "needs at least one component")
            self.weighted_parts()  # every component checked now, not when scoring starts
        if self.kind == "ensemble":
            require(
                bool(self.members),
                f"{key}.members",
                "needs at least one reward-model folder or glob pattern",
            )
            one_of(self.aggregate, self.AGGREGATES, f"{key}.aggregate")
        require(self.clip is None or self.clip > 0, f"{key}.clip", "must be > 0")

    def weighted_parts(self) -> list[tuple[float, RewardConfig]]:
        """(weight, config) of each of `components`, checked as configs of this class whose
        errors name `<section>.components[<i>].<key>`."""
        return [
            _component(spec, type(self), f"{self.section}.components[{index}]")
            for index, spec in enumerate(self.components)
        ]


@functools.cache
def _sectioned(base: type[RewardConfig], section: str) -> type[RewardConfig]:
    """`base` with its error keys under `section` (a weighted reward's component)."""
    return type(base.__name__, (base,), {"section": section})


def _component(spec: Any, base: type[RewardConfig], key: str) -> tuple[float, RewardConfig]:
    """A weighted reward's component `{weight, <reward config>}` → (weight, checked config)."""
    if OmegaConf.is_config(spec):
        spec = OmegaConf.to_container(spec)
    require(isinstance(spec, dict), key, f"a reward config with a weight, got {spec!r}")
    spec = dict(spec)
    weight = spec.pop("weight", 1.0)
    require(
        isinstance(weight, int | float) and not isinstance(weight, bool) and math.isfinite(weight),
        f"{key}.weight",
        f"must be a finite number, got {weight!r}",
    )
    return float(weight), typed_section(spec, _sectioned(base, key), also=("weight",))


@dataclass
class JudgeConfig(RewardConfig):
    """`eval.judge`: a second, independent measure of the goal, scored beside the training reward
    at evaluation (a rule-based judge, a classifier, another RM, a weighted sum: the fields of
    `reward`); the gold reward of an over-optimisation study. Scored raw: scale, normalize, clip
    and calibrate shape PPO's reward and are refused here."""

    section: ClassVar[str] = "eval.judge"

    def __post_init__(self) -> None:
        super().__post_init__()
        key = self.section
        require(
            self.kind != "reward_model" or self.model_path is not None,
            f"{key}.model_path",
            "set the folder of the reward model that judges (it must not be the PPO reward)",
        )
        raw = {"scale": 1.0, "normalize": False, "clip": None, "calibrate": False}
        for name, value in raw.items():
            require(
                getattr(self, name) == value,
                f"{key}.{name}",
                f"a judge is scored raw: {name} shapes PPO's reward only (leave it {value})",
            )
