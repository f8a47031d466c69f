"""The stage table: `stage=<name>` runs `STAGES[name](config, paths, resolved_config)`."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from rlhf.config import Config
from rlhf.errors import ConfigError
from rlhf.runtime import distributed
from rlhf.stages import eval as eval_stage
from rlhf.stages import ppo, rm, sft
from rlhf.stages.context import RunPaths, is_complete

log = logging.getLogger(__name__)

StageRunner = Callable[[Config, RunPaths, dict], dict[str, float]]


def pipeline(config: Config, paths: RunPaths, resolved: dict) -> dict[str, float]:
    from rlhf.pipeline import run_pipeline  # rlhf.pipeline imports this package

    return run_pipeline(config, paths, resolved, STAGES)


STAGES: dict[str, StageRunner] = {
    "sft": sft.run,
    "rm": rm.run,
    "ppo": ppo.run,
    "eval": eval_stage.run,
    "pipeline": pipeline,
}

# The metric a Hydra sweeper optimises, per stage, unless `objective` names another.
OBJECTIVES = {
    "sft": "sft/test/loss",
    "rm": "rm/test/accuracy",
    "ppo": "ppo/objective/scores",
    "eval": "eval/policy/score",
    "pipeline": "eval/policy/score",
}


def check_launch_engine(config: Config, engine: str | None) -> None:
    """Stop before training what the accelerate engine cannot run: PPO is data-parallel on plain
    processes (its generation would gather sharded weights at every token), and a LoRA model
    sharded by ZeRO-3 / FSDP cannot be merged for saving."""
    stages = config.pipeline.stages if config.stage == "pipeline" else [config.stage]
    if engine is not None and "ppo" in stages:
        raise ConfigError(
            f"stage ppo runs data-parallel: launch it with conf/accelerate/ddp.yaml, not {engine} "
            "(zero2 / zero3 / fsdp are for the sft and rm stages)"
        )
    if engine in ("deepspeed-zero3", "fsdp") and config.model.lora.enabled:
        raise ConfigError(
            f"model.lora.enabled: LoRA models sharded by {engine} are not merged for saving; "
            "use conf/accelerate/zero2.yaml or ddp.yaml"
        )


def run_stage(config: Config, run_dir: Path, resolved: dict) -> tuple[str | None, float | None]:
    """Run `config.stage`; return the objective's name and final value (train.py returns the
    value to the sweeper)."""
    if config.stage not in STAGES:
        raise ConfigError(f"stage: {config.stage!r} is not one of {', '.join(STAGES)}")
    check_launch_engine(config, distributed.launch_engine(os.environ))
    paths = RunPaths(run_dir)
    if config.resume and config.stage != "pipeline" and is_complete(paths.stage_dir(config.stage)):
        log.info("%s: already complete in %s, nothing to resume", config.stage, run_dir)
        metrics = json.loads((paths.stage_dir(config.stage) / "run_info.json").read_text())
        metrics = metrics["final_metrics"]
    else:
        metrics = STAGES[config.stage](config, paths, resolved)
    if config.objective is not None and config.objective not in metrics:
        raise ConfigError(
            f"objective: {config.objective!r} is not a final metric of stage {config.stage} "
            f"(final metrics: {', '.join(sorted(metrics))})"
        )
    objective = config.objective or OBJECTIVES.get(config.stage)
    return objective, metrics.get(objective) if objective else None
