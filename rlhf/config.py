"""Typed schemas behind every config group, gathered into `Config`.

The schemas live in rlhf/schemas/ by subject; each field is written once there, with its default,
its one-line doc and its range (`setting(...)`). `register_schemas` puts `Config` in Hydra's
ConfigStore as `rlhf_schema`, and each section whose defaults are the schema's own as its group's
default option (`ppo: default`, ...), so no YAML file repeats them. An unknown key or a value of
the wrong type fails during composition, before any model loads; values that are well-typed but
impossible (a negative cliprange, a batch that does not split into micro-batches) are rejected in
`__post_init__`, which runs when train.py converts the composed config into these objects once
with `OmegaConf.to_object`. Every field and its doc: docs/reference/config.md
(`python -m rlhf.schemas.reference` writes it).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore

from rlhf.algorithms import ESTIMATORS, KL_ESTIMATORS, LOSS_AGGREGATIONS
from rlhf.errors import ConfigError
from rlhf.schemas.data import ColumnMap, DataConfig
from rlhf.schemas.eval import EvalConfig, GoalConfig
from rlhf.schemas.fields import SEED, Range, check_fields, setting
from rlhf.schemas.fields import one_of as _one_of
from rlhf.schemas.fields import require as _require
from rlhf.schemas.model import DTYPES, HALF_DTYPES, LoraSettings, ModelConfig, TinyModelSpec
from rlhf.schemas.ppo import PPOSettings
from rlhf.schemas.ppo_reliability import CheckpointConfig, HackingGuardConfig, HealthConfig
from rlhf.schemas.reward import JudgeConfig, RewardConfig
from rlhf.schemas.rollout import RolloutSettings, require_vllm
from rlhf.schemas.run import LoggerConfig, PipelineConfig
from rlhf.schemas.stages import (
    DPO_LOSS_TYPES,
    LR_SCHEDULERS,
    DPOStageConfig,
    RMStageConfig,
    SFTStageConfig,
    TrainerStageConfig,
)
from rlhf.stages.table import PIPELINE, POLICY, STAGES, producer, stages_to_run

__all__ = [
    "DPO_LOSS_TYPES", "DTYPES", "HOST_HEAPS", "LR_SCHEDULERS", "SEED", "CheckpointConfig",
    "ColumnMap", "Config", "DPOStageConfig", "DataConfig", "EvalConfig", "GoalConfig",
    "HackingGuardConfig", "HealthConfig", "JudgeConfig", "LoggerConfig", "LoraSettings",
    "ModelConfig", "PPOConfig", "PipelineConfig", "RMStageConfig", "Range", "RewardConfig", "RolloutSettings",
    "SFTStageConfig", "TinyModelSpec", "TrainerStageConfig", "algorithm_name",
    "recorded_algorithm", "register_schemas",
]  # fmt: skip

HOST_HEAPS = ("reuse", "system")  # rlhf/runtime/host_memory.py

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
class PPOConfig(PPOSettings):
    """`ppo`: the fields and their checks are PPOSettings' (rlhf/schemas/ppo.py); this adds the
    advantage estimator's checks and the settings that follow from it when left null."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_estimator()

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
        _one_of(self.kl_estimator, tuple(KL_ESTIMATORS), "ppo.kl_estimator")
        _one_of(self.kl_in, ("reward", "loss"), "ppo.kl_in")
        _require(
            self.kl_in == "reward" or KL_ESTIMATORS[self.kl_estimator].loss_gradient,
            "ppo.kl_estimator",
            f"{self.kl_estimator!r} with ppo.kl_in=loss: use k3 (GRPO's) or k2; the gradient of "
            "k1 as a loss is zero in expectation, and the exact KL needs the reference's logits",
        )


@dataclass
class Config:
    stage: str = setting("sft", "sft | rm | dpo | ppo | eval | pipeline")
    name: str = setting("default", "experiment name (run names, tags, reports)")
    seed: int = setting(42, "global seed", SEED)
    cache_dir: str = setting("~/.cache/rlhf", "built tiny models and converted GGUF models")
    output_dir: str = setting("outputs/manual", "run folder (Hydra sets its own)")
    objective: str | None = setting(
        None, "final metric returned to a sweeper, e.g. eval/policy/score; null: the stage's"
    )
    resume: Any = setting(
        None,
        "true: continue the run in hydra.run.dir; a path: that run folder; auto: continue when "
        "there is a checkpoint, else start fresh (requeued jobs)",
    )
    host_heap: str = setting(
        "reuse",
        "reuse: freed CPU memory stays in the heap, so big tensors skip page faults each step "
        "(rlhf/runtime/host_memory.py); system: glibc's defaults",
    )
    model: ModelConfig = setting(ModelConfig, "conf/model: what to train")
    data: DataConfig = setting(
        lambda: DataConfig(train_file="train.jsonl"), "conf/data: preference rows"
    )
    reward: RewardConfig = setting(RewardConfig, "conf/reward: PPO's score")
    ppo: PPOConfig = setting(PPOConfig, "conf/ppo: PPO hyper-parameters")
    sft: SFTStageConfig = setting(SFTStageConfig, "conf/sft: stage sft")
    rm: RMStageConfig = setting(RMStageConfig, "conf/rm: stage rm")
    dpo: DPOStageConfig = setting(DPOStageConfig, "conf/dpo: stage dpo")
    eval: EvalConfig = setting(EvalConfig, "conf/eval: stage eval")
    pipeline: PipelineConfig = setting(PipelineConfig, "conf/pipeline: stage order, cache")
    logger: LoggerConfig = setting(LoggerConfig, "conf/logger: tracking")

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self)
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
        if self.ppo.rollout.engine == "vllm" and "ppo" in trains:
            self._check_rollout_engine()
        _require(
            self.model.dtype not in HALF_DTYPES
            or self.model.lora.enabled
            or not set(trains) & {"sft", "rm", "ppo", "dpo"},
            "model.dtype",
            f"{self.model.dtype} weights have no float32 master copy, so AdamW steps below half "
            "an ulp are lost; set model.dtype=float32 model.mixed_precision=bf16 (or train "
            "LoRA adapters: model.lora.enabled=true)",
        )

    def _check_rollout_engine(self) -> None:
        """ppo.rollout.engine=vllm: installed, and a policy vLLM can follow here — checked
        before anything loads (rlhf/runtime/vllm_engine.py)."""
        require_vllm()
        lora = self.model.lora
        _require(
            not (lora.enabled and lora.modules_to_save),
            "model.lora.modules_to_save",
            "vLLM serves LoRA adapters without whole-module copies; leave it empty with "
            "ppo.rollout.engine=vllm",
        )
        if lora.enabled:
            return
        import torch  # only here: the config module itself stays light

        _require(
            torch.cuda.is_available(),
            "ppo.rollout.engine",
            "vllm follows a full-parameter policy by loading its weights in place, which vLLM's "
            "CPU backend cannot do; on a CPU use a LoRA policy (model.lora.enabled=true) or "
            "ppo.rollout.engine=hf",
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


# The group options that are the schema's own defaults (conf/config.yaml's defaults list picks
# them): stored here rather than written out again as YAML files.
SCHEMA_OPTIONS = {
    "model": ("tiny", ModelConfig), "reward": ("reward_model", RewardConfig),
    "ppo": ("default", PPOConfig), "sft": ("default", SFTStageConfig),
    "rm": ("default", RMStageConfig), "dpo": ("default", DPOStageConfig),
    "eval": ("default", EvalConfig), "pipeline": ("default", PipelineConfig),
    "logger": ("wandb", LoggerConfig),
}  # fmt: skip


def register_schemas() -> None:
    """Make `rlhf_schema` and the schema-default group options (`ppo: default`, `model: tiny`,
    ...) available to conf/config.yaml's defaults list; call before Hydra composes."""
    store = ConfigStore.instance()
    store.store(name="rlhf_schema", node=Config)
    for group, (option, schema) in SCHEMA_OPTIONS.items():
        store.store(group=group, name=option, node=schema)
