"""SIGKILL a train.py process as the n-th call of a named function returns: a crash anywhere in
a stage, also where rlhf/runs/faults.py has no named point (in the middle of a PPO update, of an
evaluation, of one process of a distributed launch).

`RLHF_TEST_KILL=<module>:<attribute path>:<n>[:<rank>]`, for example
- `rlhf.ppo.trainer:PPOTrainer._optimizer_step:19`: the 19th optimiser step of PPO has been
  taken, the rest of its update has not, nothing of it is checkpointed;
- `rlhf.stages.eval:answer:1`: the eval stage has the first model's answers, not the second's;
- `...:1` at the end: only the process of rank 1 (`RANK`) of a distributed launch dies.
The call is counted and the kill sent after the function returns, so the process dies with the
call's effects applied in memory and nothing after them done. A function is patched where it is
looked up: a module's global (called through the module) or a class attribute (a method).

    python tests/helpers/kill_points.py <train.py arguments>          # train.py with the kill installed
    accelerate launch ... tests/helpers/kill_points.py <train.py arguments>

tests/helpers/train_forks.py installs it in a forked child whose request sets RLHF_TEST_KILL.
"""

from __future__ import annotations

import functools
import importlib
import os
import runpy
import signal
import sys
from pathlib import Path

ENV = "RLHF_TEST_KILL"
TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"


def install(spec: str, rank: str | None = None) -> bool:
    """Patch the function `spec` names to kill this process on its n-th return; False when the
    spec names another rank (nothing patched)."""
    module_name, path, count, *only_rank = spec.split(":")
    if only_rank and only_rank[0] != (rank or "0"):
        return False
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = [0]

    @functools.wraps(original)
    def killing(*args, **kwargs):
        result = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == int(count):
            sys.stdout.flush(), sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, killing)
    return True


def install_from_env() -> None:
    if os.environ.get(ENV):
        install(os.environ[ENV], os.environ.get("RANK"))


if __name__ == "__main__":  # as `python train.py <arguments>`, with the kill installed
    sys.path[0] = str(TRAIN_PY.parent)  # the project root, not tests/helpers/
    install_from_env()
    sys.argv = [str(TRAIN_PY), *sys.argv[1:]]
    runpy.run_path(str(TRAIN_PY), run_name="__main__")
