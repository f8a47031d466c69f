"""From an input error to the one line a user reads (`error: ...`), and exit code 2.

Input errors are `RlhfError`s (rlhf/errors.py) and Hydra's or OmegaConf's complaints about the
config; a bug keeps its traceback. Used by train.py, the sweep jobs (an error goes into
`job.json`) and the config validation in rlhf/app.py (its close-key suggestions).
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Iterator

from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from rlhf.errors import RlhfError

EXIT_INPUT_ERROR = 2


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


def describe_error(exc: BaseException) -> str:
    """One line saying what the user got wrong."""
    if isinstance(exc, RlhfError):
        return f"error: {exc}"
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
    except (RlhfError, HydraException) as exc:
        if full_traceback:
            raise
        print(describe_error(exc), file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
