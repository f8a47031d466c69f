"""From a composed Hydra config to a stage run: validate it once into the typed `Config`, find
the run folder (shared by every process of a launch; the resumed one), then run the stage or
the pipeline (rlhf/pipeline.py). Input errors become one line (rlhf/runtime/error_lines.py)."""

from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import typing
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlhf.config import Config
from rlhf.errors import ConfigError, RlhfError
from rlhf.paths import folder_path_problem, resolve_path
from rlhf.runs.resume import (
    check_resumable,
    has_something_to_resume,
    is_auto_resume,
    resume_run_dir,
)
from rlhf.runtime.error_lines import (
    EXIT_INPUT_ERROR,
    describe_error,
    describe_omegaconf_error,
    is_path_error,
    suggest,
)
from rlhf.runtime.host_memory import use_host_heap
from rlhf.stages.table import PIPELINE, stages_to_run
from rlhf.sweeps.cluster import RESULT_FILE_ENV
from rlhf.sweeps.jobs import SweepJob, current_job, run_recorded, with_sweep_logging

log = logging.getLogger(__name__)


def typed_config(cfg: DictConfig) -> Config:
    """Resolve interpolations and build the dataclass tree once (runs every `__post_init__`)."""
    _reject_unknown_keys(cfg, Config)
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(exc)) from exc


def _reject_unknown_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Hydra lets `+key=value` add keys the schema lacks, and to_object would drop them silently."""
    hints = typing.get_type_hints(schema)
    for key in node:
        full_key = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"unknown config key '{full_key}'" + suggest(full_key, list(hints)))
        child = node._get_node(key)
        if dataclasses.is_dataclass(hints[key]) and isinstance(child, DictConfig):
            _reject_unknown_keys(child, hints[key], full_key + ".")


def run(cfg: DictConfig) -> float | None:
    """Validate, dispatch to the stage runner, return the metric a sweeper optimises.

    In a single run an input error ends the process here with one line. In a multirun any
    failure is recorded in the job's `job.json` and the job returns None, so the other jobs
    still run (rlhf/sweeps/jobs.py reports the failures when the sweep ends).
    """
    job = current_job()
    if job is not None:
        global last_sweep_dir
        last_sweep_dir = job.sweep_dir  # for the end of a sweep whose trials all failed
        return run_recorded(job, lambda: _run_validated(cfg, job))
    try:
        return _run_validated(cfg, None)[1]
    except (RlhfError, OSError) as exc:
        if not isinstance(exc, RlhfError) and not is_path_error(exc):
            raise  # a bug, with its traceback
        print(describe_error(exc), file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)


def _run_validated(cfg: DictConfig, job: SweepJob | None) -> tuple[str | None, float | None]:
    config = typed_config(cfg)
    check_folders(config)
    check_optional_packages(config)
    # one run folder for all processes of an `accelerate launch`: the main process's
    output_dir = shared_output_dir(config.output_dir)
    run_dir = Path(output_dir)
    resumed = resume_run_dir(config.resume, output_dir)
    if resumed is not None:  # checked before the heavy imports: a bad path fails fast
        declarations = stages_to_run(config.stage, config.pipeline.stages)
        stages = [(d.name, d.checkpoints) for d in declarations]
        if is_auto_resume(config.resume):  # a requeued job: continue if it can, else start
            skipped = [entry for name, layout in stages for entry in layout.stray(resumed / name)]
            resumed = resumed if has_something_to_resume(stages, resumed) else None
            what = f"continuing the run in {resumed}" if resumed else "nothing to resume"
            if skipped:
                what += f" (skipped in the checkpoint folder: {'; '.join(skipped)})"
            log.info("resume=auto: %s", what if resumed else what + ", starting fresh")
        else:
            check_resumable(stages, config.stage == PIPELINE, resumed)
    if resumed is not None:
        run_dir = resumed
    config = dataclasses.replace(config, output_dir=output_dir, resume=resumed is not None)
    if job is not None:
        config = with_sweep_logging(config, job)
    from rlhf.pipeline import run  # heavy imports (torch, transformers) after validation
    from rlhf.runtime import distributed

    log.info(use_host_heap(config.host_heap))
    objective, value = run(config, run_dir)
    if os.environ.get(RESULT_FILE_ENV) and distributed.is_main_process():
        result = {"objective": objective, "result": value}
        Path(os.environ[RESULT_FILE_ENV]).write_text(json.dumps(result))
    return objective, value


# what optuna's Study.best_trial raises when no trial completed (hydra-optuna-sweeper asks for
# it after the last trial, to report the best one)
NO_COMPLETED_TRIALS = "No trials are completed yet."
# the sweep folder of the last job this process ran (Hydra keeps its config only while a job
# runs); None when the jobs ran in other processes (launcher=joblib, slurm)
last_sweep_dir: Path | None = None


def is_sweep_without_results(exc: BaseException) -> bool:
    return isinstance(exc, ValueError) and str(exc) == NO_COMPLETED_TRIALS


def report_sweep_without_results() -> None:
    """When no trial of an Optuna sweep completed: one error line, the failed jobs as the end
    of every sweep lists them, exit code 1 (instead of the sweeper's traceback)."""
    from rlhf.sweeps.jobs import EXIT_SWEEP_FAILED, SweepReport

    if last_sweep_dir is None:
        print(
            "error: sweep: no trial completed, so there is no best trial to report (each job's "
            "job.json in the sweep folder says why it failed)",
            file=sys.stderr,
        )
        sys.exit(EXIT_SWEEP_FAILED)
    print(
        "error: sweep: no trial completed, so there is no best trial to report; the failed "
        "jobs follow",
        file=sys.stderr,
    )
    sweep = OmegaConf.create({"hydra": {"sweep": {"dir": str(last_sweep_dir)}}})
    SweepReport().on_multirun_end(sweep)
    sys.exit(EXIT_SWEEP_FAILED)


def check_override_keys(argv: list[str]) -> None:
    """An override with no key (`=3`, `+=1`) is one line: Hydra's grammar lets it through and
    then fails with a ValueError about config groups that names no override."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue  # Hydra's flags (--multirun, --cfg job) and their values
        if not arg.split("=", 1)[0].lstrip("+~"):
            raise ConfigError(f"cannot parse the override {arg!r}: it names no key (key=value)")


SWEEP_ONLY_KEYS = ("sweep", "launcher", "hydra/sweeper", "hydra/launcher")  # groups
SWEEP_ONLY_PREFIXES = ("hydra.sweeper.", "hydra.launcher.")


def ignored_sweep_settings(argv: list[str], env: dict[str, str]) -> str | None:
    """The warning for sweep settings given to a single run (no -m), which Hydra ignores
    without a word. Not for a sweep's own job: the SLURM launcher hands each job the sweep's
    overrides (it sets RESULT_FILE_ENV)."""
    if "-m" in argv or "--multirun" in argv or env.get(RESULT_FILE_ENV):
        return None
    given = [
        arg for arg in argv
        if "=" in arg and not arg.startswith("-")
        and ((key := arg.split("=", 1)[0].lstrip("+~")) in SWEEP_ONLY_KEYS
             or key.startswith(SWEEP_ONLY_PREFIXES))
        and not arg.endswith("=null")
    ]  # fmt: skip
    if not given:
        return None
    return (
        f"warning: {', '.join(given)}: sweep settings take effect only in a sweep; add -m "
        "(--multirun) to run it, this single run ignores them"
    )


def check_folders(config: Config) -> None:
    """The folders the run will write, checked before anything is written: none may lie inside
    a file, hold a name the file system refuses, or lie in a folder that takes no new files."""
    folders = {"cache_dir": config.cache_dir, "output_dir": config.output_dir,
               "pipeline.stage_cache_dir": config.pipeline.stage_cache_dir,
               "logger.dir": config.logger.dir}  # fmt: skip
    for key, folder in folders.items():
        problem = (folder_path_problem(folder) or unwritable_problem(folder)) if folder else None
        if problem is not None:
            raise ConfigError(f"{key}: {problem}")


def check_optional_packages(config: Config) -> None:
    """A setting that needs a package of an extra (pyproject.toml) that is not installed."""
    if config.logger.backend == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "logger.backend: tensorboard needs the tensorboard package: "
            "pip install -e '.[tensorboard]' (or logger=wandb | none)"
        )


def unwritable_problem(folder: str) -> str | None:
    """The folder, or the nearest one above it that exists, must take new files."""
    existing = resolve_path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable: choose a folder you can write to"
    return None


def optuna_sampler_seed(seed: int | None, storage: str | None, study_name: str) -> int | None:
    """The seed of an Optuna sweep's sampler (`${optuna_sampler_seed:...}` in
    conf/sweep/kl_clip_optuna.yaml): `seed` for a new study; for a study continued from
    `hydra.sweeper.storage`, `seed` + the trials it already holds, so that the continued
    search does not draw the first run's parameters again."""
    if seed is None or not storage:
        return seed
    import optuna  # the sweeps extra; only a sweep with this sampler resolves this

    try:
        studies = optuna.get_all_study_summaries(storage=storage)
    except Exception:  # a storage the sweeper will report itself, with its own error
        return seed
    return seed + sum(study.n_trials for study in studies if study.study_name == study_name)


OmegaConf.register_new_resolver("optuna_sampler_seed", optuna_sampler_seed, replace=True)


def shared_output_dir(output_dir: str) -> str:
    """The main process's run folder on every process of a multi-process launch (WORLD_SIZE set
    by accelerate / torchrun); a single process keeps its own without importing torch."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return output_dir
    from rlhf.runtime import distributed

    return distributed.broadcast_object(output_dir)


def secondary_process_overrides(env: dict[str, str]) -> list[str]:
    """Hydra overrides for a non-main process of `accelerate launch` / torchrun (RANK > 0).

    Hydra names run folders by the time each process composed its config, so the processes of
    one job could disagree by a second. The main process's folder is the run's (`run` hands its
    path to the others); the others get a temporary one, removed at exit."""
    if env.get("RANK", "0") == "0":
        return []
    folder = tempfile.mkdtemp(prefix=f"rlhf-rank{env['RANK']}-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return [f"hydra.run.dir={folder}", f"hydra.sweep.dir={folder}", "hydra.output_subdir=null"]
