"""Where a stopped run continues: finding whole checkpoints and checking a resume request.

Light on imports (standard library, rlhf.errors, rlhf.paths), so that `resume=<path>` is checked
before torch loads. Each stage declares one checkpoint layout (rlhf/stages/table.py):
- `PPO_CHECKPOINTS`: `<stage>/checkpoints/update-NNNNNN/` (complete by construction: written to a
  temporary folder and renamed, rlhf/ppo/checkpoint.py);
- `TRL_CHECKPOINTS`: `<stage>/trainer/checkpoint-N/`, written in place by TRL, so a checkpoint
  counts only when its `trainer_state.json`, written last, parses;
- `NO_CHECKPOINTS`: the stage starts over when it did not finish.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlhf.errors import ConfigError
from rlhf.models.safetensors_header import safetensors_problem
from rlhf.paths import resolve_path
from rlhf.runs.folders import RUN_INFO, is_complete

PPO_PREFIX = "update-"
PPO_PATTERN = re.compile(rf"^{PPO_PREFIX}(\d+)$")  # other names in checkpoints/ are not ours
TRL_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"  # the JSON part of a PPO checkpoint, and TRL's own file
PPO_TENSORS_FILE = "trainable.safetensors"  # rlhf/ppo/checkpoint.py writes these three
PPO_TORCH_STATE_FILE = "state.pt"
PPO_START = "start"  # checkpoints/start/: the starting policy that hand_on=best falls back to
TMP_PREFIX = ".tmp-"  # a checkpoint being written (PPO), renamed into place when whole
# where a TRL checkpoint keeps its weights: safetensors files (full model or PEFT adapter), or
# the folders of a DeepSpeed or FSDP engine's sharded state
TRL_WEIGHT_GLOBS = ("*.safetensors", "global_step*", "pytorch_model_fsdp*")


@dataclass
class ResumePoint:
    checkpoint: Path  # the folder to load
    step: int  # update (PPO) or optimiser step (TRL) it was taken after
    run_id: str | None  # the tracker run to continue


def _read_json(path: Path) -> dict | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _state_problem(folder: Path) -> str | None:
    if not (folder / STATE_FILE).is_file():
        return f"no {STATE_FILE}"
    if _read_json(folder / STATE_FILE) is None:
        return f"{STATE_FILE} is not a valid JSON object"
    return None


def ppo_checkpoint_problem(folder: Path) -> str | None:
    """Why a PPO checkpoint folder cannot be resumed from (None: it is whole)."""
    for name in (PPO_TENSORS_FILE, PPO_TORCH_STATE_FILE):
        if not (folder / name).is_file():
            return f"no {name}"
    return (
        safetensors_problem(folder / PPO_TENSORS_FILE)
        or _torch_state_problem(folder / PPO_TORCH_STATE_FILE)
        or _state_problem(folder)
        or _ppo_state_problem(folder)
    )


def _torch_state_problem(path: Path) -> str | None:
    """torch.save writes a zip archive: a truncated or overwritten one has no readable
    directory at its end (checked without torch)."""
    if not zipfile.is_zipfile(path):
        return f"{path.name} is damaged ({path.stat().st_size} bytes, not a whole torch.save file)"
    return None


def _ppo_state_problem(folder: Path) -> str | None:
    """The update a PPO checkpoint was taken after: the step a resumed run continues from."""
    update = (_read_json(folder / STATE_FILE) or {}).get("update")
    if isinstance(update, bool) or not isinstance(update, int) or update < 0:
        return f"{STATE_FILE} has update={update!r}, not a count of updates"
    return None


def trl_checkpoint_problem(folder: Path) -> str | None:
    """Why a TRL checkpoint folder cannot be resumed from (None: it is whole). TRL writes in
    place, `trainer_state.json` last; weights it never wrote would start the model over."""
    problem = _state_problem(folder)
    if problem is not None:
        return problem
    weights = [path for pattern in TRL_WEIGHT_GLOBS for path in folder.glob(pattern)]
    if not weights:
        return f"no weights ({', '.join(TRL_WEIGHT_GLOBS)})"
    for path in weights:
        if path.suffix == ".safetensors" and (problem := safetensors_problem(path)):
            return problem
    return None


class CheckpointLayout:
    """How a stage's checkpoints lie in its folder. This base: a stage without checkpoints."""

    folder: str | None = None  # sub-folder of the stage folder holding them

    def resume_point(self, stage_dir: Path) -> ResumePoint | None:
        """Where the stage continues in `stage_dir`, or None when it holds no whole checkpoint."""
        return None

    def broken(self, stage_dir: Path) -> list[str]:
        """'<folder>: <what is wrong>' for each checkpoint in `stage_dir` that is not whole
        (skipped by `resume_point`, named in the error when none is whole)."""
        return []

    def stray(self, stage_dir: Path) -> list[str]:
        """'<name> (<what it is>)' for each entry of the checkpoint folder that is neither a
        checkpoint nor one of the layout's own files: skipped, and named when nothing is resumed."""
        return []

    def setting(self, stage: str) -> str:
        """The config key that makes `stage` write checkpoints (for the error line)."""
        return "a stage with checkpoints"


def _stray_entries(folder: Path, pattern: re.Pattern, own: tuple[str, ...] = ()) -> list[str]:
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name in own:
            continue
        if pattern.match(entry.name):
            if not entry.is_dir():
                found.append(f"{entry.name} (a file, not a checkpoint folder)")
        elif entry.name.startswith(TMP_PREFIX):
            found.append(f"{entry.name} (a checkpoint whose writing was interrupted)")
        else:
            found.append(f"{entry.name} (not a checkpoint name)")
    return found


class PpoCheckpoints(CheckpointLayout):
    folder = "checkpoints"

    def resume_point(self, stage_dir: Path) -> ResumePoint | None:
        checkpoints = [p for p in ppo_checkpoints(stage_dir) if ppo_checkpoint_problem(p) is None]
        if not checkpoints:
            return None
        state = _read_json(checkpoints[-1] / STATE_FILE) or {}
        return ResumePoint(checkpoints[-1], int(state.get("update", 0)), state.get("run_id"))

    def broken(self, stage_dir: Path) -> list[str]:
        found = ((p, ppo_checkpoint_problem(p)) for p in ppo_checkpoints(stage_dir))
        return [f"{path}: {problem}" for path, problem in found if problem]

    def stray(self, stage_dir: Path) -> list[str]:
        return _stray_entries(stage_dir / self.folder, PPO_PATTERN, own=(PPO_START,))

    def setting(self, stage: str) -> str:
        return f"{stage}.checkpoint.every"


class TrlCheckpoints(CheckpointLayout):
    folder = "trainer"

    def resume_point(self, stage_dir: Path) -> ResumePoint | None:
        found = trl_checkpoint(stage_dir)
        if found is None:
            return None
        info = _read_json(stage_dir / RUN_INFO) or {}
        return ResumePoint(found[0], found[1], info.get("tracker_run_id"))

    def broken(self, stage_dir: Path) -> list[str]:
        found = ((p, trl_checkpoint_problem(p)) for _, p in trl_checkpoints(stage_dir))
        return [f"{path}: {problem}" for path, problem in found if problem]

    def stray(self, stage_dir: Path) -> list[str]:
        # only names like TRL's checkpoints: TRL keeps other files of its own beside them
        found = _stray_entries(stage_dir / self.folder, TRL_PATTERN)
        return [entry for entry in found if entry.startswith(("checkpoint", TMP_PREFIX))]

    def setting(self, stage: str) -> str:
        return f"{stage}.save_steps"


NO_CHECKPOINTS = CheckpointLayout()
PPO_CHECKPOINTS = PpoCheckpoints()
TRL_CHECKPOINTS = TrlCheckpoints()


def ppo_checkpoints(stage_dir: Path) -> list[Path]:
    """Published PPO checkpoint folders (whole or not), oldest first."""
    folder = stage_dir / PPO_CHECKPOINTS.folder
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if p.is_dir() and (m := PPO_PATTERN.match(p.name))
    ]
    return [path for _, path in sorted(found)]


def trl_checkpoints(stage_dir: Path) -> list[tuple[int, Path]]:
    """(global step, folder) of the TRL checkpoint folders (whole or not), newest first."""
    folder = stage_dir / TRL_CHECKPOINTS.folder
    if not folder.is_dir():
        return []
    numbered = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if p.is_dir() and (m := TRL_PATTERN.match(p.name))
    ]
    return sorted(numbered, reverse=True)


def trl_checkpoint(stage_dir: Path) -> tuple[Path, int] | None:
    """The newest whole TRL checkpoint and its global step."""
    for step, path in trl_checkpoints(stage_dir):
        if trl_checkpoint_problem(path) is None:
            return path, step
    return None


def is_auto_resume(resume: bool | str | None) -> bool:
    return isinstance(resume, str) and resume.lower() == "auto"


def resume_run_dir(resume: bool | str | None, output_dir: str) -> Path | None:
    """The run folder a `resume` setting continues (None: a fresh run); `auto` names the run
    folder like `true` (whether there is anything to continue is decided later)."""
    if resume is None or resume is False:
        return None
    if resume is True or str(resume).lower() in ("true", "auto"):
        return Path(output_dir)
    if str(resume).lower() in ("false", "null", "none", ""):
        return None
    return resolve_path(str(resume))


def has_something_to_resume(stages: Sequence[tuple[str, CheckpointLayout]], run_dir: Path) -> bool:
    """True when a stage in `run_dir` is complete, has a whole checkpoint, or (in a pipeline)
    was started: what `resume=auto` continues; anything else starts fresh."""
    if not run_dir.is_dir():
        return False
    for name, layout in stages:
        stage_dir = run_dir / name
        if is_complete(stage_dir) or layout.resume_point(stage_dir) is not None:
            return True
    return False


def check_resumable(
    stages: Sequence[tuple[str, CheckpointLayout]], pipeline: bool, run_dir: Path
) -> None:
    """Stop with one line when there is nothing to resume in `run_dir` for these (stage name,
    layout) pairs: a single stage needs a checkpoint (or to be complete already); a pipeline
    needs at least one stage folder."""
    if not run_dir.is_dir():
        raise ConfigError(f"resume: run folder {run_dir} does not exist")
    for name, layout in stages:
        stage_dir = run_dir / name
        if is_complete(stage_dir) or layout.resume_point(stage_dir) is not None:
            return
        if pipeline and (stage_dir / RUN_INFO).is_file():
            return  # an unfinished stage without a checkpoint starts over
    broken = [problem for name, layout in stages for problem in layout.broken(run_dir / name)]
    stray = [
        f"{run_dir / name / layout.folder}/{entry}"
        for name, layout in stages
        for entry in layout.stray(run_dir / name)
    ]
    skipped = f"; skipped: {'; '.join(stray)}" if stray else ""
    if broken:
        raise ConfigError(
            f"resume: no whole checkpoint in {run_dir}: {'; '.join(broken)}{skipped} (start the "
            "run afresh, or restore the folder)"
        )
    name, layout = stages[0]
    if pipeline or layout.folder is None:
        where, hint = str(run_dir), "a stage with checkpoints"
    else:
        where, hint = f"{run_dir}/{name}/{layout.folder}", layout.setting(name)
    raise ConfigError(
        f"resume: no checkpoint in {where}{skipped} (nothing to resume: pass the stopped run's "
        f"folder as resume=<path>; checkpoints come from {hint})"
    )
