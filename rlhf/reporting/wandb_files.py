"""Read W&B runs back from their local files (offline runs, or online runs' local copies).

Uses the wandb package's own reader (`wandb leet inspect [--summary] --json`), so what is checked
is what W&B will upload with `wandb sync`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def _wandb_executable() -> str:
    beside_python = Path(sys.executable).parent / "wandb"
    return str(beside_python) if beside_python.exists() else (shutil.which("wandb") or "wandb")


def _records_command(path: Path) -> list[str]:
    """The command that prints a `.wandb` log's records, one JSON object a line."""
    return [_wandb_executable(), "leet", "inspect", "--json", str(path)]


def run_files(wandb_dir: Path) -> list[Path]:
    """The `.wandb` transaction logs under a `wandb/` folder, oldest first."""
    return sorted(Path(wandb_dir).glob("*run-*/run-*.wandb"))


def read_run(path: Path) -> dict[str, Any]:
    """A run's state, config, summary (final metric values), name, tags, group and job type."""
    done = subprocess.run(
        [_wandb_executable(), "leet", "inspect", "--summary", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    run = json.loads(done.stdout)
    record = run_record(path)
    run.update(group=record.get("run_group"), job_type=record.get("job_type"))
    return run


def run_record(path: Path) -> dict[str, Any]:
    """The run record a `.wandb` log opens with (group, job type, ...; the summary omits them):
    the first record of type `run`, read without reading the whole log."""
    with subprocess.Popen(_records_command(path), stdout=subprocess.PIPE, text=True) as reader:
        assert reader.stdout is not None
        try:
            for line in reader.stdout:
                record = json.loads(line)
                if record.get("type") == "run":
                    return record["run"]
        finally:
            reader.kill()
    raise ValueError(f"{path}: no run record")


def read_history(path: Path) -> list[dict[str, Any]]:
    """Every history row of a run's `.wandb` log, in order (`_step` and the values logged)."""
    done = subprocess.run(
        _records_command(path), capture_output=True, text=True, timeout=120, check=True
    )
    records = (json.loads(line) for line in done.stdout.splitlines() if line.strip())
    return [r["history"]["item"] for r in records if r.get("type") == "history"]
