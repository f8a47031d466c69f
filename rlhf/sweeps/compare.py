"""`python -m rlhf.compare <multirun folder>`: a table, the seed summary and plots over a sweep.

The command line: its arguments checked before anything is read or written (each bad one is one
`error: ...` line and exit code 2), then rlhf/sweeps/report.py writes the report; a job whose
files cannot be read is reported as unreadable and the exit code is 3.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from pathlib import Path
from typing import NoReturn

from rlhf.runtime.error_lines import EXIT_INPUT_ERROR
from rlhf.sweeps.jobs import job_dirs
from rlhf.sweeps.report import compare, heat_grid, pareto_front, penalised_score
from rlhf.sweeps.results import KL, SCORE, UNREADABLE, load_sweep

__all__ = [  # what tests and scripts use from here
    "KL", "SCORE", "compare", "heat_grid", "job_dirs", "load_sweep", "main", "pareto_front",
    "penalised_score",
]  # fmt: skip

EXIT_UNREADABLE_JOB = 3
EPILOG = f"""writes (into SWEEP_DIR/compare/ or --out): table.md (also printed), table.csv, seeds.csv,
curves.png, frontier.png, heatmap.png (overopt.png with a judge); and, when the jobs logged to
W&B, one summary run per setting (job type "summary") in the sweep's W&B group.

exit codes:
  0  the report is written and every job folder was read
  {EXIT_INPUT_ERROR}  a bad argument, or an output folder that cannot be written: one "error:" line on
     stderr, nothing written
  {EXIT_UNREADABLE_JOB}  the report is written, but a job's job.json, .hydra/config.yaml, run_info.json or
     metrics.jsonl could not be read (corrupt, another encoding): its row says "unreadable" and
     names the file, and the job is left out of every statistic
"""


class BadArgument(Exception):
    """A bad argument; its message is the line after "error: "."""


class Parser(argparse.ArgumentParser):
    """argparse with its complaints as one `error: ...` line (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise BadArgument(message)


def _shown(path: Path) -> str:
    """A path as text any terminal takes (a name in another encoding holds surrogates)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _stat(path: Path, what: str) -> os.stat_result | None:
    """The path's stat; None when nothing is there; BadArgument when it cannot be reached."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise BadArgument(
            f"{what}{_shown(path)}: a part of the path is a file, not a folder"
        ) from None
    except OSError as exc:
        raise BadArgument(f"{what}{_shown(path)}: {exc.strerror}") from None


def path_argument(text: str) -> Path:
    """A path argument; an empty one would be the current folder (Path("") == Path("."))."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return Path(text)


def check_sweep_dir(path: Path) -> None:
    found = _stat(path, "")
    if found is None:
        raise BadArgument(f"{_shown(path)} is not a folder")
    if not stat.S_ISDIR(found.st_mode):
        raise BadArgument(f"{_shown(path)} is a file, not a folder: give the multirun folder")
    try:
        jobs = job_dirs(path)
    except OSError as exc:
        raise BadArgument(f"{_shown(path)} cannot be read: {exc.strerror}") from None
    if not jobs:
        raise BadArgument(f"{_shown(path)} holds no Hydra job folders (is it a multirun folder?)")


def check_out_dir(path: Path) -> None:
    """The output folder is a folder, or can be made: no file on its path, writable."""
    found = _stat(path, "--out ")
    if found is not None and not stat.S_ISDIR(found.st_mode):
        raise BadArgument(f"--out {_shown(path)} is a file, not a folder")
    existing = path
    while found is None:  # the nearest folder that exists: the output folder is made in it
        existing = existing.parent
        found = _stat(existing, "--out ")
    if not stat.S_ISDIR(found.st_mode):
        raise BadArgument(
            f"--out {_shown(path)}: a part of the path ({_shown(existing)}) is a file, not a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadArgument(f"--out {_shown(path)}: {_shown(existing)} is not writable")


def _write_error(exc: OSError, out_dir: Path) -> str:
    where = _shown(Path(exc.filename)) if exc.filename else _shown(out_dir)
    if exc.errno == errno.EISDIR:
        return f"cannot write the report: {where}: a folder is in the way of a file"
    return f"cannot write the report into {_shown(out_dir)}: {where}: {exc.strerror}"


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m rlhf.compare",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep_dir", type=path_argument, help="a Hydra multirun folder")
    parser.add_argument(
        "--out", type=path_argument, help="where to write (default: <sweep_dir>/compare)"
    )
    parser.add_argument(
        "--no-wandb",
        action="store_true",
        help="write no W&B summary runs (default: one per setting when the jobs logged to W&B)",
    )
    try:
        args = parser.parse_args(argv)
        check_sweep_dir(args.sweep_dir)
        out_dir = args.sweep_dir / "compare" if args.out is None else args.out
        check_out_dir(out_dir)
    except BadArgument as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    try:
        rows = compare(args.sweep_dir, out_dir, wandb=not args.no_wandb)
    except OSError as exc:  # the output folder or a file in it: nothing was moved into place
        print(f"error: {_write_error(exc, out_dir)}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    print((out_dir / "table.md").read_text(encoding="utf-8"), end="")
    counts = {s: sum(row["status"] == s for row in rows) for s in ("complete", "running", "failed")}
    unreadable = [row for row in rows if row["status"] == UNREADABLE]
    if unreadable:
        counts[UNREADABLE] = len(unreadable)
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"\n{len(rows)} jobs ({summary}); table and plots in {_shown(out_dir)}")
    for row in unreadable:
        print(
            f"{UNREADABLE}: job {row['job']} ({row['overrides']}): {row['error']}", file=sys.stderr
        )
    return EXIT_UNREADABLE_JOB if unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
