"""`pipeline` (which stages run, in order, and the stage cache) and `logger` (tracking)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.schemas.fields import one_of, require, setting
from rlhf.stages.table import STAGES


@dataclass
class PipelineConfig:
    stages: list[str] = setting(["sft", "rm", "ppo", "eval"], "in order")
    stage_cache_dir: str | None = setting(
        "outputs/stage_cache", "finished sft/rm by config hash; null: off"
    )

    def __post_init__(self) -> None:
        require(bool(self.stages), "pipeline.stages", "is empty: name the stages to run in order")
        for stage in self.stages:
            one_of(stage, tuple(STAGES), "pipeline.stages")
        twice = sorted({stage for stage in self.stages if self.stages.count(stage) > 1})
        require(not twice, "pipeline.stages", f"{', '.join(twice)} listed twice (one folder each)")


@dataclass
class LoggerConfig:
    backend: str = setting("wandb", "wandb, tensorboard or none (metrics.jsonl is always written)")
    project: str = setting("rlhf", "W&B project")
    entity: str | None = setting(None, "W&B team or user")
    group: str | None = setting(None, "W&B group; null: none (multirun: <name>-<sweep folder>)")
    name: str | None = setting(
        None, "run name, '-<stage>' added; null: experiment name, in a multirun the job's overrides"
    )
    dir: str | None = setting(
        None, "folder that gets wandb/; null: the run folder, in a multirun the sweep folder"
    )
    tags: list[str] = setting(list, "W&B tags")
    mode: str = setting("auto", "auto (offline without WANDB_API_KEY), online, offline, disabled")

    def __post_init__(self) -> None:
        one_of(self.backend, ("wandb", "tensorboard", "none"), "logger.backend")
        one_of(self.mode, ("auto", "online", "offline", "disabled"), "logger.mode")
