"""PPO checkpoints: what it takes to continue a run exactly, written whole or not at all.

`<stage>/checkpoints/update-NNNNNN/` holds
- `trainable.safetensors`: every trained tensor (the LoRA adapter or the full policy, the critic or
  value head); frozen weights (base, reference) come from the run's starting point;
- `state.pt`: optimiser, scheduler and RNG states (python, numpy, torch, the trainer's own
  generators; one set per process), read back with `torch.load(weights_only=True)`: no pickled
  code runs on load;
- `trainer_state.json`: update count, data position, KL controller, score normaliser, health
  history, hacking guard, critic value offset, best checkpoint so far (and the checkpoints left
  out of the choice) and the tracker's run id.
A checkpoint is written into `.tmp-update-NNNNNN/` and renamed into place, so a process killed
during the write leaves the previous checkpoint whole and the half-written folder is ignored
(and removed by the next run). Before writing, every trained tensor and optimiser moment must be
finite: a poisoned state is never saved. Older checkpoints are pruned to `keep_last`; the best by
`best_metric` is kept besides and named in `<stage>/best_checkpoint.json`.

Which policy the stage hands on (`ppo.checkpoint.hand_on`):
- `best` (default): the best checkpoint's. Candidates are the updates whose logged metrics hold
  `best_metric` (with the default, the held-out evaluations); a better value replaces the best
  only when strictly better, so of equal values the earlier checkpoint wins (the same score
  with less drift from the reference). With `max_top_phrase_share` set, an evaluation whose
  `ppo/eval/top_phrase_share` is above it (answers collapsed onto one phrase) is never the
  best, nor is an update that was not evaluated. The starting policy (the evaluation before
  update 1) does not compete: it is the eval stage's baseline. It is the fallback when the
  bound left out every evaluated checkpoint: its weights are saved then, before update 1, in
  `<stage>/checkpoints/start/`. With no candidate at all (no evaluation ran), the last update's.
- `last`: the last update's policy, whatever the best.

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
import math
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
LATER_JSON_STATE = ("guard", "value_offset")  # absent from older checkpoints
START = "start"  # checkpoints/start/: the starting policy, the fallback of hand_on=best
TOP_PHRASE = "ppo/eval/top_phrase_share"


class Checkpointable(Protocol):
    """What a checkpoint is taken of (rlhf/ppo/trainer.py's PPOTrainer)."""

    update: int  # updates done

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def load_trainable(self, tensors: dict[str, torch.Tensor]) -> None: ...


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
    written = {key: state[key] for key in JSON_STATE + LATER_JSON_STATE if key in state}
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
                **{key: state[key] for key in LATER_JSON_STATE if key in state},
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
    """Saves after updates (every N, the last, and each new best), prunes, resumes, and picks
    the policy the stage hands on (`kept`, `hand_on`)."""

    def __init__(
        self, config: CheckpointConfig, stage_dir: Path, total_updates: int, run_id: str | None
    ):
        self.config, self.total_updates, self.run_id = config, total_updates, run_id
        self.stage_dir = stage_dir
        self.folder = stage_dir / "checkpoints"
        metric = config.best_metric
        # `auto` resolved without a Config (tests, sessions): the reward's held-out score
        self.metric = "ppo/eval/score" if metric == config.AUTO else metric
        self.best: dict | None = None
        self.candidates = 0  # updates scored by the metric (eligible or not)
        self.excluded: list[dict] = []  # {update, top_phrase_share} above max_top_phrase_share
        self.start: dict | None = None  # the starting policy's snapshot (checkpoints/start/)
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
        selection = state.get("selection") or {}
        self.candidates = selection.get("candidates", 0)
        self.excluded = list(selection.get("excluded", []))
        self.start = selection.get("start")
        log.info("resumed from %s (update %d)", folder, trainer.update)

    def _is_better(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.config.best_mode == "max":
            return value > self.best["value"]
        return value < self.best["value"]

    def _candidate(self, update: int, metrics: dict[str, float]) -> float | None:
        """This update's value of the metric when it may be the best, else None (not scored,
        not finite, or above max_top_phrase_share: recorded in `excluded`)."""
        value = metrics.get(self.metric) if self.metric is not None else None
        if value is None or not math.isfinite(value):
            return None
        self.candidates += 1
        bound = self.config.max_top_phrase_share
        if bound is None:
            return value
        share = metrics.get(TOP_PHRASE)
        if share is None or share > bound:
            self.excluded.append({"update": update, "top_phrase_share": share})
            return None
        return value

    def _selection(self) -> dict:
        return {"candidates": self.candidates, "excluded": self.excluded, "start": self.start}

    def at_start(self, trainer: Checkpointable, metrics: dict[str, float]) -> None:
        """After the evaluation before update 1: with hand_on=best and max_top_phrase_share set,
        save the starting policy (the fallback when the bound leaves out every checkpoint)."""
        c = self.config
        if c.hand_on != "best" or c.max_top_phrase_share is None or c.every == 0:
            return
        folder = self.folder / START
        held_out = {k: v for k, v in metrics.items() if k.startswith("ppo/eval/")}
        self.start = {"checkpoint": str(folder.relative_to(self.stage_dir)), "update": 0,
                      "held_out": held_out}  # fmt: skip
        save_checkpoint(trainer, folder, {"run_id": self.run_id, "best": None})

    def after_update(self, trainer: Checkpointable, metrics: dict[str, float]) -> Path | None:
        update, every = trainer.update, self.config.every
        if every == 0:  # checkpoints off: the stage still saves the final model
            return None
        value = self._candidate(update, metrics)
        is_best = value is not None and self._is_better(value)
        due = update >= self.total_updates or update % every == 0
        if not (due or is_best):
            return None
        folder = self.folder / f"{PPO_PREFIX}{update:06d}"
        best = self.best
        if is_best:
            held_out = {k: v for k, v in metrics.items() if k.startswith("ppo/eval/")}
            best = {"checkpoint": str(folder.relative_to(self.stage_dir)), "update": update,
                    "metric": self.metric, "value": value, "held_out": held_out}  # fmt: skip
        state = {"run_id": self.run_id, "best": best, "selection": self._selection()}
        save_checkpoint(trainer, folder, state)
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

    def kept(self) -> dict[str, Any]:
        """What the stage hands on: `checkpoint` (folder under the stage; None: the model as the
        last update left it), `update` (None: the last), `reason` (one sentence) and `held_out`
        (the kept checkpoint's held-out metrics; empty for the last update)."""
        c, metric = self.config, self.metric
        if c.hand_on == "last":
            return _kept(None, None, "ppo.checkpoint.hand_on=last")
        left_out = ""
        if self.excluded:
            updates = ", ".join(str(e["update"]) for e in self.excluded)
            left_out = (
                f"; left out for a top phrase share above ppo.checkpoint.max_top_phrase_share "
                f"{c.max_top_phrase_share:g}: update(s) {updates}"
            )
        if self.best is not None:
            best = self.best
            reason = (
                f"the best {metric} ({best['value']:.4g}, best_mode={c.best_mode}, ties to the "
                f"earlier) of {self.candidates} scored update(s){left_out}"
            )
            return _kept(best["checkpoint"], best["update"], reason, best.get("held_out", {}))
        if self.excluded and self.start is not None:
            reason = f"the starting policy: no scored update was eligible{left_out}"
            return _kept(self.start["checkpoint"], 0, reason, self.start["held_out"])
        if self.excluded:
            reason = f"no scored update was eligible, and no starting policy was saved{left_out}"
            return _kept(None, None, f"the last update: {reason}")
        why = "best_metric is null" if metric is None else f"no update was scored by {metric}"
        return _kept(None, None, f"the last update: {why}")

    def hand_on(self, trainer: Checkpointable) -> dict[str, Any]:
        """Put the kept checkpoint's trained weights (policy and critic) into `trainer`'s model,
        on every process; returns `kept()` with `update` filled in."""
        kept = self.kept()
        if kept["checkpoint"] is not None:
            trainer.load_trainable(load_file(self.stage_dir / kept["checkpoint"] / TENSORS_FILE))
        if kept["update"] is None:
            kept["update"] = trainer.update
        return kept

    def prune(self) -> None:
        checkpoints = ppo_checkpoints(self.stage_dir)
        keep = {p.name for p in checkpoints[-self.config.keep_last :]}
        if self.best is not None:
            keep.add(Path(self.best["checkpoint"]).name)
        for path in checkpoints:
            if path.name not in keep:
                shutil.rmtree(path)


def _kept(
    checkpoint: str | None, update: int | None, reason: str, held_out: dict | None = None
) -> dict[str, Any]:
    return {"checkpoint": checkpoint, "update": update, "reason": reason,
            "held_out": held_out or {}}  # fmt: skip
