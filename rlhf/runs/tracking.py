"""One logger interface over W&B, TensorBoard or nothing; `metrics.jsonl` is always written.

A stage opens a tracker with `open_tracker(...)` and logs slash-namespaced metrics
(`sft/train/loss`, `rm/test/accuracy`); the backend run is always finished, also on error, so
jobs of a multirun never share a W&B run. W&B runs offline (files under the run folder, upload
later with `wandb sync`) when no API key is set.

Resuming (`resume_step` set): the W&B run with the saved id continues (`resume="allow"`), and
`metrics.jsonl` and the sample tables keep only records up to the checkpoint's step before new
ones are appended, so a step logged before a crash but after the checkpoint is not duplicated.
A fresh start (`resume_step` None) empties them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhf.config import LoggerConfig


class NullBackend:
    """Tracks nothing; the same interface as the real backends."""

    run_id: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self, failed: bool) -> None:
        pass


class WandbBackend(NullBackend):
    def __init__(
        self,
        cfg: LoggerConfig,
        run_dir: Path,
        name: str,
        job_type: str,
        config: dict,
        run_id: str | None = None,
    ):
        import wandb

        mode = cfg.mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        wandb_parent = Path(cfg.dir) if cfg.dir else run_dir  # a sweep's jobs share one folder
        wandb_parent.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self._run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            name=name,
            job_type=job_type,
            tags=list(cfg.tags),
            config=config,
            dir=str(wandb_parent),
            mode=mode,
            reinit="finish_previous",
            **({"id": run_id, "resume": "allow"} if run_id else {}),
        )
        self.run_id = self._run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(metrics, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        # commit=False: the table joins the step being logged; a plain log would advance W&B's
        # step, and the metrics logged next at the current step would be dropped as "old"
        self._run.log({key: self._wandb.Table(columns=columns, data=rows)}, commit=False)

    def summary(self, metrics: dict[str, Any]) -> None:
        self._run.summary.update(metrics)

    def finish(self, failed: bool) -> None:
        self._run.finish(exit_code=1 if failed else 0)


class TensorBoardBackend(NullBackend):
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, global_step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
        body = "".join("| " + " | ".join(map(str, row)) + " |\n" for row in rows)
        self._writer.add_text(key, header + body)

    def finish(self, failed: bool) -> None:
        self._writer.close()


class Tracker:
    """Writes every metric to `<stage_dir>/metrics.jsonl` and forwards it to the backend."""

    def __init__(self, stage_dir: Path, backend: NullBackend, resume_step: int | None = None):
        self.stage_dir = stage_dir
        self.backend = backend
        self._tables: dict[str, list[list[Any]]] = {}
        stage_dir.mkdir(parents=True, exist_ok=True)
        self._keep_records(resume_step)
        self._metrics_file = (stage_dir / "metrics.jsonl").open("a", encoding="utf-8")

    def _keep_records(self, resume_step: int | None) -> None:
        """Drop what was logged after the resumed checkpoint (everything on a fresh start); the
        kept sample rows go back into the backend's tables."""
        step = -math.inf if resume_step is None else resume_step
        keep_until(self.stage_dir / "metrics.jsonl", "step", step)
        for table_file in sorted((self.stage_dir / "tables").glob("*.jsonl")):
            rows = keep_until(table_file, "update", step)
            self._tables[_table_key(table_file)] = [list(r.values()) for r in rows]

    @property
    def run_id(self) -> str | None:
        return self.backend.run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        record = {"step": step, "time": round(time.time(), 3), **clean}
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        self.backend.log(clean, step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Add rows to a table of samples: the backend gets every row so far (a table is never
        overwritten by the next one), `<stage_dir>/tables/<key>.jsonl` gets the new rows."""
        table_file = self.stage_dir / "tables" / f"{key.replace('/', '_')}.jsonl"
        table_file.parent.mkdir(exist_ok=True)
        with table_file.open("a", encoding="utf-8") as handle:
            for row in rows:
                record = dict(zip(columns, row, strict=True))
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._tables.setdefault(key, []).extend(rows)
        self.backend.log_table(key, columns, self._tables[key])

    def summary(self, metrics: dict[str, Any]) -> None:
        self.backend.summary(metrics)

    def close(self, failed: bool) -> None:
        self._metrics_file.close()
        self.backend.finish(failed)


class SilentTracker(Tracker):
    """The tracker of a non-main process in a multi-process run: same interface, writes nothing
    (the main process logs the reduced metrics: one run, one metrics.jsonl)."""

    def __init__(self, stage_dir: Path):
        self.stage_dir = stage_dir
        self.backend = NullBackend()

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def close(self, failed: bool) -> None:
        pass


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (none when it is missing); a line cut short by a kill,
    or still being written by a running job, is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def keep_until(path: Path, key: str, step: float) -> list[dict]:
    """Rewrite a JSON-lines file keeping the records whose `key` is at most `step` (records
    without the key are kept); returns them. A missing file stays missing."""
    if not path.is_file():
        return []
    records = read_jsonl(path)
    kept = [r for r in records if not isinstance(r.get(key), (int, float)) or r[key] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), "utf-8")
    tmp.replace(path)
    return kept


def _table_key(table_file: Path) -> str:
    """`ppo_samples.jsonl` → `ppo/samples` (the first underscore was the key's slash)."""
    return table_file.stem.replace("_", "/", 1)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def make_backend(
    cfg: LoggerConfig,
    run_dir: Path,
    stage_dir: Path,
    name: str,
    job_type: str,
    config: dict,
    run_id: str | None = None,
) -> NullBackend:
    if cfg.backend == "wandb" and cfg.mode != "disabled":
        return WandbBackend(cfg, run_dir, name, job_type, config, run_id)
    if cfg.backend == "tensorboard":
        return TensorBoardBackend(stage_dir / "tensorboard")
    return NullBackend()


@contextlib.contextmanager
def open_tracker(
    cfg: LoggerConfig,
    run_dir: Path,
    stage_dir: Path,
    name: str,
    job_type: str,
    config: dict,
    run_id: str | None = None,
    resume_step: int | None = None,
    main_process: bool = True,
) -> Iterator[Tracker]:
    """A tracker whose backend run is finished on exit, marked failed if the body raised;
    `run_id` and `resume_step` continue an earlier run (see the module docstring); a silent
    one on the non-main processes of a multi-process run."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    if not main_process:
        yield SilentTracker(stage_dir)
        return
    backend = make_backend(cfg, run_dir, stage_dir, name, job_type, config, run_id)
    tracker = Tracker(stage_dir, backend, resume_step)
    failed = True
    try:
        yield tracker
        failed = False
    finally:
        tracker.close(failed)
