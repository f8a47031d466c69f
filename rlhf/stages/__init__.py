"""The stage table: `stage=<name>` runs `STAGES[name](config, run_dir, resolved_config)`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from rlhf.config import Config
from rlhf.errors import ConfigError, StageNotAvailable
from rlhf.stages import ppo, rm, sft

StageRunner = Callable[[Config, Path, dict], dict[str, float]]


def _not_yet(stage: str, issue: str) -> StageRunner:
    def runner(config: Config, run_dir: Path, resolved: dict) -> dict[str, float]:
        raise StageNotAvailable(f"stage {stage!r} is not implemented yet ({issue})")

    return runner


def pipeline(config: Config, run_dir: Path, resolved: dict) -> dict[str, float]:
    """sft → rm → ppo → eval in one run folder; PPO starts from the SFT model and is scored by
    the RM of this run (stage caching comes with the pipeline issue)."""
    metrics: dict[str, float] = {}
    for stage in ("sft", "rm", "ppo", "eval"):
        stage_config = config
        if stage in ("ppo", "eval"):
            sft_model = dataclasses.replace(
                config.model, name_or_path=str(run_dir / "sft" / "model")
            )
            stage_config = dataclasses.replace(config, model=sft_model)
        metrics.update(STAGES[stage](stage_config, run_dir, resolved))
    return metrics


STAGES: dict[str, StageRunner] = {
    "sft": sft.run,
    "rm": rm.run,
    "ppo": ppo.run,
    "eval": _not_yet("eval", "evaluation lands with the pipeline issue"),
    "pipeline": pipeline,
}

# The metric a Hydra sweeper optimises, per stage (returned by train.py's main).
OBJECTIVES = {
    "sft": "sft/test/loss",
    "rm": "rm/test/accuracy",
    "ppo": "ppo/objective/scores",
    "pipeline": "ppo/objective/scores",
}


def run_stage(config: Config, run_dir: Path, resolved: dict) -> float | None:
    if config.stage not in STAGES:
        raise ConfigError(f"stage: {config.stage!r} is not one of {', '.join(STAGES)}")
    metrics = STAGES[config.stage](config, run_dir, resolved)
    objective = OBJECTIVES.get(config.stage)
    return metrics.get(objective) if objective else None
