"""Hydra multirun jobs: W&B naming per sweep, a status file per job, a report when the sweep ends.

In a multirun (`python train.py -m ...`) every job
- writes `<job dir>/job.json`: status running → complete | failed, its overrides, swept
  parameters, error line, objective and wall time (read by `python -m rlhf.compare`);
- logs W&B runs with group = the sweep, name = the job's swept overrides, files under
  `<sweep dir>/wandb/` (so `wandb leet <sweep dir>/wandb` browses exactly this sweep);
- keeps failures to itself: the error is recorded and the job returns None, so every sweeper
  and launcher (basic, Optuna, joblib, submitit) goes on with the other jobs.
`SweepReport`, a Hydra callback (conf/config.yaml), lists failed jobs when the sweep ends and
makes the process exit with code 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rlhf.config import Config
from rlhf.errors import RlhfError
from rlhf.runtime.error_lines import describe_error, is_path_error

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
EXIT_SWEEP_FAILED = 1
MAX_DIRNAME = 150  # a path component may hold 255 bytes; leave room for the job number
# Overrides that select what runs rather than what varies; never part of a job's label.
NOT_A_PARAMETER = ("experiment", "scale", "stage", "sweep", "launcher")


def safe_dirname(text: str) -> str:
    """An override string usable as one folder name: no '/', not too long."""
    return re.sub(r"[/\\]", "_", str(text))[:MAX_DIRNAME]


# conf/config.yaml names job folders with it; registered on import so that every process that
# runs jobs (joblib workers, SLURM jobs) has it.
OmegaConf.register_new_resolver("safe_dirname", safe_dirname, replace=True)


@dataclass(frozen=True)
class SweepJob:
    sweep_dir: Path
    job_dir: Path  # this job's Hydra run folder, inside sweep_dir
    num: int
    overrides: tuple[str, ...]  # this job's command-line overrides, `key=value`
    swept: frozenset[str]  # keys the sweep varies (empty when unknown)

    @property
    def label(self) -> str:
        """The job's swept overrides, e.g. `ppo.cliprange=0.1,ppo.kl_coef=0.01`."""
        return job_label(self.overrides, self.swept) or f"job{self.num}"


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def job_label(overrides: tuple[str, ...] | list[str], swept: frozenset[str]) -> str:
    """Swept overrides sorted by key; all overrides (bar NOT_A_PARAMETER) if none is known."""
    chosen = [o for o in overrides if override_key(o) in swept]
    if not chosen:
        chosen = [o for o in overrides if override_key(o) not in NOT_A_PARAMETER]
    return ",".join(sorted(chosen, key=override_key))


def swept_keys(sweep_dir: Path, sweeper_params: dict | None) -> frozenset[str]:
    """Keys in the sweeper's `params` plus the command line's sweep overrides (`k=a,b`,
    `k=range(...)`), read from the `multirun.yaml` Hydra's basic sweeper saves."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = set(sweeper_params or {})
    saved = sweep_dir / "multirun.yaml"
    if saved.is_file():
        task = OmegaConf.load(saved).hydra.overrides.task
        try:
            parsed = OverridesParser.create().parse_overrides(list(task))
        except Exception:  # noqa: BLE001 (only labels depend on it: fall back to all overrides)
            parsed = []
        keys.update(o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override())
    return frozenset(keys)


def current_job() -> SweepJob | None:
    """This process's multirun job, or None in a single run (or outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    sweep_dir = Path(hydra.sweep.dir).resolve()
    params = hydra.sweeper.get("params")  # basic and Optuna sweepers; None when not set
    params = OmegaConf.to_container(params) if params is not None else None
    overrides = tuple(hydra.overrides.task)
    job_dir = Path(hydra.runtime.output_dir)
    return SweepJob(
        sweep_dir, job_dir, int(hydra.job.num), overrides, swept_keys(sweep_dir, params)
    )


def job_params(overrides: tuple[str, ...], config: dict) -> dict[str, Any]:
    """`{key: value}` of a job's overrides, values typed as in `config` (the typed config as
    plain data; group choices and keys outside the config keep their text)."""
    params: dict[str, Any] = {}
    for override in overrides:
        key, _, text = override.partition("=")
        key = key.lstrip("+~")
        if key in NOT_A_PARAMETER:
            continue
        node: Any = config
        for part in key.split("."):
            node = node[part] if isinstance(node, dict) and part in node else text
        params[key] = node if not isinstance(node, dict) else text
    return params


def sweep_record(job: SweepJob | None, config: dict) -> dict[str, Any] | None:
    """What run_info.json and the W&B run config say about the sweep (None in a single run)."""
    if job is None:
        return None
    params = job_params(job.overrides, config)
    swept = {k: v for k, v in params.items() if k in job.swept} or params
    return {"dir": str(job.sweep_dir), "job": job.num, "label": job.label, "params": swept}


def with_sweep_logging(config: Config, job: SweepJob) -> Config:
    """Fill the logger's group, name and W&B folder for a sweep job where the user left them
    null: group = `<name>-<sweep folder>`, name = the job's label, files under the sweep."""
    logger = config.logger
    logger = dataclasses.replace(
        logger,
        group=logger.group or f"{config.name}-{job.sweep_dir.name}",
        name=logger.name or job.label,
        dir=logger.dir or str(job.sweep_dir),
    )
    return dataclasses.replace(config, logger=logger)


def write_job_file(job_dir: Path, record: dict[str, Any]) -> None:
    job_dir.mkdir(parents=True, exist_ok=True)
    tmp = job_dir / f".{JOB_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    tmp.replace(job_dir / JOB_FILE)


def run_recorded(
    job: SweepJob, body: Callable[[], tuple[str | None, float | None]]
) -> float | None:
    """Run one job's body (→ objective name, value) with its status in `job.json`. A failure is
    recorded and logged, and None returned, so the sweep's other jobs still run."""
    started = time.time()
    record: dict[str, Any] = {
        "job": job.num,
        "label": job.label,
        "overrides": list(job.overrides),
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "started_unix": started,
    }
    write_job_file(job.job_dir, record)
    try:
        objective, value = body()
        record.update(status="complete", objective=objective, objective_value=value)
        return value
    except Exception as exc:  # noqa: BLE001 (any failure of one job must not stop the sweep)
        known = isinstance(exc, RlhfError) or is_path_error(exc)
        error = describe_error(exc) if known else f"error: {exc!r}"
        record.update(status="failed", error=" ".join(error.split())[:1000])
        if isinstance(exc, RlhfError):
            log.error("job #%d (%s) failed: %s", job.num, job.label, record["error"])
        else:  # a bug: keep the traceback in the job's log
            log.exception("job #%d (%s) failed", job.num, job.label)
        return None
    finally:
        record["wall_seconds"] = round(time.time() - started, 2)
        write_job_file(job.job_dir, record)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """A sweep's job folders (Hydra's `.hydra/` or our job.json inside), by job number."""
    found = [
        path
        for path in Path(sweep_dir).iterdir()
        if path.is_dir() and ((path / ".hydra").is_dir() or (path / JOB_FILE).is_file())
    ]

    def number(path: Path) -> tuple[int, str]:
        head = path.name.split("_", 1)[0]
        return (int(head) if head.isdigit() else sys.maxsize, path.name)

    return sorted(found, key=number)


def read_job_file(job_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((job_dir / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


class SweepReport(Callback):
    """At the end of a multirun: one line per failed job and a count; exit code 1 if any failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        records = [
            read_job_file(d) or {"status": "unknown", "label": d.name} for d in job_dirs(sweep_dir)
        ]
        failed = [r for r in records if r["status"] != "complete"]
        for record in failed:
            print(
                f"failed: job #{record.get('job', '?')} ({record['label']}): "
                f"{record.get('error', record['status'])}",
                file=sys.stderr,
            )
        print(
            f"sweep: {len(records) - len(failed)} of {len(records)} jobs complete in {sweep_dir}; "
            f"compare them: python -m rlhf.compare {sweep_dir}",
            file=sys.stderr,
        )
        if failed:
            # SystemExit passes Hydra's callback guard (it catches Exception), so the sweep's
            # exit code says that some job failed.
            sys.exit(EXIT_SWEEP_FAILED)
