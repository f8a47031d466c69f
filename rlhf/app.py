"""From a composed Hydra config to a stage run, and from an input error to one clear line."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import difflib
import json
import os
import shutil
import sys
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path

from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from rlhf.config import Config
from rlhf.errors import ConfigError, RlhfError
from rlhf.runs.resume import check_resumable, resume_run_dir
from rlhf.sweeps.jobs import SweepJob, current_job, run_recorded, with_sweep_logging

EXIT_INPUT_ERROR = 2
RESULT_FILE_ENV = "RLHF_RESULT_FILE"  # where the main process writes the job's return value


def typed_config(cfg: DictConfig) -> Config:
    """Resolve interpolations and build the dataclass tree once (runs every `__post_init__`)."""
    _reject_unknown_keys(cfg, Config)
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe_omegaconf_error(exc)) from exc


def _reject_unknown_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Hydra lets `+key=value` add keys the schema lacks, and to_object would drop them silently."""
    hints = typing.get_type_hints(schema)
    for key in node:
        full_key = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(f"unknown config key '{full_key}'" + _suggest(full_key, list(hints)))
        child = node._get_node(key)
        if dataclasses.is_dataclass(hints[key]) and isinstance(child, DictConfig):
            _reject_unknown_keys(child, hints[key], full_key + ".")


def run(cfg: DictConfig) -> float | None:
    """Validate, dispatch to the stage runner, return the metric a sweeper optimises.

    In a single run an input error ends the process here with one line. In a multirun any
    failure is recorded in the job's `job.json` and the job returns None, so the other jobs
    still run (rlhf/sweep.py reports the failures when the sweep ends).
    """
    job = current_job()
    if job is not None:
        return run_recorded(job, lambda: _run_validated(cfg, job))
    try:
        return _run_validated(cfg, None)[1]
    except RlhfError as exc:
        print(describe_error(exc), file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)


def _run_validated(cfg: DictConfig, job: SweepJob | None) -> tuple[str | None, float | None]:
    config = typed_config(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # one run folder for all processes of an `accelerate launch`: the main process's
    output_dir = resolved["output_dir"] = shared_output_dir(config.output_dir)
    config = dataclasses.replace(config, output_dir=output_dir)
    run_dir = Path(output_dir)
    resumed = resume_run_dir(config.resume, output_dir)
    if resumed is not None:  # checked before the heavy imports: a bad path fails fast
        check_resumable(config.stage, config.pipeline.stages, resumed)
        run_dir = resumed
    config = dataclasses.replace(config, resume=resumed is not None)
    if job is not None:
        config = with_sweep_logging(config, job)
    from rlhf.ppo import distributed
    from rlhf.stages import run_stage  # heavy imports (torch, transformers) after validation

    objective, value = run_stage(config, run_dir, resolved)
    if os.environ.get(RESULT_FILE_ENV) and distributed.is_main_process():
        result = {"objective": objective, "result": value}
        Path(os.environ[RESULT_FILE_ENV]).write_text(json.dumps(result))
    return objective, value


def shared_output_dir(output_dir: str) -> str:
    """The main process's run folder on every process of a multi-process launch (WORLD_SIZE set
    by accelerate / torchrun); a single process keeps its own without importing torch."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return output_dir
    from rlhf.ppo import distributed

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


def _suggest(full_key: str, known_keys: list[str]) -> str:
    """' (did you mean ...?)' when a close key exists in the same section."""
    leaf = full_key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known_keys, n=1)
    if not close:
        return ""
    prefix = full_key.rsplit(".", 1)[0] + "." if "." in full_key else ""
    return f" (did you mean '{prefix}{close[0]}'?)"


def _describe_omegaconf_error(exc: OmegaConfBaseException) -> str:
    full_key = getattr(exc, "full_key", None) or ""
    first_line = str(getattr(exc, "msg", None) or exc).splitlines()[0]
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        parent = exc.parent_node
        known = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
        return f"unknown config key '{full_key}'" + _suggest(full_key, known)
    return f"{full_key}: {first_line}" if full_key else first_line


def describe_error(exc: BaseException) -> str:
    """One line saying what the user got wrong."""
    if isinstance(exc, RlhfError):
        return f"error: {exc}"
    if isinstance(exc, MissingConfigException):
        text = str(exc).split("Config search path:")[0]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        options = [line for line in lines[1:] if not line.startswith("Available")]
        return f"error: {lines[0]}" + (f" (options: {', '.join(options)})" if options else "")
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException):
        return f"error: {_describe_omegaconf_error(cause)}"
    return "error: " + " ".join(str(exc).split())


@contextlib.contextmanager
def one_line_errors(full_traceback: bool) -> Iterator[None]:
    """Input errors → one line on stderr and exit code 2; bugs keep their traceback."""
    try:
        yield
    except (RlhfError, HydraException) as exc:
        if full_traceback:
            raise
        print(describe_error(exc), file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
