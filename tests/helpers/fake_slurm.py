"""A SLURM cluster of one machine, for testing real submissions: `sbatch`, `srun`, `sacct` and
`scancel` as submitit calls them, every node of a job being this machine.

`install(bin_dir, state_dir)` writes the four commands; with `bin_dir` first on PATH, submitit's
SLURM executor (and so hydra-submitit-launcher) submits to it. `sbatch` reads the script's
`#SBATCH` lines (array, nodes, ntasks-per-node), answers "Submitted batch job N" and runs the
array's tasks one after another in the background, each with the SLURM_* variables a node's
task sees. `srun` starts nodes × tasks-per-node copies of its command at once (so multi-node
rendezvous really happens, on 127.0.0.1), output to its --output / --error patterns. `sacct`
reports PENDING, RUNNING, COMPLETED or FAILED from the state folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "scancel")
STATE_ENV = "FAKE_SLURM_STATE"


def install(bin_dir: Path, state_dir: Path) -> dict[str, str]:
    """Write the commands into `bin_dir`; the environment variables that put them in use."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for command in COMMANDS:
        script = bin_dir / command
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" {command} "$@"\n')
        script.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", STATE_ENV: str(state_dir)}


def state_dir() -> Path:
    return Path(os.environ[STATE_ENV])


def sbatch_options(script: Path) -> dict[str, str]:
    """`#SBATCH --key=value` lines of a batch script."""
    options = {}
    for line in script.read_text().splitlines():
        if match := re.match(r"#SBATCH --([\w-]+)(?:=(.*))?$", line.strip()):
            options[match[1]] = match[2] or ""
    return options


def set_state(job: str, state: str) -> None:
    (state_dir() / f"{job}.state").write_text(state)


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    options = sbatch_options(script)
    counter = state_dir() / "next_job_id"
    job_id = int(counter.read_text()) if counter.exists() else 1000
    counter.write_text(str(job_id + 1))
    array = options.get("array")
    tasks = range(int(re.match(r"0-(\d+)", array)[1]) + 1) if array else [None]
    for task in tasks:
        set_state(f"{job_id}_{task}" if task is not None else str(job_id), "PENDING")
    subprocess.Popen(
        [sys.executable, __file__, "_run", str(script), str(job_id), json.dumps(list(tasks))],
        start_new_session=True,  # the cluster outlives the submitting process
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print(f"Submitted batch job {job_id}")
    return 0


def run_jobs(script: Path, job_id: int, tasks: list[int | None]) -> int:
    """The scheduler: the array's tasks in turn, each as `bash <script>` on its 'nodes'."""
    options = sbatch_options(script)
    nodes = int(options.get("nodes", 1))
    for index, task in enumerate(tasks):
        name = f"{job_id}_{task}" if task is not None else str(job_id)
        env = {
            **os.environ,
            "SLURM_JOB_ID": str(job_id + index),
            "SLURM_JOB_NUM_NODES": str(nodes),
            "SLURM_JOB_NODELIST": ",".join(["localhost"] * nodes),
            "SLURM_NTASKS_PER_NODE": options.get("ntasks-per-node", "1"),
        }
        if task is not None:
            env |= {"SLURM_ARRAY_JOB_ID": str(job_id), "SLURM_ARRAY_TASK_ID": str(task)}
        set_state(name, "RUNNING")
        done = subprocess.run(["bash", str(script)], env=env, check=False)
        set_state(name, "COMPLETED" if done.returncode == 0 else "FAILED")
    return 0


def output_path(pattern: str, task_rank: int) -> str:
    env = os.environ
    return (
        pattern.replace("%A", env.get("SLURM_ARRAY_JOB_ID", ""))
        .replace("%a", env.get("SLURM_ARRAY_TASK_ID", ""))
        .replace("%j", env["SLURM_JOB_ID"])
        .replace("%t", str(task_rank))
    )


def srun(args: list[str]) -> int:
    """Every task of the job at once: node i runs tasks i·per_node ... with SLURM_NODEID=i."""
    flags = {}
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag in ("--output", "--error", "--cpu-bind"):
            flags[flag] = args.pop(0)
    nodes = int(os.environ["SLURM_JOB_NUM_NODES"])
    per_node = int(os.environ["SLURM_NTASKS_PER_NODE"])
    running = []
    for rank in range(nodes * per_node):
        env = {
            **os.environ,
            "SLURM_NODEID": str(rank // per_node),
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank % per_node),
            "SLURM_NTASKS": str(nodes * per_node),
        }
        stdout = open(output_path(flags["--output"], rank), "a")  # noqa: SIM115 (kept open)
        stderr = open(output_path(flags["--error"], rank), "a") if "--error" in flags else stdout  # noqa: SIM115
        running.append(subprocess.Popen(args, env=env, stdout=stdout, stderr=stderr))
    return max(abs(task.wait()) for task in running)


def sacct(args: list[str]) -> int:
    jobs = [args[i + 1] for i, arg in enumerate(args) if arg == "-j"]
    print("JobID|State|NodeList")
    for path in sorted(state_dir().glob("*.state")):
        if path.stem.split("_")[0] in jobs:
            print(f"{path.stem}|{path.read_text()}|localhost")
    return 0


def main() -> int:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "_run":
        return run_jobs(Path(args[0]), int(args[1]), json.loads(args[2]))
    if command == "scancel":
        return 0
    return {"sbatch": sbatch, "srun": srun, "sacct": sacct}[command](args)


if __name__ == "__main__":
    sys.exit(main())
