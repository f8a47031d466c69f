"""`python train.py ...` many times from one warm interpreter, for tests of short runs.

A fresh train.py spends most of a short run importing torch, transformers and TRL. This
server imports them once and then, for each request, forks a child that runs train.py as
`__main__` with the request's arguments, its stdout and stderr going to files: a real process
with its own exit status, Hydra state and output, started in a fraction of a second. The server
itself never computes with torch, so no thread pool is copied into a child half-initialised.

Protocol (one JSON object a line): stdin {"argv": [...], "timeout": seconds, "env": {...}}
(env optional: variables added in the child, e.g. a fault point); stdout
{"returncode": int, "stdout": str, "stderr": str, "timed_out": bool}. A child still running at
its timeout is killed (SIGKILL), as `subprocess.run(timeout=...)` kills a fresh process.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"
sys.path[0] = str(TRAIN_PY.parent)  # as for `python train.py`: the project root, not tests/helpers/


def preload() -> None:
    """What every stage imports: the cost a fresh train.py pays before its first line of work."""
    import datasets  # noqa: F401
    import hydra  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import rlhf.app  # noqa: F401
    import rlhf.pipeline  # noqa: F401
    import rlhf.reporting.plots  # noqa: F401  (matplotlib: every PPO run plots)
    from rlhf.stages.table import STAGES

    for (
        declaration
    ) in STAGES.values():  # the runners import lazily: PEFT's model zoo, TRL's trainers
        declaration.load_runner()


def exit_status(code: object) -> int:
    """The status Python's own exit gives `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_child(
    argv: list[str], stdout_path: str, stderr_path: str, env: dict[str, str] | None = None
) -> None:
    """In the forked child: train.py as __main__ with `argv` (and `env` added to its
    environment, with a kill point when it sets RLHF_TEST_KILL: tests/helpers/kill_points.py), then exit
    with its status."""
    # the exit hooks registered so far are the server's (W&B's media folder, for one): run in
    # a child they would delete what the next child needs. The child's own hooks still run.
    atexit._clear()
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
    os.environ.update(env or {})
    sys.argv = [str(TRAIN_PY), *argv]
    status = 0
    try:
        from tests.helpers.kill_points import install_from_env

        install_from_env()
        runpy.run_path(str(TRAIN_PY), run_name="__main__")
    except SystemExit as stop:
        status = exit_status(stop.code)
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        atexit._run_exitfuncs()  # what interpreter shutdown would run (the child's own)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def check_single_threaded() -> None:
    """fork() copies only the calling thread: a lock held by another thread (a thread pool's,
    a logger's) would stay locked forever in the child. Importing must not have started one."""
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        raise RuntimeError(f"train_forks: threads {others} exist before fork; refusing to fork")


def wait_with_timeout(pid: int, timeout: float) -> tuple[int, bool]:
    """(wait status, timed out) of a child, killed with SIGKILL once `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            return wait_status, False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1], True
        time.sleep(0.05)


def serve() -> None:
    preload()
    reply = os.fdopen(os.dup(1), "w")  # children's fd 1 is theirs; answers go here
    # not a TemporaryDirectory: a child must not be able to remove it
    scratch = Path(tempfile.mkdtemp(prefix="train_forks_"))
    out, err = scratch / "stdout", scratch / "stderr"
    try:
        for line in sys.stdin:
            request = json.loads(line)
            out.write_text(""), err.write_text("")
            check_single_threaded()
            pid = os.fork()
            if pid == 0:
                run_child(request["argv"], str(out), str(err), request.get("env"))
            wait_status, timed_out = wait_with_timeout(pid, request["timeout"])
            answer = {
                "returncode": os.waitstatus_to_exitcode(wait_status),
                "stdout": out.read_text(errors="replace"),
                "stderr": err.read_text(errors="replace"),
                "timed_out": timed_out,
            }
            reply.write(json.dumps(answer) + "\n")
            reply.flush()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    serve()
