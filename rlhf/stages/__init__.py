"""The stage table: `stage=<name>` runs `STAGES[name](config, paths, resolved_config)`."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from rlhf.config import Config
from rlhf.errors import ConfigError
from rlhf.stages import eval as eval_stage
from rlhf.stages import ppo, rm, sft
from rlhf.stages.common import RunPaths, is_complete

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


def run_stage(config: Config, run_dir: Path, resolved: dict) -> tuple[str | None, float | None]:
    """Run `config.stage`; return the objective's name and final value (train.py returns the
    value to the sweeper)."""
    if config.stage not in STAGES:
        raise ConfigError(f"stage: {config.stage!r} is not one of {', '.join(STAGES)}")
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
