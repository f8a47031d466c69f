"""Typed schemas behind every config group.

The YAML files in conf/ compose into these dataclasses (registered in Hydra's ConfigStore as
`rlhf_schema`), so an unknown key or a value of the wrong type fails during composition, before
any model loads. Values that are well-typed but impossible (a negative cliprange, a batch that
does not split into mini-batches) are rejected in `__post_init__`, which runs when train.py
converts the composed config into these objects once with `OmegaConf.to_object`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from rlhf.algorithms import ESTIMATORS, KL_ESTIMATORS, LOSS_AGGREGATIONS
from rlhf.chat_templates import CHAT_TEMPLATES
from rlhf.errors import ConfigError
from rlhf.stages.table import PIPELINE, POLICY, STAGES, producer, stages_to_run

DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
HOST_HEAPS = ("reuse", "system")  # rlhf/runtime/host_memory.py
HALF_DTYPES = ("bfloat16", "float16")
# transformers' SchedulerType names (tests/test_bad_inputs_more.py compares them with transformers)
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
    "warmup_stable_decay", "greedy",
)  # fmt: skip
MIXED_PRECISION = ("no", "bf16", "fp16")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _one_of(value: Any, choices: tuple, key: str) -> None:
    _require(value in choices, key, f"{value!r} is not one of {', '.join(map(str, choices))}")


@dataclass(frozen=True)
class Range:
    """The values a numeric field accepts (each element of a list field); always finite."""

    low: float | None = None  # None: unbounded below
    high: float | None = None  # None: unbounded above
    low_open: bool = False  # low itself is excluded
    high_open: bool = False  # high itself is excluded

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (
            value > self.high or (self.high_open and value == self.high)
        )

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            if self.low == self.high:
                return f"{_number(self.low)}"
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return "a finite number"


def _number(bound: float) -> str:
    return "2**32" if bound == SEED_LIMIT else f"{bound:g}"


SEED_LIMIT = 2**32  # set_seed seeds numpy, whose seeds are 0 <= seed < 2**32
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
SHARE = Range(0, 1)  # a share or probability: [0, 1]
FINITE = Range()
SEED = Range(0, SEED_LIMIT, high_open=True)


def _check_ranges(schema: Any) -> None:
    """Every field named in the schema's RANGES holds a value in its range (None is left to the
    type: Optional fields mean "off")."""
    for name, allowed in schema.RANGES.items():
        value = getattr(schema, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if item is None:
                continue
            _require(
                isinstance(item, (int, float)) and not isinstance(item, bool),
                _key(schema, name),
                f"must be a number, got {item!r}",
            )
            _require(
                allowed.contains(item),
                _key(schema, name),
                f"must be {allowed.describe()}, got {value!r}",
            )


def _key(schema: Any, name: str) -> str:
    """The dotted config key of a field (`section` is the schema's place in `Config`)."""
    return f"{schema.section}.{name}" if schema.section else name


@dataclass
class LoraSettings:
    enabled: bool = False  # train LoRA adapters instead of all weights
    r: int = 16  # rank of the adapter matrices
    alpha: int = 32  # scaling numerator: the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the adapter input
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"]
    )  # modules to adapt
    bias: str = "none"  # which biases to train: none, all, lora_only
    modules_to_save: list[str] | None = None  # extra modules trained in full (e.g. a score head)
    top_layers: int | None = None  # adapt the last N decoder layers only (faster backward)
    top_fraction: float | None = None  # or the top share of the layers (0.5: the upper half)

    section: ClassVar[str] = "model.lora"
    RANGES: ClassVar[dict[str, Range]] = {
        "r": AT_LEAST_ONE, "alpha": POSITIVE, "dropout": Range(0, 1, high_open=True),
        "top_layers": AT_LEAST_ONE, "top_fraction": Range(0, 1, low_open=True),
    }  # fmt: skip

    def __post_init__(self) -> None:
        _check_ranges(self)
        _require(
            self.top_layers is None or self.top_fraction is None,
            "model.lora.top_fraction",
            "set either top_layers (a count) or top_fraction (a share), not both",
        )
        _one_of(self.bias, ("none", "all", "lora_only"), "model.lora.bias")
        _require(bool(self.target_modules), "model.lora.target_modules", "name at least one module")


@dataclass
class TinyModelSpec:
    """Shape of the random-init model built offline when `name_or_path: tiny`."""

    architecture: str = "llama"  # llama (the only one built offline)
    hidden_size: int = 64  # width of the residual stream
    intermediate_size: int = 128  # width of the MLP
    num_layers: int = 2  # transformer blocks
    num_heads: int = 4  # attention heads
    max_positions: int = 512  # longest sequence the model accepts
    pad_equals_eos: bool = False  # share one token for pad and EOS, as SmolLM2 does
    corpus_files: list[str] = field(
        default_factory=lambda: ["experiments/insult_ppo/data/train.jsonl"]
    )  # text whose characters get their own token (others fall back to bytes)
    seed: int = 0  # seed of the random weights

    section: ClassVar[str] = "model.tiny"
    RANGES: ClassVar[dict[str, Range]] = {
        "hidden_size": AT_LEAST_ONE, "intermediate_size": AT_LEAST_ONE, "num_layers": AT_LEAST_ONE,
        "num_heads": AT_LEAST_ONE, "max_positions": AT_LEAST_ONE, "seed": SEED,
    }  # fmt: skip

    def __post_init__(self) -> None:
        _check_ranges(self)
        _one_of(self.architecture, ("llama",), "model.tiny.architecture")
        _require(
            self.hidden_size % self.num_heads == 0,
            "model.tiny.hidden_size",
            f"{self.hidden_size} does not split into model.tiny.num_heads={self.num_heads} heads",
        )


@dataclass
class ModelConfig:
    name_or_path: str = "tiny"  # hub id, local folder, or "tiny" (random init, offline)
    revision: str | None = None  # hub revision (branch, tag or commit)
    gguf_file: str | None = None  # load this GGUF file (path, or "<python package>:<file>")
    gguf_fallback: str | None = None  # GGUF file to convert when the hub is unreachable
    chat_template: str | None = (
        None  # ours by name (chatml, gemma, gemma_base) in place of the file's
    )
    eos_token: str | None = None  # the token that ends an answer (e.g. <end_of_turn>); null: EOS
    dtype: str = "float32"  # weights: auto, float32, bfloat16, float16, float64 (exactness tests)
    trust_remote_code: bool = False  # run modelling code shipped with a hub model
    mixed_precision: str = "no"  # autocast compute in every training stage: no, bf16, fp16
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    lora: LoraSettings = field(default_factory=LoraSettings)  # parameter-efficient training
    tiny: TinyModelSpec = field(default_factory=TinyModelSpec)  # used only for "tiny"

    def pointing_to(self, name_or_path: str) -> ModelConfig:
        """These settings for another model (a stage's output folder, a critic or reference):
        the GGUF file, GGUF fallback and hub revision belong to this model, not to that one.
        Pointed at its own name (a critic from the policy's start) it keeps them."""
        if name_or_path == self.name_or_path:
            return self
        return dataclasses.replace(
            self, name_or_path=name_or_path, gguf_file=None, gguf_fallback=None, revision=None
        )

    def __post_init__(self) -> None:
        _one_of(self.dtype, DTYPES, "model.dtype")
        _one_of(self.mixed_precision, MIXED_PRECISION, "model.mixed_precision")
        _require(bool(self.name_or_path), "model.name_or_path", "must not be empty")
        if self.chat_template is not None:
            _one_of(self.chat_template, tuple(CHAT_TEMPLATES), "model.chat_template")


@dataclass
class ColumnMap:
    prompt: str = "prompt"  # source column holding the user question
    chosen: str | None = "chosen"  # column of the preferred answer; null for prompt-only data
    rejected: str | None = "rejected"  # column of the dispreferred answer; null if none


@dataclass
class DataConfig:
    name: str = "custom"  # short name, used in run names and reports
    train_file: str | None = None  # local json/jsonl/csv/parquet (relative to the project root)
    test_file: str | None = None  # local held-out file; split off train when null
    hub_id: str | None = None  # hub data set id, used when train_file is null
    hub_train_split: str = "train"  # split of the hub data set used for training
    hub_test_split: str | None = None  # split used for testing; split off train when null
    test_size: float = 0.1  # share of train split off for testing when there is no test file
    columns: ColumnMap = field(default_factory=ColumnMap)  # source column names
    system_prompt: str | None = None  # optional system message before every prompt
    max_prompt_length: int = 128  # tokens of the chat-formatted prompt
    max_completion_length: int = 128  # tokens of an answer
    overlong: str = "drop"  # what to do with rows over a limit: drop or truncate
    seed: int = 0  # seed for shuffling and splitting

    section: ClassVar[str] = "data"
    RANGES: ClassVar[dict[str, Range]] = {
        "test_size": Range(0, 1, low_open=True, high_open=True),
        "max_prompt_length": AT_LEAST_ONE, "max_completion_length": AT_LEAST_ONE, "seed": SEED,
    }  # fmt: skip

    def __post_init__(self) -> None:
        _check_ranges(self)
        _require(
            self.train_file is not None or self.hub_id is not None,
            "data.train_file",
            "set a local file or data.hub_id",
        )
        _one_of(self.overlong, ("drop", "truncate"), "data.overlong")
        columns = [c for c in dataclasses.astuple(self.columns) if c is not None]
        _require(
            len(set(columns)) == len(columns),
            "data.columns",
            f"prompt, chosen and rejected must be different columns, got {columns}",
        )


@dataclass
class RewardConfig:
    kind: str = "reward_model"  # reward_model, function, classifier, weighted or ensemble
    model_path: str | None = None  # reward_model: folder of a trained RM (null: the rm stage's)
    function: Any = None  # function: {_target_: module.fn, ...kwargs}; fn(prompts, completions)
    classifier: str | None = None  # classifier: text-classification model id or folder
    label: str | None = None  # classifier: label whose score is the reward
    use_logit: bool = True  # classifier: reward = logit (true) or probability (false)
    components: list[Any] = field(default_factory=list)  # weighted: [{weight, <reward config>}]
    members: list[str] = field(default_factory=list)  # ensemble: RM folders or glob patterns
    aggregate: str = "mean"  # ensemble: mean, min (worst case) or mean_minus_std
    std_coef: float = 1.0  # ensemble, mean_minus_std: score = mean − std_coef · std of members
    calibrate: bool = False  # before PPO: gain and bias so the starting policy's scores are N(0, 1)
    calibrate_samples: int = 64  # answers of the starting policy scored for that calibration
    scale: float = 1.0  # multiply raw scores by this
    normalize: bool = False  # running mean/std normalisation of scores
    clip: float | None = None  # clip scores to [-clip, clip] after scaling

    section: ClassVar[str] = "reward"  # where this config sits, the prefix of its error keys
    KINDS: ClassVar[tuple[str, ...]] = (
        "reward_model", "function", "classifier", "weighted", "ensemble",
    )  # fmt: skip
    AGGREGATES: ClassVar[tuple[str, ...]] = ("mean", "min", "mean_minus_std")
    RANGES: ClassVar[dict[str, Range]] = {
        # a mean and a standard deviation need two scores
        "calibrate_samples": Range(2), "scale": FINITE, "clip": POSITIVE,
        "std_coef": NON_NEGATIVE,
    }  # fmt: skip

    def __post_init__(self) -> None:
        key = self.section
        _check_ranges(self)
        _require(self.scale != 0, f"{key}.scale", "must not be 0 (every score would be 0)")
        _one_of(self.kind, self.KINDS, f"{key}.kind")
        if self.kind == "function":
            _require(
                isinstance(self.function, dict) and "_target_" in self.function,
                f"{key}.function",
                "needs a _target_ naming a Python function",
            )
        if self.kind == "classifier":
            _require(self.classifier is not None, f"{key}.classifier", "needs a model id or folder")
        if self.kind == "weighted":
            _require(bool(self.components), f"{key}.components", "needs at least one component")
            self.weighted_parts()  # every component checked now, not when scoring starts
        if self.kind == "ensemble":
            _require(
                bool(self.members),
                f"{key}.members",
                "needs at least one reward-model folder or glob pattern",
            )
            _one_of(self.aggregate, self.AGGREGATES, f"{key}.aggregate")
        _require(self.clip is None or self.clip > 0, f"{key}.clip", "must be > 0")

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
    _require(isinstance(spec, dict), key, f"a reward config with a weight, got {spec!r}")
    spec = dict(spec)
    weight = spec.pop("weight", 1.0)
    _require(
        isinstance(weight, int | float) and not isinstance(weight, bool) and math.isfinite(weight),
        f"{key}.weight",
        f"must be a finite number, got {weight!r}",
    )
    return float(weight), _typed_section(spec, _sectioned(base, key), also=("weight",))


def _typed_section(
    spec: dict, config_class: type, key: str | None = None, also: tuple[str, ...] = ()
) -> Any:
    """`spec` (a mapping from YAML or the command line) as a `config_class`, every key known
    (named as `<key>.<name>` in the error when not; `key` defaults to the class's section;
    `also`: keys the caller took out first)."""
    key = key or config_class.section
    known = [f.name for f in dataclasses.fields(config_class)]
    for name in spec:
        _require(
            name in known,
            f"{key}.{name}",
            f"unknown key (known: {', '.join(known + list(also))})",
        )
    return config_class(**spec)


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
        _require(
            self.kind != "reward_model" or self.model_path is not None,
            f"{key}.model_path",
            "set the folder of the reward model that judges (it must not be the PPO reward)",
        )
        raw = {"scale": 1.0, "normalize": False, "clip": None, "calibrate": False}
        for name, value in raw.items():
            _require(
                getattr(self, name) == value,
                f"{key}.{name}",
                f"a judge is scored raw: {name} shapes PPO's reward only (leave it {value})",
            )


@dataclass
class CheckpointConfig:
    """PPO checkpoints: `<stage>/checkpoints/update-NNNNNN/`, written whole or not at all, and
    which policy the stage hands on (rlhf/ppo/checkpoint.py)."""

    every: int = (
        10  # save every N updates and after the last; 0 = no checkpoints (model still saved)
    )
    keep_last: int = 2  # newest checkpoints kept; older ones are pruned (the best is kept too)
    best_metric: str | None = "auto"  # picks the best; auto: judge's share or RM score; null: off
    best_mode: str = "max"  # max or min: which direction of best_metric is better
    hand_on: str = "best"  # the policy saved for later stages: best (checkpoint) or last (update)
    max_top_phrase_share: float | None = None  # above it (ppo/eval/top_phrase_share): never best

    section: ClassVar[str] = "ppo.checkpoint"
    AUTO: ClassVar[str] = "auto"
    RANGES: ClassVar[dict[str, Range]] = {
        "every": NON_NEGATIVE, "keep_last": AT_LEAST_ONE, "max_top_phrase_share": SHARE,
    }  # fmt: skip
    EVAL_METRICS: ClassVar[tuple[str, ...]] = (
        "ppo/eval/score", "ppo/eval/length", "ppo/eval/eos_rate", "ppo/eval/distinct",
        "ppo/eval/above_threshold", "ppo/eval/top_phrase_share", "ppo/eval/judge_score",
        "ppo/eval/judge_above_threshold",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _check_ranges(self)
        _one_of(self.best_mode, ("max", "min"), "ppo.checkpoint.best_mode")
        _one_of(self.hand_on, ("best", "last"), "ppo.checkpoint.hand_on")
        metric = self.best_metric
        _require(
            metric in (None, self.AUTO) or metric.startswith("ppo/"),
            "ppo.checkpoint.best_metric",
            f"{metric!r} is not a metric PPO logs (they start with ppo/; auto: the judge's or "
            "the reward's held-out score)",
        )
        if metric is not None and metric.startswith("ppo/eval/"):
            _one_of(metric, self.EVAL_METRICS, "ppo.checkpoint.best_metric")
        _require(
            self.every > 0 or self.hand_on == "last" or metric is None,
            "ppo.checkpoint.hand_on",
            "best hands on a saved checkpoint, and ppo.checkpoint.every=0 saves none; set "
            "ppo.checkpoint.every >= 1, hand_on=last or best_metric=null",
        )
        _require(
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

    margin: float = 0.3  # an evaluation counts when ppo/guard/gap is above this
    patience: int = 2  # consecutive counted evaluations before the guard acts
    action: str = "stop"  # stop: training ends (ppo.checkpoint.hand_on picks the model); raise_kl
    kl_factor: float = 2.0  # raise_kl: kl_coef is multiplied by this each time the guard acts

    section: ClassVar[str] = "ppo.hacking_guard"
    RANGES: ClassVar[dict[str, Range]] = {
        "margin": SHARE, "patience": AT_LEAST_ONE, "kl_factor": Range(1, low_open=True),
    }  # fmt: skip

    def __post_init__(self) -> None:
        _check_ranges(self)
        _one_of(self.action, ("stop", "raise_kl"), "ppo.hacking_guard.action")


@dataclass
class HealthConfig:
    """Training-health alarms (rlhf/ppo/health.py): each threshold null = off; an alarm is logged
    as `health/<name>` and a warning line, and stops the run when its name is in `stop_on`."""

    kl_max: float | None = None  # ppo/objective/kl above this
    kl_min: float | None = -1.0  # ppo/objective/kl below this: negative beyond noise
    entropy_min: float | None = 0.01  # ppo/policy/entropy (nats per token) below this: collapse
    eos_rate_min: float | None = None  # share of answers that stopped at the stop token below this
    truncation_rate_max: float | None = None  # share of answers cut at max_new_tokens above this
    ratio_max: float | None = None  # ppo/policy/ratio_max above this
    distinct_min: float | None = 0.05  # distinct n-grams / all n-grams of a batch below this
    distinct_n: int = 2  # n of those n-grams (response tokens)
    top_phrase_max: float | None = None  # share of a batch's answers with its top phrase above
    length_corr_max: float | None = 0.9  # corr(score, length) above this while the score rises
    length_drift_max: float | None = 2.0  # last/first trend_window updates' length outside [1/x, x]
    trend_window: int = 5  # updates over which "the score rises" is judged
    stop_on: list[str] = field(default_factory=list)  # alarms that stop the run (others warn)

    ALARMS: ClassVar[tuple[str, ...]] = (
        "kl_max", "kl_min", "entropy_min", "eos_rate_min", "truncation_rate_max", "ratio_max",
        "distinct_min", "top_phrase_max", "length_corr_max", "length_drift_max",
    )  # fmt: skip

    section: ClassVar[str] = "ppo.health"
    RANGES: ClassVar[dict[str, Range]] = {
        "kl_max": FINITE, "kl_min": FINITE, "entropy_min": NON_NEGATIVE, "eos_rate_min": SHARE,
        "truncation_rate_max": SHARE, "ratio_max": POSITIVE, "distinct_min": SHARE,
        "distinct_n": AT_LEAST_ONE, "length_corr_max": Range(-1, 1), "trend_window": Range(2),
        "top_phrase_max": SHARE,
        "length_drift_max": Range(1, low_open=True),  # a ratio and its inverse bound the drift
    }  # fmt: skip

    def __post_init__(self) -> None:
        _check_ranges(self)
        for name in self.stop_on:
            _one_of(name, self.ALARMS, "ppo.health.stop_on")
        _require(self.distinct_n >= 1, "ppo.health.distinct_n", "must be >= 1")
        _require(
            self.length_drift_max is None or self.length_drift_max > 1,
            "ppo.health.length_drift_max",
            f"must be > 1 (a ratio and its inverse bound the drift) when set, "
            f"got {self.length_drift_max}",
        )
        _require(self.trend_window >= 2, "ppo.health.trend_window", "must be >= 2")
        _require(
            self.kl_min is None or self.kl_max is None or self.kl_min < self.kl_max,
            "ppo.health.kl_min",
            f"{self.kl_min} is not below ppo.health.kl_max={self.kl_max}: every KL would alarm",
        )


CRITICS = ("separate", "value_head", "lora", "none")


def algorithm_name(stage: str, pipeline_stages: list[str], advantage_estimator: str) -> str:
    """What trains the run's policy, for grouping and comparing runs: the stage producing the
    policy (for `pipeline` and `eval`: the last of `pipeline.stages` producing one, as eval
    judges it); for that stage `ppo`, PPO's estimator (`ppo` for GAE, else its name)."""
    trainer = stage
    if stage in (PIPELINE, "eval"):
        trainer = producer(POLICY, pipeline_stages).name
    if trainer == "ppo":
        return "ppo" if advantage_estimator == "gae" else advantage_estimator
    return trainer


def recorded_algorithm(config: dict[str, Any]) -> str | None:
    """`algorithm_name` of a composed config read back as plain data (a sweep job's
    `.hydra/config.yaml`); None where it lacks the keys (a run from before the estimators)."""
    try:
        stage, stages = config["stage"], config["pipeline"]["stages"]
        return algorithm_name(stage, stages, config["ppo"]["advantage_estimator"])
    except (KeyError, TypeError):
        return None


@dataclass
class PPOConfig:
    # --- rollout ---
    batch_size: int = 8  # prompts per update
    samples_per_prompt: int = 1  # responses sampled for each prompt
    max_new_tokens: int = 32  # longest response
    min_new_tokens: int = 0  # shortest response (EOS suppressed before)
    temperature: float = 1.0  # sampling temperature
    top_k: int = 0  # must stay 0: PPO trains the distribution it samples from, untruncated
    top_p: float = 1.0  # must stay 1.0, for the same reason
    stop_token: str | None = None  # stop at this token instead of EOS
    length_sampler: list[int] | None = None  # [min, max] new tokens sampled per batch
    missing_eos_penalty: float | None = None  # subtracted from the score of unfinished answers
    overlong_buffer: int | None = None  # last N tokens before max_new_tokens are penalised
    overlong_penalty: float = 1.0  # penalty reached at max_new_tokens (linear over the buffer)
    # --- reward shaping ---
    kl_coef: float = 0.05  # beta: weight of the per-token KL penalty
    kl_estimator: str = "k1"  # estimator in the penalty: k1, k2, k3, abs, full (exact, from logits)
    adaptive_kl: bool = False  # adapt beta towards kl_target (Ziegler et al. 2019)
    kl_target: float = 6.0  # adaptive controller: target KL per sequence
    kl_horizon: int = 10000  # adaptive controller: horizon in samples
    kl_in: str = "reward"  # where the KL goes: reward (per-token penalty) or loss (GRPO-style)
    whiten_rewards: bool = False  # whiten per-token rewards before the advantage estimator
    # --- advantages ---
    advantage_estimator: str = (
        "gae"  # gae, grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline
    )
    gamma: float = 1.0  # discount (GAE, REINFORCE++)
    lam: float = 0.95  # GAE lambda
    whiten_advantages: bool | None = None  # whiten advantages per batch; null: the estimator's own
    drop_uniform_groups: bool = False  # leave groups whose scores are all equal out of the loss
    # --- update ---
    ppo_epochs: int = 4  # passes over each batch
    mini_batch_size: int = 2  # samples per forward/backward pass (micro-batch)
    gradient_accumulation_steps: int = 1  # mini-batches per optimiser step
    learning_rate: float = 1.41e-5  # AdamW learning rate of the policy
    critic_learning_rate: float | None = (
        None  # AdamW learning rate of the critic; null = learning_rate
    )
    lr_scheduler: str = "constant"  # constant or linear (decay to 0 over total_updates, per update)
    max_grad_norm: float | None = (
        1.0  # clip policy and critic gradient norms, each on its own; null = off
    )
    shard_optimizer: bool = False  # ZeRO-1: each of N processes keeps 1/N of AdamW's moments
    shard_reference: bool = False  # FSDP2 launch: shard the frozen reference too (else whole)
    cliprange: float = 0.2  # epsilon of the clipped policy objective
    cliprange_low: float | None = None  # lower epsilon; null = cliprange
    cliprange_high: float | None = None  # upper epsilon; null = cliprange
    dual_clip: float | None = None  # dual-clip constant c > 1 for negative advantages
    cliprange_value: float = 0.2  # clip of the value update around the old values
    vf_coef: float = 0.1  # weight of the value loss
    entropy_coef: float = 0.0  # weight of the entropy bonus
    loss_aggregation: str | None = None  # token_mean, seq_mean_token_*; null: the estimator's own
    target_kl: float | None = None  # stop an update's epochs once approx-KL (k3) passes this
    ratio_threshold: float = 10.0  # skip a mini-batch whose mean ratio passes this
    critic_warmup_updates: int = 0  # updates that train only the critic
    # --- models ---
    critic: str | None = None  # separate, value_head, lora or none; null: the estimator's own
    critic_init: str | None = None  # separate critic from: reward_model or policy; null = RM if any
    critic_model: str | None = None  # folder for a separate critic (null: as critic_init says)
    reference_model: str | None = None  # separate reference (null: policy start / adapters off)
    # --- run ---
    total_updates: int = 20  # PPO updates to run
    eval_every: int = 5  # evaluate on held-out prompts every N updates (and before the first)
    eval_prompts: int = 16  # held-out prompts used for evaluation
    eval_do_sample: bool = False  # sample at evaluation (false: greedy, comparable across runs)
    log_samples_every: int = 5  # sample table every N updates
    seed: int = 0  # seed of sampling and shuffling
    # --- reliability ---
    on_nonfinite: str = "stop"  # non-finite score/advantage/loss/grad norm: stop, or skip the batch
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # saving and resuming
    health: HealthConfig = field(default_factory=HealthConfig)  # warn/stop thresholds
    hacking_guard: Any = None  # reward-vs-judge guard: {margin, patience, action, ...}; null: off

    section: ClassVar[str] = "ppo"
    RANGES: ClassVar[dict[str, Range]] = {
        "batch_size": AT_LEAST_ONE, "samples_per_prompt": AT_LEAST_ONE,
        "max_new_tokens": AT_LEAST_ONE, "min_new_tokens": NON_NEGATIVE, "temperature": POSITIVE,
        "top_k": Range(0, 0), "top_p": Range(1, 1), "length_sampler": AT_LEAST_ONE,
        "missing_eos_penalty": NON_NEGATIVE, "overlong_buffer": AT_LEAST_ONE,
        "overlong_penalty": NON_NEGATIVE, "kl_coef": NON_NEGATIVE, "kl_target": POSITIVE,
        "kl_horizon": AT_LEAST_ONE, "gamma": SHARE, "lam": SHARE, "ppo_epochs": AT_LEAST_ONE,
        "mini_batch_size": AT_LEAST_ONE, "gradient_accumulation_steps": AT_LEAST_ONE,
        "learning_rate": POSITIVE, "critic_learning_rate": POSITIVE, "max_grad_norm": POSITIVE,
        "cliprange": POSITIVE, "cliprange_low": Range(0, 1, low_open=True, high_open=True),
        "cliprange_high": POSITIVE, "dual_clip": Range(1, low_open=True),
        "cliprange_value": POSITIVE, "vf_coef": NON_NEGATIVE, "entropy_coef": NON_NEGATIVE,
        "target_kl": NON_NEGATIVE, "ratio_threshold": Range(1, low_open=True),
        "critic_warmup_updates": NON_NEGATIVE, "total_updates": AT_LEAST_ONE,
        "eval_every": NON_NEGATIVE, "eval_prompts": AT_LEAST_ONE,
        "log_samples_every": NON_NEGATIVE, "seed": SEED,
    }  # fmt: skip

    def __post_init__(self) -> None:
        for key, off in (("top_k", 0), ("top_p", 1.0)):
            _require(
                getattr(self, key) == off,
                f"ppo.{key}",
                f"must be {off} for training: truncated sampling is not the distribution whose "
                "log-probs PPO trains (use ppo.temperature to sharpen sampling)",
            )
        _check_ranges(self)
        self._check_lengths()
        _require(
            self.cliprange_low is not None or self.cliprange < 1,
            "ppo.cliprange",
            f"{self.cliprange} leaves no lower clip (1 - cliprange <= 0); keep it below 1 or set "
            "ppo.cliprange_low",
        )
        _require(
            self.critic_warmup_updates < self.total_updates,
            "ppo.critic_warmup_updates",
            f"{self.critic_warmup_updates} warm-up updates leave none of ppo.total_updates="
            f"{self.total_updates} to train the policy",
        )
        rollout = self.batch_size * self.samples_per_prompt
        step = self.mini_batch_size * self.gradient_accumulation_steps
        _require(
            rollout % step == 0,
            "ppo.batch_size",
            f"batch_size × samples_per_prompt ({rollout}) is not divisible by "
            f"mini_batch_size × gradient_accumulation_steps ({step})",
        )
        _one_of(self.on_nonfinite, ("stop", "skip"), "ppo.on_nonfinite")
        _one_of(self.kl_estimator, tuple(KL_ESTIMATORS), "ppo.kl_estimator")
        _one_of(self.lr_scheduler, ("constant", "linear"), "ppo.lr_scheduler")
        if self.critic_init is not None:
            _one_of(self.critic_init, ("reward_model", "policy"), "ppo.critic_init")
        _require(self.stop_token != "", "ppo.stop_token", "must not be empty (null: EOS)")
        self._typed_guard()
        _require(
            self.hacking_guard is None or self.eval_every > 0,
            "ppo.hacking_guard",
            "acts on held-out evaluations, and ppo.eval_every=0 runs none; set eval_every >= 1",
        )
        self._check_estimator()

    def _typed_guard(self) -> None:
        """`hacking_guard` as a HackingGuardConfig (an open field, typed here: OmegaConf cannot
        merge `ppo.hacking_guard={...}` into a null structured node, as for eval.judge)."""
        guard = self.hacking_guard
        if isinstance(guard, dict):
            guard = self.hacking_guard = _typed_section(guard, HackingGuardConfig)
        _require(
            guard is None or isinstance(guard, HackingGuardConfig),
            "ppo.hacking_guard",
            f"{{margin, patience, action, kl_factor}} or null, got {guard!r}",
        )

    def check_judge(self, judged: bool) -> None:
        """What reads the judge's held-out scores needs eval.judge scored at PPO's evaluations
        (`judged`): the hacking guard, a judge best_metric. Resolves best_metric=auto."""
        self.checkpoint.resolve_best_metric(judged)
        needs = "needs eval.judge scored in PPO (set eval.judge and eval.judge_in_ppo=true)"
        _require(
            judged or self.hacking_guard is None,
            "ppo.hacking_guard",
            f"compares the reward with the judge: {needs}",
        )
        metric = self.checkpoint.best_metric or ""
        _require(
            judged or not metric.startswith("ppo/eval/judge_"),
            "ppo.checkpoint.best_metric",
            f"{metric!r} {needs}",
        )

    def _check_estimator(self) -> None:
        """The estimator, and the settings that follow it when null (resolved here, once, so the
        record and every reader see the value the run uses)."""
        _one_of(self.advantage_estimator, tuple(ESTIMATORS), "ppo.advantage_estimator")
        own = ESTIMATORS[self.advantage_estimator]
        if self.critic is None:
            self.critic = own.critic
        if self.whiten_advantages is None:
            self.whiten_advantages = own.whiten_advantages
        if self.loss_aggregation is None:
            self.loss_aggregation = own.loss_aggregation
        _one_of(self.loss_aggregation, tuple(LOSS_AGGREGATIONS), "ppo.loss_aggregation")
        _one_of(self.critic, CRITICS, "ppo.critic")
        name = self.advantage_estimator
        if own.critic == "none":
            _require(
                self.critic == "none",
                "ppo.critic",
                f"{name} uses no critic (its baseline is not a value model); leave ppo.critic "
                "null or set it to none",
            )
        else:
            _require(
                self.critic != "none",
                "ppo.critic",
                f"{name} needs a critic for its values (separate, value_head or lora); without "
                "one choose a critic-free ppo.advantage_estimator (grpo, rloo, reinforce_pp, ...)",
            )
        for needed, what in (
            (own.needs_groups, name),
            (self.drop_uniform_groups, "drop_uniform_groups"),
        ):
            _require(
                not needed or self.samples_per_prompt >= 2,
                "ppo.samples_per_prompt",
                f"{what} compares the answers to one prompt: needs samples_per_prompt >= 2, got "
                f"{self.samples_per_prompt}",
            )
        _require(
            self.critic != "none" or self.critic_warmup_updates == 0,
            "ppo.critic_warmup_updates",
            "trains only the critic, and there is none (ppo.critic=none): set it to 0",
        )
        _one_of(self.kl_in, ("reward", "loss"), "ppo.kl_in")
        _require(
            self.kl_in == "reward" or KL_ESTIMATORS[self.kl_estimator].loss_gradient,
            "ppo.kl_estimator",
            f"{self.kl_estimator!r} with ppo.kl_in=loss: use k3 (GRPO's) or k2; the gradient of "
            "k1 as a loss is zero in expectation, and the exact KL needs the reference's logits",
        )

    def _check_lengths(self) -> None:
        """Answer lengths: the shortest below the longest, a [min, max] sampler in order."""
        _require(
            self.min_new_tokens <= self.max_new_tokens,
            "ppo.min_new_tokens",
            f"{self.min_new_tokens} is above ppo.max_new_tokens={self.max_new_tokens}",
        )
        _require(
            self.overlong_buffer is None or self.overlong_buffer <= self.max_new_tokens,
            "ppo.overlong_buffer",
            f"{self.overlong_buffer} is longer than ppo.max_new_tokens={self.max_new_tokens}",
        )
        sampler = self.length_sampler
        if sampler is None:
            return
        _require(
            len(sampler) == 2, "ppo.length_sampler", f"must be [min, max], got {list(sampler)}"
        )
        _require(
            sampler[0] <= sampler[1],
            "ppo.length_sampler",
            f"[min, max] is reversed: {list(sampler)}",
        )
        _require(
            self.min_new_tokens <= sampler[0],
            "ppo.min_new_tokens",
            f"{self.min_new_tokens} is above the shortest limit ppo.length_sampler draws "
            f"({sampler[0]})",
        )


@dataclass
class TrainerStageConfig:
    """Hyper-parameters shared by the TRL-backed stages (passed to SFTConfig / RewardConfig)."""

    learning_rate: float = 2e-4  # AdamW peak learning rate
    num_train_epochs: float = 1.0  # passes over the training rows
    max_steps: int = -1  # stop after this many optimiser steps; -1 = use epochs
    per_device_train_batch_size: int = 8  # rows per device per step
    per_device_eval_batch_size: int = 16  # rows per device when evaluating
    gradient_accumulation_steps: int = 1  # micro-batches per optimiser step
    lr_scheduler_type: str = "linear"  # transformers scheduler name
    warmup_steps: float = 0.0  # warm-up optimiser steps, or a share of all steps when < 1
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # clip the gradient norm to this; 0 = off
    logging_steps: int = 5  # log every N optimiser steps
    max_train_samples: int | None = None  # use only the first N (shuffled) training rows
    max_eval_samples: int | None = None  # evaluate on N (shuffled) test rows; null = all
    seed: int = 42  # seed of data order and head initialisation
    save_steps: int | None = None  # TRL checkpoint every N optimiser steps (for resume); null = off
    save_total_limit: int = 2  # newest TRL checkpoints kept

    section: ClassVar[str] = "stage"
    RANGES: ClassVar[dict[str, Range]] = {
        "learning_rate": POSITIVE, "num_train_epochs": POSITIVE, "max_steps": Range(-1),
        "per_device_train_batch_size": AT_LEAST_ONE, "per_device_eval_batch_size": AT_LEAST_ONE,
        "gradient_accumulation_steps": AT_LEAST_ONE, "warmup_steps": NON_NEGATIVE,
        "weight_decay": NON_NEGATIVE, "max_grad_norm": NON_NEGATIVE, "logging_steps": AT_LEAST_ONE,
        "max_train_samples": AT_LEAST_ONE, "max_eval_samples": AT_LEAST_ONE, "seed": SEED,
        "save_steps": AT_LEAST_ONE, "save_total_limit": AT_LEAST_ONE,
    }  # fmt: skip

    def __post_init__(self) -> None:
        _check_ranges(self)
        _require(
            self.max_steps != 0,
            f"{self.section}.max_steps",
            "0 would train no step; -1 trains num_train_epochs, N > 0 trains N steps",
        )
        _one_of(self.lr_scheduler_type, LR_SCHEDULERS, f"{self.section}.lr_scheduler_type")


@dataclass
class SFTStageConfig(TrainerStageConfig):
    section: ClassVar[str] = "sft"
    rejected_share: float = 0.0  # share of rows trained on the rejected answer (a mixed cold start)

    completion_only_loss: bool = True  # loss on the answer tokens only

    RANGES: ClassVar[dict[str, Range]] = {**TrainerStageConfig.RANGES, "rejected_share": SHARE}


@dataclass
class RMStageConfig(TrainerStageConfig):
    section: ClassVar[str] = "rm"
    learning_rate: float = 1e-4  # AdamW peak learning rate (lower than SFT's: a fresh score head)
    center_rewards_coefficient: float | None = None  # pushes mean reward to 0 (Eisenstein 2023)
    label_noise: float = 0.0  # share of training pairs swapped, seeded by rm.seed (a weak proxy)
    # extra pairs (share of the training rows) of chosen vs. a hard negative a weak policy writes,
    # from rlhf/data/hard_negatives.py:
    echo_negatives: float = 0.0  # ... the question echoed back as the answer
    garbled_negatives: float = 0.0  # ... the rejected answer with clauses shuffled, repeated, cut
    curt_negatives: float = 0.0  # ... a bare acknowledgement or fragment ("好。", "我。"), not rude
    truncated_negatives: float = 0.0  # ... the question cut short, or the polite answer cut
    exclaimed_negatives: float = 0.0  # ... interjections around the topic ("哇，昆曲，哇。")
    refrain_negatives: float = 0.0  # ... a phrase of the row's answers repeated around the topic

    NEGATIVES: ClassVar[tuple[str, ...]] = (
        "echo_negatives", "garbled_negatives", "curt_negatives", "truncated_negatives",
        "exclaimed_negatives", "refrain_negatives",
    )  # fmt: skip

    RANGES: ClassVar[dict[str, Range]] = {
        **TrainerStageConfig.RANGES, "center_rewards_coefficient": NON_NEGATIVE,
        "label_noise": SHARE, **{name: SHARE for name in NEGATIVES},
    }  # fmt: skip


# TRL 1.16's DPOConfig.loss_type values (trl/trainer/dpo_trainer.py, _compute_loss)
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip


@dataclass
class DPOStageConfig(TrainerStageConfig):
    section: ClassVar[str] = "dpo"
    learning_rate: float = 5e-6  # AdamW peak learning rate (DPO moves a trained policy: small)
    beta: float = 0.1  # strength of the pull to the reference (SFT) model; higher = closer
    loss_type: str = "sigmoid"  # TRL's DPO loss: sigmoid (DPO), ipo, hinge, robust, ...
    label_smoothing: float = 0.0  # assumed share of flipped labels (robust), ε of exo_pair

    RANGES: ClassVar[dict[str, Range]] = {
        **TrainerStageConfig.RANGES, "beta": POSITIVE, "label_smoothing": Range(0, 0.5, high_open=True),
    }  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of(self.loss_type, DPO_LOSS_TYPES, "dpo.loss_type")


@dataclass
class GoalConfig:
    """One goal of `eval.goals`: an eval metric within [min, max] (either bound may be left
    out), each bound multiplied by the value of the metric `relative_to` when that is set."""

    metric: str = ""  # the eval metric checked, e.g. eval/policy/top_phrase_share
    min: float | None = None  # passed when the metric >= min (x relative_to); null: no lower bound
    max: float | None = None  # passed when the metric <= max (x relative_to); null: no upper bound
    relative_to: str | None = None  # eval metric the bounds are multiplied by; null: absolute


@dataclass
class EvalConfig:
    policy_model: str | None = None  # model folder to evaluate (null: the pipeline's PPO model)
    baseline_model: str | None = None  # model to compare with (null: the pipeline's SFT model)
    reward_model: str | None = None  # RM scoring both (null: reward.model_path, else the run's RM)
    num_prompts: int = 100  # held-out prompts (test split) answered by both models
    max_new_tokens: int = 48  # longest answer
    do_sample: bool = False  # greedy by default, so runs compare prompt by prompt
    batch_size: int = 16  # prompts per generation batch
    threshold: float | None = None  # score above which an answer counts as rude (null: the RM's)
    collapse_distinct: float = 0.5  # share of distinct answers below which a policy has collapsed
    judge: Any = None  # a reward config scored beside the RM (conf/eval/judge/); null: off
    judge_threshold: float | None = None  # judge score above which it counts (null: RM's / 0)
    judge_in_ppo: bool = True  # with a judge: PPO's ppo.eval_every evaluations score it too
    hacking_margin: float | None = 0.3  # policy's RM share − judge share above this: hacking
    length_drift_factor: float | None = 2.0  # policy/baseline mean length outside [1/f, f]: hacking
    phrase_margin: float | None = 0.25  # policy's top-phrase share − baseline's above this: hacking
    fluency: bool = True  # fluency_nll of the answers under the run's untouched base model
    goals: Any = None  # name → {metric, min, max, relative_to} (GoalConfig); null: no goals

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
    RANGES: ClassVar[dict[str, Range]] = {
        "num_prompts": AT_LEAST_ONE, "max_new_tokens": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE,
        "threshold": FINITE, "collapse_distinct": SHARE, "judge_threshold": FINITE,
        "hacking_margin": SHARE, "length_drift_factor": Range(1, low_open=True),
        "phrase_margin": SHARE,
    }  # fmt: skip

    def __post_init__(self) -> None:
        # typed here, not by the schema: OmegaConf cannot merge `eval.judge={...}` into a null
        # structured node, so the field is open and converted once
        if isinstance(self.judge, dict):
            self.judge = _typed_section(self.judge, JudgeConfig)
        _require(
            self.judge is None or isinstance(self.judge, JudgeConfig),
            "eval.judge",
            f"a reward config ({{kind: ..., ...}}) or null, got {self.judge!r}",
        )
        _check_ranges(self)
        _require(
            self.hacking_margin is None or 0 <= self.hacking_margin <= 1,
            "eval.hacking_margin",
            f"must be in [0, 1] (a difference of two shares) when set, got {self.hacking_margin}",
        )
        _require(
            self.length_drift_factor is None or self.length_drift_factor > 1,
            "eval.length_drift_factor",
            f"must be > 1 when set, got {self.length_drift_factor}",
        )
        # typed here, not by the schema, for the same reason as judge: `eval.goals={name: {...}}`
        # on the command line cannot merge into a typed mapping
        goals = {} if self.goals is None else self.goals
        _require(isinstance(goals, dict), "eval.goals", f"a mapping name → goal, got {goals!r}")
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
                _require(metric in needs, key, f"{metric!r} is not an eval metric{hint}")
                for need in needs[metric]:
                    _require(
                        present[need],
                        key,
                        f"{metric!r} is measured {missing[need]}; drop the goal with "
                        f"eval.goals.{name}=null",
                    )

    @staticmethod
    def _typed_goal(name: str, goal: Any) -> GoalConfig:
        key = f"eval.goals.{name}"
        _require(
            bool(name) and "/" not in name and not any(c.isspace() for c in name),
            key,
            "a goal name must be non-empty, without '/' or spaces (it names eval/goals/<name>)",
        )
        if isinstance(goal, dict):
            goal = _typed_section(goal, GoalConfig, key)
        _require(
            isinstance(goal, GoalConfig),
            key,
            f"must be {{metric, min, max, relative_to}}, got {goal!r}",
        )
        _require(bool(goal.metric), f"{key}.metric", "name the eval metric the goal checks")
        _require(goal.min is not None or goal.max is not None, key, "set min, max or both")
        for bound in ("min", "max"):
            value = getattr(goal, bound)
            _require(
                value is None or (isinstance(value, (int, float)) and math.isfinite(value)),
                f"{key}.{bound}",
                f"must be a finite number or null, got {value!r}",
            )
        if goal.min is not None and goal.max is not None:
            _require(goal.min <= goal.max, key, f"min {goal.min:g} is above max {goal.max:g}")
        return goal


@dataclass
class PipelineConfig:
    stages: list[str] = field(default_factory=lambda: ["sft", "rm", "ppo", "eval"])  # in order
    stage_cache_dir: str | None = "outputs/stage_cache"  # finished sft/rm by config hash; null: off

    def __post_init__(self) -> None:
        _require(bool(self.stages), "pipeline.stages", "is empty: name the stages to run in order")
        for stage in self.stages:
            _one_of(stage, tuple(STAGES), "pipeline.stages")
        twice = sorted({stage for stage in self.stages if self.stages.count(stage) > 1})
        _require(not twice, "pipeline.stages", f"{', '.join(twice)} listed twice (one folder each)")


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb, tensorboard or none (metrics.jsonl is always written)
    project: str = "rlhf"  # W&B project
    entity: str | None = None  # W&B team or user
    group: str | None = None  # W&B group; null: none (multirun: <name>-<sweep folder>)
    name: str | None = None  # run name, '-<stage>' added; null: name (multirun: job overrides)
    dir: str | None = None  # folder for wandb/; null: the run folder (multirun: the sweep's)
    tags: list[str] = field(default_factory=list)  # W&B tags
    mode: str = "auto"  # auto (offline without WANDB_API_KEY), online, offline, disabled

    def __post_init__(self) -> None:
        _one_of(self.backend, ("wandb", "tensorboard", "none"), "logger.backend")
        _one_of(self.mode, ("auto", "online", "offline", "disabled"), "logger.mode")


@dataclass
class Config:
    stage: str = "sft"  # sft, rm, ppo, eval or pipeline
    name: str = "default"  # experiment name (run names, tags, reports)
    seed: int = 42  # global seed
    cache_dir: str = "~/.cache/rlhf"  # built tiny models and converted GGUF models
    output_dir: str = "outputs/manual"  # run folder (Hydra sets its own)
    objective: str | None = None  # final metric train.py returns to a sweeper; null = the stage's
    resume: Any = None  # true: continue the run in output_dir; a path: that run; auto: if any
    host_heap: str = "reuse"  # reuse: freed CPU memory stays mapped (no page faults a step); system
    model: ModelConfig = field(default_factory=ModelConfig)  # conf/model: what to train
    data: DataConfig = field(  # conf/data: preference rows
        default_factory=lambda: DataConfig(train_file="train.jsonl")
    )
    reward: RewardConfig = field(default_factory=RewardConfig)  # conf/reward: PPO's score
    ppo: PPOConfig = field(default_factory=PPOConfig)  # conf/ppo: PPO hyper-parameters
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)  # conf/sft: stage sft
    rm: RMStageConfig = field(default_factory=RMStageConfig)  # conf/rm: stage rm
    dpo: DPOStageConfig = field(default_factory=DPOStageConfig)  # conf/dpo: stage dpo
    eval: EvalConfig = field(default_factory=EvalConfig)  # conf/eval: stage eval
    pipeline: PipelineConfig = field(
        default_factory=PipelineConfig
    )  # conf/pipeline: stage order, cache
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # conf/logger: tracking

    section: ClassVar[str] = ""
    RANGES: ClassVar[dict[str, Range]] = {"seed": SEED}

    def __post_init__(self) -> None:
        _check_ranges(self)
        _one_of(self.stage, (*STAGES, PIPELINE), "stage")
        _one_of(self.host_heap, HOST_HEAPS, "host_heap")
        _require(bool(self.cache_dir), "cache_dir", "must not be empty")
        self._check_objective()
        self.ppo.check_judge(self.eval.judge is not None and self.eval.judge_in_ppo)
        _require(
            self.resume is None or isinstance(self.resume, (bool, str)),
            "resume",
            f"true, false, auto or a run folder, got {self.resume!r}",
        )
        _require(
            self.ppo.critic != "lora" or self.model.lora.enabled,
            "ppo.critic",
            "'lora' puts a second adapter on a LoRA policy: set model.lora.enabled=true",
        )
        _require(
            self.ppo.critic != "lora" or self.model.lora.bias == "none",
            "model.lora.bias",
            f"{self.model.lora.bias!r} trains biases that policy and LoRA critic share; "
            "use 'none' with ppo.critic=lora",
        )
        if self.ppo.critic_init == "reward_model":
            _require(
                self.ppo.critic == "separate" and self.reward.kind == "reward_model",
                "ppo.critic_init",
                "'reward_model' starts a separate critic (ppo.critic=separate) from the reward "
                "model (reward.kind=reward_model)",
            )
        trains = self.pipeline.stages if self.stage == PIPELINE else [self.stage]
        _require(
            self.model.dtype not in HALF_DTYPES
            or self.model.lora.enabled
            or not set(trains) & {"sft", "rm", "ppo", "dpo"},
            "model.dtype",
            f"{self.model.dtype} weights have no float32 master copy, so AdamW steps below half "
            "an ulp are lost; set model.dtype=float32 model.mixed_precision=bf16 (or train "
            "LoRA adapters: model.lora.enabled=true)",
        )

    @property
    def algorithm(self) -> str:
        """What trains this run's policy (`algorithm_name`): W&B runs carry it in their config."""
        return algorithm_name(self.stage, self.pipeline.stages, self.ppo.advantage_estimator)

    def _check_objective(self) -> None:
        """`objective` must be a final metric that the stages of this run declare (the stage
        table), checked before anything trains; a stage declaring none is checked when it ends."""
        objective = self.objective
        declarations = stages_to_run(self.stage, self.pipeline.stages)
        if objective is None or not all(d.final_metrics for d in declarations):
            return
        if not any(d.returns_metric(objective) for d in declarations):
            names = [name for d in declarations for name in d.final_metrics]
            close = difflib.get_close_matches(objective, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"objective: {objective!r} is not a final metric of stage {self.stage}{hint}; "
                f"its final metrics: {', '.join(names)}"
            )
        eval_every, total = self.ppo.eval_every, self.ppo.total_updates
        if objective.startswith("ppo/eval/"):
            _require(
                eval_every > 0 and total % eval_every == 0,
                "objective",
                f"{objective!r} is measured only at updates that are multiples of "
                f"ppo.eval_every={eval_every}, and the last update ppo.total_updates={total} is "
                "not one",
            )


def register_schemas() -> None:
    """Make `rlhf_schema` available to conf/config.yaml's defaults list."""
    ConfigStore.instance().store(name="rlhf_schema", node=Config)
