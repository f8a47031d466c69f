"""Fault injection for the resume tests: kill this process at a named point, as a crash would.

`RLHF_FAULT=<stage>:<point>:<step>` (e.g. `ppo:after_checkpoint:3`) sends SIGKILL to the process
when `<stage>` reaches `<point>` at step `<step>`; unset, nothing happens. Points:
`after_checkpoint` (a checkpoint was published) and `during_checkpoint` (half of its files are
written to the temporary folder). SIGKILL cannot be caught, so nothing gets to clean up.
"""

from __future__ import annotations

import os
import signal

ENV = "RLHF_FAULT"


def maybe_kill(stage: str, point: str, step: int) -> None:
    if os.environ.get(ENV) == f"{stage}:{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
