"""The `run_info.json` record of a stage: what ran, from which code, on which data.

Its `config` is the typed config as the stage ran it (after the pipeline's hand-off: PPO's names
the SFT model it started from), converted when the record is made; there is no second copy of
the config to drift from it."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rlhf.config import Config
from rlhf.paths import PROJECT_ROOT

PACKAGES = (
    "torch", "transformers", "trl", "peft", "datasets", "accelerate", "wandb", "hydra-core",
    "omegaconf",
)  # fmt: skip


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_state() -> dict[str, Any]:
    """Commit of the project checkout and whether it had local changes (None outside git)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def hydra_overrides() -> list[str]:
    """The command-line overrides of this Hydra job ([] outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def config_record(config: Config) -> dict[str, Any]:
    """The typed config as plain data (the record's `config`, and the tracker's run config),
    with `algorithm` (what trains the run's policy: ppo, grpo, rloo, dpo, ...) for grouping."""
    return {**dataclasses.asdict(config), "algorithm": config.algorithm}


def new_run_info(stage: str, config: Config, sweep: dict[str, Any] | None) -> dict[str, Any]:
    """The record of a stage starting now; `sweep`: the sweep job's record (None: a single run)."""
    return {
        "stage": stage,
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join(sys.argv),
        "overrides": hydra_overrides(),
        "seed": config.seed,
        "git": git_state(),
        "packages": package_versions(),
        "data_fingerprint": None,
        "sweep": sweep,
        "config": config_record(config),
    }


def write_run_info(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)
