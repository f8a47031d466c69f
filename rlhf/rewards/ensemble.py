"""`reward.kind: ensemble`: several reward models scored together, aggregated per answer.

Coste et al. 2024 ("Reward model ensembles help mitigate overoptimization") found that PPO
against the worst case of an RM ensemble (`min`), or its mean minus a multiple of the members'
spread (`mean_minus_std`, their uncertainty-weighted objective with a standard deviation in
place of a variance), keeps the gold reward up where a single RM's is optimised away: an answer
the members disagree on is one the policy found in a gap of the data. `members` are RM folders
or glob patterns over them, such as the RM folders of a finished multirun
(`outputs/overopt_proxies/multirun/*/*/rm/model`); folders reached twice (two jobs that reused
one cached RM) count once. Each member scores the whole batch in one call.
"""

from __future__ import annotations

import glob
from pathlib import Path

import torch

from rlhf.errors import ConfigError
from rlhf.paths import resolve_path


def aggregate(scores: torch.Tensor, how: str, std_coef: float) -> torch.Tensor:
    """Member scores (M, N) → (N,): their mean, their minimum, or mean − std_coef · std, with
    std the population standard deviation over the M members (0 for one member)."""
    if how == "min":
        return scores.min(dim=0).values
    mean = scores.mean(dim=0)
    if how == "mean":
        return mean
    std = ((scores - mean) ** 2).mean(dim=0).sqrt()
    return mean - std_coef * std


def member_folders(members: list[str], key: str) -> list[Path]:
    """Each entry of `members` as RM folders: a folder, or a glob pattern (`*`, `?`, `[`) whose
    matches are the folders, in sorted order; duplicates (by resolved path) dropped. A missing
    folder, a pattern matching none, or a folder without a model's config.json is a ConfigError
    naming `<key>[<i>]`."""
    folders: dict[Path, Path] = {}
    for index, entry in enumerate(members):
        where = f"{key}[{index}]"
        path = resolve_path(entry)
        if glob.has_magic(entry):
            found = [Path(p) for p in sorted(glob.glob(str(path)))]
            if not found:
                raise ConfigError(f"{where}: pattern {entry!r} matches no folder ({path})")
        else:
            if not path.is_dir():
                raise ConfigError(f"{where}: folder {path} does not exist")
            found = [path]
        for folder in found:
            if not (folder / "config.json").is_file():
                raise ConfigError(
                    f"{where}: {folder} is not a reward model folder (no config.json)"
                )
            folders.setdefault(folder.resolve(), folder)
    return list(folders.values())
