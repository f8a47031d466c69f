"""What every stage shares: its folder, run record and tracker, opened and closed in one place.

A stage folder `<run_dir>/<stage>/` holds `run_info.json` (status running → complete or failed),
`metrics.jsonl`, `model/` (published in one rename when whole) and, last, the `COMPLETE` marker
(rlhf/runs/folders.py). In a multi-process run only the main process writes these and logs; the
others wait for it at the end of the stage.

With `resume` set, a stage continues from its newest whole checkpoint (found by the checkpoint
layout its declaration names, rlhf/runs/resume.py): the tracker continues the saved run and drops
records logged after that checkpoint. Without it, a stage starts over and clears what an
earlier, unfinished attempt left in its checkpoint folder.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import set_seed

from rlhf.config import Config
from rlhf.errors import ConfigError
from rlhf.runs.folders import COMPLETE, RUN_INFO, RunPaths
from rlhf.runs.resume import ResumePoint
from rlhf.runs.run_info import config_record, new_run_info, write_run_info
from rlhf.runs.tracking import Tracker, open_tracker
from rlhf.runtime import distributed
from rlhf.stages.table import STAGES
from rlhf.sweeps.jobs import current_job, sweep_record

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    config: Config
    run_dir: Path
    stage_dir: Path
    tracker: Tracker
    info: dict[str, Any]
    resume: ResumePoint | None = None  # where this stage continues; None: from the start
    final_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.stage_dir / "model"


@contextlib.contextmanager
def stage_context(config: Config, paths: RunPaths, stage: str) -> Iterator[StageContext]:
    """Open the stage folder, record and tracker; mark the stage complete only if the body ends.
    The record and the tracker's run config are the typed `config` as this stage runs it."""
    run_dir, stage_dir = paths.run_dir, paths.stage_dir(stage)
    main = distributed.is_main_process()
    stage_dir.mkdir(parents=True, exist_ok=True)
    layout = STAGES[stage].checkpoints
    resume = layout.resume_point(stage_dir) if config.resume else None
    broken = layout.broken(stage_dir) if config.resume else []
    if config.resume and resume is None:
        why = f": {'; '.join(broken)}" if broken else ""
        raise ConfigError(f"resume: no whole checkpoint of stage {stage} in {stage_dir}{why}")
    for problem in broken:  # a newer, broken checkpoint: the whole one before it is used
        log.warning(
            "resume: skipping checkpoint %s (continuing from %s)", problem, resume.checkpoint
        )
    if main:
        (stage_dir / COMPLETE).unlink(missing_ok=True)
        if resume is None and layout.folder is not None:  # an earlier attempt's: never mixed in
            shutil.rmtree(stage_dir / layout.folder, ignore_errors=True)
    set_seed(config.seed)
    info = new_run_info(stage, config, sweep_record(current_job(), config_record(config)))
    if resume is not None:
        info["resumed_from"] = str(resume.checkpoint)
    info_path = stage_dir / RUN_INFO
    write = write_run_info if main else (lambda path, info: None)
    write(info_path, info)
    started = time.time()
    name = f"{config.logger.name or config.name}-{stage}"
    record = {k: v for k, v in info.items() if k not in ("config", "sweep")}
    tracker_config = {**info["config"], "sweep": info["sweep"], "run_info": record}
    try:
        with open_tracker(
            config.logger,
            run_dir,
            stage_dir,
            name,
            stage,
            tracker_config,
            run_id=resume.run_id if resume else None,
            resume_step=resume.step if resume else None,
            main_process=main,
        ) as tracker:
            info["tracker_run_id"] = tracker.run_id
            context = StageContext(config, run_dir, stage_dir, tracker, info, resume)
            yield context
            tracker.summary(context.final_metrics)
    except BaseException as exc:
        info.update(status="failed", error=" ".join(str(exc).split())[:500])
        info.update(wall_seconds=round(time.time() - started, 2))
        write(info_path, info)
        raise
    info.update(status="complete", final_metrics=context.final_metrics)
    info.update(wall_seconds=round(time.time() - started, 2))
    write(info_path, info)
    if main:
        (stage_dir / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    distributed.barrier()  # the next stage reads what the main process saved
