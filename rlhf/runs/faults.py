"""Fault injection for the resume tests: kill this process at a named point, as a crash would.

`RLHF_FAULT=<stage>:<point>:<step>` (e.g. `ppo:after_checkpoint:3`) sends SIGKILL to the process
when `<stage>` reaches `<point>` at step `<step>`; unset, nothing happens. Points:
`after_checkpoint` (a checkpoint was published) and `during_checkpoint` (half of its files are
written to the temporary folder). SIGKILL cannot be caught, so nothing gets to clean up.
`disk_full_during_checkpoint` raises the OSError a full disk gives (ENOSPC) at the point of
`during_checkpoint` instead: the stage must fail with one line and keep the previous checkpoint.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

ENV = "RLHF_FAULT"


def maybe_kill(stage: str, point: str, step: int) -> None:
    if os.environ.get(ENV) == f"{stage}:{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_fail_write(stage: str, point: str, step: int, path: Path) -> None:
    """Raise the error a full disk gives while writing `path`, at the named point."""
    if os.environ.get(ENV) == f"{stage}:{point}:{step}":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
