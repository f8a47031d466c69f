"""Sweep jobs that train under `accelerate launch` across their GPUs (and nodes).

`hydra/launcher=slurm_accelerate` (hydra_plugins/rlhf_accelerate_launcher) is
hydra-submitit-launcher's SLURM launcher — one SLURM job per sweep point, partition, GPUs, time
and nodes from config — whose jobs do not call the task function in their own Python process.
Each job runs one task per node, and that task runs

    python -m accelerate.commands.launch --config_file <accelerate_config>
        --num_processes <nodes × processes_per_node> --num_machines <nodes>
        --machine_rank <node> --main_process_ip <first node> --main_process_port <port>
        train.py <the job's overrides> hydra.run.dir=<the job's folder>

so the sweep job's folder is the training run's folder, and the job returns the metric that the
run's main process wrote (what a sweeper such as Optuna optimises).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rlhf.paths import PROJECT_ROOT, resolve_path

RESULT_FILE = ".accelerate_result.json"  # in the job folder: the run's return value
RESULT_FILE_ENV = "RLHF_RESULT_FILE"  # where the run's main process writes its return value


@dataclass(frozen=True)
class AccelerateLaunch:
    """Where one node's `accelerate launch` sits in the job."""

    config_file: str  # accelerate config (accelerate/*.yaml)
    processes_per_node: int  # usually the GPUs per node
    num_machines: int = 1  # nodes in the job
    machine_rank: int = 0  # this node's index
    main_process_ip: str = "127.0.0.1"  # first node: rendezvous of the process group
    main_process_port: int = 29500

    @property
    def num_processes(self) -> int:
        return self.processes_per_node * self.num_machines


def accelerate_command(launch: AccelerateLaunch, overrides: list[str], run_dir: Path) -> list[str]:
    """argv of `accelerate launch ... train.py <overrides>` writing into `run_dir`."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(resolve_path(launch.config_file)),
        "--num_processes", str(launch.num_processes),
        "--num_machines", str(launch.num_machines),
        "--machine_rank", str(launch.machine_rank),
        "--main_process_ip", launch.main_process_ip,
        "--main_process_port", str(launch.main_process_port),
        str(PROJECT_ROOT / "train.py"),
        *overrides,
        f"hydra.run.dir={quoted_override_value(str(run_dir))}",
    ]  # fmt: skip


def with_auto_resume(overrides: list[str]) -> list[str]:
    """A SLURM job's overrides with `resume=auto` unless the user set `resume`: a job that
    SLURM requeues (preempted, node failure) continues from its newest checkpoint instead of
    failing ("nothing to resume") or starting over."""
    if any(override.lstrip("+~").split("=", 1)[0] == "resume" for override in overrides):
        return overrides
    return [*overrides, "resume=auto"]


def quoted_override_value(value: str) -> str:
    """`value` as a quoted Hydra override value: sweep job folders are named after their
    overrides (`0_ppo.kl_coef=0.1,ppo.cliprange=0.2`), whose `=` and `,` would not parse bare."""
    return "'" + value.replace("'", "\\'") + "'"  # Hydra unescapes only quotes here


def job_port(base: int, job_id: str) -> int:
    """A rendezvous port per SLURM job, so array jobs sharing a node do not collide."""
    digits = re.sub(r"\D", "", job_id)
    return base + (int(digits) % 10000 if digits else 0)


def run_under_accelerate(
    launch: AccelerateLaunch, overrides: list[str], run_dir: Path
) -> tuple[str | None, float | None]:
    """Run train.py under accelerate (output streamed to this job's log); the run's objective
    name and value, or (None, None) on a node other than the first (its main process is
    elsewhere)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    result_file = run_dir / RESULT_FILE
    first_node = launch.machine_rank == 0  # the node of the run's main process
    if first_node:
        result_file.unlink(missing_ok=True)
    env = {**os.environ, RESULT_FILE_ENV: str(result_file)}
    done = subprocess.run(
        accelerate_command(launch, overrides, run_dir), env=env, cwd=PROJECT_ROOT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"accelerate launch exited with code {done.returncode}; run folder {run_dir}"
        )
    if not first_node or not result_file.is_file():
        return None, None
    result = json.loads(result_file.read_text())
    return result.get("objective"), result["result"]
