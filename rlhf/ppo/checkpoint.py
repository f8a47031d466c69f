"""PPO checkpoints: what it takes to continue a run exactly, written whole or not at all.

`<stage>/checkpoints/update-NNNNNN/` holds
- `trainable.safetensors`: every trained tensor (the LoRA adapter or the full policy, the critic or
  value head); frozen weights (base, reference) come from the run's starting point;
- `state.pt`: optimiser, scheduler and RNG states (python, numpy, torch, the trainer's own
  generators; one set per process), read back with `torch.load(weights_only=True)`: no pickled
  code runs on load;
- `trainer_state.json`: update count, data position, KL controller, score normaliser, health
  history, best metric so far and the tracker's run id.
A checkpoint is written into `.tmp-update-NNNNNN/` and renamed into place, so a process killed
during the write leaves the previous checkpoint whole and the half-written folder is ignored
(and removed by the next run). Before writing, every trained tensor and optimiser moment must be
finite: a poisoned state is never saved. Older checkpoints are pruned to `keep_last`; the best by
`best_metric` is kept besides and named in `<stage>/best_checkpoint.json`.

The trainer's `state_dict()` / `load_state_dict()` are all this module reads and writes.
Several processes (rlhf/runtime/distributed.py): weights, optimiser, scheduler, data order, KL
controller, score normaliser and health history are the same on every process, so the main
process writes them once; the RNG states differ (each process samples its own answers) and are
gathered, one set per process. A resume restores each process's own set, and so needs the
number of processes the checkpoint was written with (anything else stops with one line).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from rlhf.config import CheckpointConfig
from rlhf.errors import ConfigError, NumericError
from rlhf.paths import publish_dir
from rlhf.runs.faults import maybe_fail_write, maybe_kill
from rlhf.runs.resume import (
    PPO_PREFIX,
    PPO_TENSORS_FILE,
    PPO_TORCH_STATE_FILE,
    STATE_FILE,
    ppo_checkpoints,
)
from rlhf.runtime import distributed

log = logging.getLogger(__name__)

TENSORS_FILE = PPO_TENSORS_FILE
TORCH_STATE_FILE = PPO_TORCH_STATE_FILE
BEST_FILE = "best_checkpoint.json"
JSON_STATE = ("update", "data_order", "kl_controller", "score_processor", "health")


class Checkpointable(Protocol):
    """What a checkpoint is taken of (rlhf/ppo/trainer.py's PPOTrainer)."""

    update: int  # updates done

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_not_poisoned(state: dict[str, Any]) -> None:
    """Refuse to save non-finite weights or optimiser moments."""
    update = state["update"]
    for name, tensor in state["trainable"].items():
        if not torch.isfinite(tensor).all():
            raise NumericError(
                f"update {update}, phase checkpoint: non-finite {name}; "
                "no checkpoint written from a poisoned state"
            )
    moments = [
        value
        for entry in (state["optimizer"] or {}).get("state", {}).values()
        for value in entry.values()
        if torch.is_tensor(value) and value.is_floating_point()
    ]
    # sharded moments (ppo.shard_optimizer) sit on the main process: every process takes its verdict
    if distributed.any_process(any(not torch.isfinite(m).all() for m in moments)):
        raise NumericError(
            f"update {update}, phase checkpoint: non-finite optimiser state; "
            "no checkpoint written from a poisoned state"
        )


def save_checkpoint(trainer: Checkpointable, folder: Path, json_state: dict) -> Path:
    """Write a checkpoint of `trainer` to `folder` via a temporary folder and one rename. Every
    process calls it (the RNG states are gathered); the main process writes."""
    state = trainer.state_dict()
    check_not_poisoned(state)  # the same state, so the same verdict, everywhere
    rngs = distributed.gather_objects(state["rng"])
    if distributed.is_main_process():
        _write_checkpoint(state, folder, rngs, json_state)
    distributed.barrier()  # no process runs ahead of a checkpoint still being written
    return folder


def _write_checkpoint(
    state: dict[str, Any], folder: Path, rngs: list[dict], json_state: dict
) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state["trainable"].items()}
    save_file(tensors, tmp / TENSORS_FILE)
    maybe_kill("ppo", "during_checkpoint", state["update"])
    maybe_fail_write("ppo", "disk_full_during_checkpoint", state["update"], tmp / TORCH_STATE_FILE)
    torch.save(
        {
            "optimizer": state["optimizer"],
            "scheduler": state["scheduler"],
            "rng": rngs[0],
            **({"rng_by_process": rngs} if len(rngs) > 1 else {}),
        },
        tmp / TORCH_STATE_FILE,
    )
    written = {key: state[key] for key in JSON_STATE}
    (tmp / STATE_FILE).write_text(
        json.dumps({**written, "processes": len(rngs), **json_state}, indent=2)
    )
    return publish_dir(tmp, folder)


def load_checkpoint(trainer: Checkpointable, folder: Path) -> dict:
    """Put `trainer` back in the state saved in `folder`; returns the JSON state. Each process
    loads the shared state and its own RNG states."""
    state = json.loads((folder / STATE_FILE).read_text())
    processes = state.get("processes", 1)
    if processes != distributed.world_size():
        raise ConfigError(
            f"resume: checkpoint {folder} was written by {processes} process(es), this run has "
            f"{distributed.world_size()}; resume with --num_processes {processes} (each process "
            "continues its own random streams)"
        )
    saved = torch.load(folder / TORCH_STATE_FILE, map_location="cpu", weights_only=True)
    rng = saved["rng_by_process"][distributed.rank()] if processes > 1 else saved["rng"]
    try:
        trainer.load_state_dict(
            {
                **{key: state[key] for key in JSON_STATE},
                "trainable": load_file(folder / TENSORS_FILE),
                "optimizer": saved["optimizer"],
                "scheduler": saved["scheduler"],
                "rng": rng,
            }
        )
    except ConfigError as exc:  # the trained tensors differ: another model or LoRA setting
        raise ConfigError(
            f"resume: checkpoint {folder} {exc}; resume with the config the run started with"
        ) from exc
    return state


class Checkpointer:
    """Saves after updates (every N, the last, and each new best), prunes, and resumes."""

    def __init__(
        self, config: CheckpointConfig, stage_dir: Path, total_updates: int, run_id: str | None
    ):
        self.config, self.total_updates, self.run_id = config, total_updates, run_id
        self.stage_dir = stage_dir
        self.folder = stage_dir / "checkpoints"
        self.best: dict | None = None
        self.main = distributed.is_main_process()  # the one that writes; all keep `best`
        if self.main:
            for leftover in self.folder.glob(".tmp-*"):  # a write that a kill interrupted
                shutil.rmtree(leftover, ignore_errors=True)

    def latest(self) -> Path | None:
        found = ppo_checkpoints(self.stage_dir)
        return found[-1] if found else None

    def resume(self, trainer: Checkpointable, folder: Path) -> None:
        state = load_checkpoint(trainer, folder)
        self.best = state.get("best")
        log.info("resumed from %s (update %d)", folder, trainer.update)

    def _is_better(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.config.best_mode == "max":
            return value > self.best["value"]
        return value < self.best["value"]

    def after_update(self, trainer: Checkpointable, metrics: dict[str, float]) -> Path | None:
        update, every = trainer.update, self.config.every
        if every == 0:  # checkpoints off: the stage still saves the final model
            return None
        metric = self.config.best_metric
        is_best = metric is not None and metric in metrics and self._is_better(metrics[metric])
        due = update >= self.total_updates or update % every == 0
        if not (due or is_best):
            return None
        folder = self.folder / f"{PPO_PREFIX}{update:06d}"
        best = self.best
        if is_best:
            best = {"checkpoint": str(folder.relative_to(self.stage_dir)), "update": update,
                    "metric": metric, "value": metrics[metric]}  # fmt: skip
        save_checkpoint(trainer, folder, {"run_id": self.run_id, "best": best})
        if is_best:
            self.best = best
        if self.main:
            if is_best:
                tmp = self.stage_dir / f".{BEST_FILE}.tmp"
                tmp.write_text(json.dumps(best, indent=2))
                tmp.replace(self.stage_dir / BEST_FILE)
            self.prune()
        maybe_kill("ppo", "after_checkpoint", update)
        return folder

    def prune(self) -> None:
        checkpoints = ppo_checkpoints(self.stage_dir)
        keep = {p.name for p in checkpoints[-self.config.keep_last :]}
        if self.best is not None:
            keep.add(Path(self.best["checkpoint"]).name)
        for path in checkpoints:
            if path.name not in keep:
                shutil.rmtree(path)
