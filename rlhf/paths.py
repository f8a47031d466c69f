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


def folder_path_problem(path: str | os.PathLike, name_max: int = 255) -> str | None:
    """Why `path` cannot be (or become) a folder, without creating it: a name in it is longer
    than the file system allows (`name_max` bytes, the usual limit), or a part of it is a file.
    None: it can."""
    target = resolve_path(path)
    for part in target.parts:
        if len(os.fsencode(part)) > name_max:
            return (
                f"the name {part[:40]}... is {len(os.fsencode(part))} bytes, longer than file "
                f"systems allow ({name_max})"
            )
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir():
        return None
    inside = "" if existing == target else f" ({target} would be inside it)"
    return f"{existing} is a file, not a folder{inside}"
