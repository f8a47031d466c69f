"""The seed summary of a sweep in W&B: one run per setting in the sweep's own group.

Each run has job type `summary`, the group, project, entity, tags and mode the sweep's jobs
logged with (their own stages' run records; `auto`: online with WANDB_API_KEY, else offline),
name `<setting>-summary` (`summary` when only seeds vary), the setting's swept values as its
config (nested like the jobs' configs, so a dashboard lines them up) and rlhf/sweeps/seeds.py's
`summary_of` as its summary. Files go to `<sweep folder>/wandb/` beside the jobs'. The run id
follows from project, group and setting, so comparing again (more seeds done) updates the same
run after `wandb sync`. Nothing is written when the jobs did not log to W&B.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml

from rlhf.sweeps.overopt import PART
from rlhf.sweeps.results import JobResult
from rlhf.sweeps.seeds import Setting, summary_of

JOB_TYPE = "summary"
ALL = "(all)"  # the setting of a sweep over seeds alone (rlhf.sweeps.overopt.split_seed)


def sweep_logger(jobs: list[JobResult]) -> dict[str, Any] | None:
    """The logger settings of the sweep's first job that recorded them; None when it did not
    log to W&B (or no job recorded any)."""
    for job in jobs:
        if job.logger is not None:
            wandb = job.logger.get("backend") == "wandb" and job.logger.get("mode") != "disabled"
            return job.logger if wandb else None
    return None


def summary_run_id(project: str, group: str, setting: str) -> str:
    digest = hashlib.sha1(f"{project}\0{group}\0{setting}".encode()).hexdigest()[:16]
    return f"{JOB_TYPE}-{digest}"


def setting_config(setting: Setting) -> dict[str, Any]:
    """`ppo.kl_coef=0.1,ppo.cliprange=0.2` → {"ppo": {"kl_coef": 0.1, "cliprange": 0.2}}."""
    config: dict[str, Any] = {}
    for part in PART.split(setting.name) if setting.name != ALL else []:
        key, _, text = part.partition("=")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        *parents, leaf = key.lstrip("+~").split(".")
        node = config
        for name in parents:
            child = node.setdefault(name, {})
            node = child if isinstance(child, dict) else {}
        node[leaf] = value
    return config


def write_summary_runs(
    sweep_dir: Path, settings: list[Setting], logger: dict[str, Any]
) -> list[str]:
    """One W&B run per setting with a complete job; returns what went wrong (a line per
    setting whose run could not be written)."""
    import wandb

    mode = logger.get("mode") or "auto"
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    project, group = logger.get("project") or "rlhf", logger.get("group")
    problems = []
    for setting in settings:
        if not setting.complete:
            continue
        sweep = {
            "dir": str(sweep_dir),
            "setting": setting.name,
            "jobs": [job.num for job in setting.complete],
            "seeds": [job.seed for job in setting.complete if job.seed is not None],
        }
        try:
            run = wandb.init(
                project=project,
                entity=logger.get("entity"),
                group=group,
                name=JOB_TYPE if setting.name == ALL else f"{setting.name}-{JOB_TYPE}",
                job_type=JOB_TYPE,
                tags=list(logger.get("tags") or []),
                config={**setting_config(setting), "sweep": sweep},
                dir=str(sweep_dir),
                mode=mode,
                id=summary_run_id(project, str(group), setting.name),
                resume="allow",
                reinit="finish_previous",
                settings=wandb.Settings(silent=True),
            )
            try:
                run.summary.update(summary_of(setting))
            finally:
                run.finish()
        except (OSError, wandb.Error) as exc:
            problems.append(f"{setting.name}: {type(exc).__name__}: {' '.join(str(exc).split())}")
    return problems
