"""A run's folders: the Hydra run folder, with one folder per stage.

A stage folder `<run>/<stage>/` holds `run_info.json`, `metrics.jsonl`, `model/` and, written
last, the `COMPLETE` marker: a folder without it is not a finished stage, whatever else it holds.
The pipeline may point a stage at a cached folder elsewhere (`RunPaths.stage_dirs`); the run
folder then links to it. Light on imports (no torch), like rlhf/runs/resume.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.errors import RunFolderError

COMPLETE = "COMPLETE"
RUN_INFO = "run_info.json"


@dataclass
class RunPaths:
    """Where a run's stages write and read. The Hydra run folder holds the tracker files and one
    folder per stage; the pipeline may point a stage at a cached folder elsewhere instead."""

    run_dir: Path
    stage_dirs: dict[str, Path] = field(default_factory=dict)

    def stage_dir(self, stage: str) -> Path:
        return self.stage_dirs.get(stage, self.run_dir / stage)

    def model_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / "model"


def is_complete(stage_dir: Path) -> bool:
    return (stage_dir / COMPLETE).is_file()


def completed_metrics(stage_dir: Path) -> dict[str, float] | None:
    """The final metrics of a finished stage (its run record's), or None when it is not finished."""
    if not is_complete(stage_dir):
        return None
    path = stage_dir / RUN_INFO
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))["final_metrics"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        reason = "is missing" if isinstance(exc, FileNotFoundError) else "is not a valid run record"
        raise RunFolderError(
            f"{path} {reason} ({type(exc).__name__}), but {stage_dir} is marked {COMPLETE}: "
            f"delete {stage_dir / COMPLETE} to run the stage again, or restore the file"
        ) from exc
    if not isinstance(metrics, dict):
        raise RunFolderError(f"{path}: final_metrics is not a mapping; delete {COMPLETE} to rerun")
    return metrics
