"""Where things are: the project root, and how relative paths in configs are read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: str | os.PathLike) -> Path:
    """Absolute and `~` paths as given; relative ones against the project root, so a config means
    the same file from any working directory."""
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else PROJECT_ROOT / expanded


def publish_dir(tmp: Path, final: Path) -> Path:
    """Move a fully written folder into place in one rename, so readers never see half of it."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def publish_dir_once(tmp: Path, final: Path) -> Path:
    """Move a fully written folder into place unless another process already has: caches that
    several processes of one launch may fill at once. The first rename wins; replacing a
    published folder would pull it from under a process already reading it."""
    try:
        os.rename(tmp, final)  # fails on a non-empty `final`: someone else published first
    except OSError:
        if not final.is_dir() or not any(final.iterdir()):
            raise
    return final
