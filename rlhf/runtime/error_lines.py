"""From an input error to the one line a user reads (`error: ...`), and exit code 2.

Input errors are `RlhfError`s (rlhf/errors.py), Hydra's or OmegaConf's complaints about the
config (an override Hydra cannot parse is named), and file-system errors a path or the disk
causes (`PATH_ERRORS`: a path through a file, a name too long, a full disk); a bug keeps its
traceback. Used by train.py, the sweep jobs (an error goes into
`job.json`) and the config validation in rlhf/app.py (its close-key suggestions).
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import sys
from collections.abc import Iterator

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from rlhf.errors import RlhfError

EXIT_INPUT_ERROR = 2
# file-system errors that a path in the config or the state of the disk causes, not a bug
PATH_ERRORS = {
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENAMETOOLONG: "a file or folder name is longer than the file system allows (often 255 "
    "bytes): choose a shorter name",
    errno.EEXIST: "a file is in the way of a folder",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is used up",
}


def suggest(full_key: str, known_keys: list[str]) -> str:
    """' (did you mean ...?)' when a close key exists in the same section."""
    leaf = full_key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known_keys, n=1)
    if not close:
        return ""
    prefix = full_key.rsplit(".", 1)[0] + "." if "." in full_key else ""
    return f" (did you mean '{prefix}{close[0]}'?)"


def describe_omegaconf_error(exc: OmegaConfBaseException) -> str:
    full_key = getattr(exc, "full_key", None) or ""
    first_line = str(getattr(exc, "msg", None) or exc).splitlines()[0]
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        parent = exc.parent_node
        known = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
        return f"unknown config key '{full_key}'" + suggest(full_key, known)
    return f"{full_key}: {first_line}" if full_key else first_line


def is_path_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in PATH_ERRORS


def _short_path(path: object) -> str:
    text = str(path)
    return text if len(text) <= 160 else f"{text[:100]}...{text[-50:]}"


def describe_path_error(exc: OSError) -> str:
    where = _short_path(exc.filename) if exc.filename is not None else "writing a file"
    return f"error: {where}: {PATH_ERRORS[exc.errno]} ({exc.strerror})"


def describe_error(exc: BaseException) -> str:
    """One line saying what the user got wrong."""
    if isinstance(exc, RlhfError):
        return f"error: {exc}"
    if isinstance(exc, OverrideParseException):  # Hydra's message, and which override it was
        return f"error: cannot parse the override {exc.override!r}: {' '.join(exc.message.split())}"
    if is_path_error(exc):
        return describe_path_error(exc)
    if isinstance(exc, MissingConfigException):
        text = str(exc).split("Config search path:")[0]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        options = [line for line in lines[1:] if not line.startswith("Available")]
        return f"error: {lines[0]}" + (f" (options: {', '.join(options)})" if options else "")
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException):
        return f"error: {describe_omegaconf_error(cause)}"
    return "error: " + " ".join(str(exc).split())


@contextlib.contextmanager
def one_line_errors(full_traceback: bool) -> Iterator[None]:
    """Input errors → one line on stderr and exit code 2; bugs keep their traceback."""
    try:
        yield
    except (RlhfError, HydraException, OSError) as exc:
        # (Hydra's MissingConfigException is an OSError too)
        known = isinstance(exc, (RlhfError, HydraException)) or is_path_error(exc)
        if full_traceback or not known:
            raise
        print(describe_error(exc), file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
