"""Where a stopped run continues: finding whole checkpoints and checking a resume request.

Light on imports (standard library, rlhf.errors, rlhf.paths), so that `resume=<path>` is checked
before torch loads.
Layouts: PPO writes `<stage>/checkpoints/update-NNNNNN/` (complete by construction: written to a
temporary folder and renamed); TRL writes `<stage>/trainer/checkpoint-N/` in place, so a TRL
checkpoint counts only when its `trainer_state.json`, written last, parses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from rlhf.errors import ConfigError
from rlhf.paths import resolve_path

PPO_PREFIX = "update-"
TRL_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"  # the JSON part of a PPO checkpoint, and TRL's own file
STAGES_WITH_CHECKPOINTS = ("sft", "rm", "ppo")


@dataclass
class ResumePoint:
    checkpoint: Path  # the folder to load
    step: int  # update (PPO) or optimiser step (TRL) it was taken after
    run_id: str | None  # the tracker run to continue


def ppo_checkpoints(stage_dir: Path) -> list[Path]:
    """Published PPO checkpoints, oldest first."""
    folder = stage_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PPO_PREFIX)]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PPO_PREFIX)))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def trl_checkpoint(stage_dir: Path) -> tuple[Path, int] | None:
    """The newest whole TRL checkpoint and its global step."""
    folder = stage_dir / "trainer"
    if not folder.is_dir():
        return None
    numbered = [(int(m.group(1)), p) for p in folder.iterdir() if (m := TRL_PATTERN.match(p.name))]
    for step, path in sorted(numbered, reverse=True):
        if _read_json(path / STATE_FILE) is not None:
            return path, step
    return None


def resume_point(stage: str, stage_dir: Path) -> ResumePoint | None:
    """Where `stage` continues in `stage_dir`, or None when it holds no whole checkpoint."""
    if stage == "ppo":
        checkpoints = ppo_checkpoints(stage_dir)
        if not checkpoints:
            return None
        state = _read_json(checkpoints[-1] / STATE_FILE) or {}
        return ResumePoint(checkpoints[-1], int(state.get("update", 0)), state.get("run_id"))
    if stage in ("sft", "rm"):
        found = trl_checkpoint(stage_dir)
        if found is None:
            return None
        info = _read_json(stage_dir / "run_info.json") or {}
        return ResumePoint(found[0], found[1], info.get("tracker_run_id"))
    return None


def resume_run_dir(resume: bool | str | None, output_dir: str) -> Path | None:
    """The run folder a `resume` setting continues (None: a fresh run)."""
    if resume is None or resume is False:
        return None
    if resume is True or str(resume).lower() == "true":
        return Path(output_dir)
    if str(resume).lower() in ("false", "null", "none", ""):
        return None
    return resolve_path(str(resume))


def check_resumable(stage: str, pipeline_stages: list[str], run_dir: Path) -> None:
    """Stop with one line when there is nothing to resume in `run_dir`: a single stage needs a
    checkpoint (or to be complete already); a pipeline needs at least one stage folder."""
    if not run_dir.is_dir():
        raise ConfigError(f"resume: run folder {run_dir} does not exist")
    stages = pipeline_stages if stage == "pipeline" else [stage]
    for name in stages:
        stage_dir = run_dir / name
        if (stage_dir / "COMPLETE").is_file() or resume_point(name, stage_dir) is not None:
            return
        if stage == "pipeline" and (stage_dir / "run_info.json").is_file():
            return  # an unfinished stage without a checkpoint starts over
    if stage == "ppo":
        where, hint = f"{run_dir}/ppo/checkpoints", "ppo.checkpoint.every"
    elif stage in ("sft", "rm"):
        where, hint = f"{run_dir}/{stage}/trainer", f"{stage}.save_steps"
    else:
        where, hint = str(run_dir), "a stage with checkpoints"
    raise ConfigError(
        f"resume: no checkpoint in {where} (nothing to resume: pass the stopped run's folder "
        f"as resume=<path>; checkpoints come from {hint})"
    )
