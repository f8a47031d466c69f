"""What every stage shares: its folder, run record, tracker, seeding and model saving.

A stage folder `<run_dir>/<stage>/` holds `run_info.json` (status running → complete or failed),
`metrics.jsonl`, `model/` (published in one rename when whole) and, last, the `COMPLETE` marker:
a folder without it is not a finished stage, whatever else it holds. In a multi-process run only
the main process writes these and logs; the others wait for it at the end of the stage.

With `resume` set, a stage continues from its newest whole checkpoint (rlhf/resume.py): the
tracker continues the saved run and drops records logged after that checkpoint. Without it, a
stage starts over and clears what an earlier, unfinished attempt left in its folder.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, set_seed

from rlhf.config import Config, TrainerStageConfig
from rlhf.data.loading import limit_lengths, load_preference_data, require_answers, sample_rows
from rlhf.errors import ConfigError
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.paths import publish_dir
from rlhf.runs.faults import maybe_kill
from rlhf.runs.resume import ResumePoint, resume_point
from rlhf.runs.run_info import new_run_info, write_run_info
from rlhf.runs.tracking import Tracker, open_tracker
from rlhf.runtime import distributed

COMPLETE = "COMPLETE"


@dataclass
class RunPaths:
    """Where a run's stages write and read. The Hydra run folder holds the tracker files and one
    folder per stage; the pipeline may point a stage at a cached folder elsewhere instead."""

    run_dir: Path
    stage_dirs: dict[str, Path] = field(default_factory=dict)

    def stage_dir(self, stage: str) -> Path:
        return self.stage_dirs.get(stage, self.run_dir / stage)

    def model_dir(self, stage: str) -> Path:
        return self.stage_dir(stage) / "model"


@dataclass
class StageContext:
    config: Config
    run_dir: Path
    stage_dir: Path
    tracker: Tracker
    info: dict[str, Any]
    resume: ResumePoint | None = None  # where this stage continues; None: from the start
    final_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.stage_dir / "model"


def is_complete(stage_dir: Path) -> bool:
    return (stage_dir / COMPLETE).is_file()


@contextlib.contextmanager
def stage_context(
    config: Config, paths: RunPaths, stage: str, resolved: dict
) -> Iterator[StageContext]:
    """Open the stage folder, record and tracker; mark the stage complete only if the body ends."""
    run_dir, stage_dir = paths.run_dir, paths.stage_dir(stage)
    main = distributed.is_main_process()
    stage_dir.mkdir(parents=True, exist_ok=True)
    resume = resume_point(stage, stage_dir) if config.resume else None
    if config.resume and resume is None:
        raise ConfigError(f"resume: no checkpoint of stage {stage} in {stage_dir}")
    if main:
        (stage_dir / COMPLETE).unlink(missing_ok=True)
        if resume is None:
            for stale in ("checkpoints", "trainer"):  # an earlier attempt's, never to be mixed in
                shutil.rmtree(stage_dir / stale, ignore_errors=True)
    set_seed(config.seed)
    info = new_run_info(stage, config.seed, resolved)
    if resume is not None:
        info["resumed_from"] = str(resume.checkpoint)
    info_path = stage_dir / "run_info.json"
    write = write_run_info if main else (lambda path, info: None)
    write(info_path, info)
    started = time.time()
    name = f"{config.logger.name or config.name}-{stage}"
    record = {k: v for k, v in info.items() if k not in ("config", "sweep")}
    tracker_config = {**resolved, "sweep": info["sweep"], "run_info": record}
    try:
        with open_tracker(
            config.logger,
            run_dir,
            stage_dir,
            name,
            stage,
            tracker_config,
            run_id=resume.run_id if resume else None,
            resume_step=resume.step if resume else None,
            main_process=main,
        ) as tracker:
            info["tracker_run_id"] = tracker.run_id
            context = StageContext(config, run_dir, stage_dir, tracker, info, resume)
            yield context
            tracker.summary(context.final_metrics)
    except BaseException as exc:
        info.update(status="failed", error=" ".join(str(exc).split())[:500])
        info.update(wall_seconds=round(time.time() - started, 2))
        write(info_path, info)
        raise
    info.update(status="complete", final_metrics=context.final_metrics)
    info.update(wall_seconds=round(time.time() - started, 2))
    write(info_path, info)
    if main:
        (stage_dir / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    distributed.barrier()  # the next stage reads what the main process saved


def merged(model: PreTrainedModel) -> PreTrainedModel:
    """The plain model with any LoRA adapters folded into its weights."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    final: Path,
    extra_files: dict[str, dict] | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Save merged weights (LoRA folded in), the tokenizer and any extra JSON files, published
    in one rename. `state_dict`: full weights gathered from a sharded model (ZeRO-3 / FSDP)."""
    model = merged(model)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".saving-") as tmp:
        staged = Path(tmp) / final.name
        model.save_pretrained(staged, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(staged)
        for name, content in (extra_files or {}).items():
            (staged / name).write_text(json.dumps(content, indent=2))
        publish_dir(staged, final)
    return final


def gathered_state_dict(trainer) -> dict | None:  # noqa: ANN001 (a transformers Trainer)
    """Full weights of a model that ZeRO-3 or FSDP sharded across processes, or None when every
    process holds the whole model. A collective: every process must call it."""
    accelerator = trainer.accelerator
    if trainer.is_deepspeed_enabled:
        if accelerator.deepspeed_config["zero_optimization"]["stage"] != 3:
            return None
        return accelerator.get_state_dict(trainer.deepspeed)
    return accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None


def load_stage_inputs(
    ctx: StageContext, stage: TrainerStageConfig, kind: str, answers: tuple[str, ...]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Dataset, Dataset]:
    """Data first (bad data fails before a model loads), then model, then length limits."""
    config = ctx.config
    data = load_preference_data(config.data)
    require_answers(data, answers, ctx.stage_dir.name)
    ctx.info["data_fingerprint"] = data.fingerprint
    model, tokenizer = load_model_and_tokenizer(config.model, config.cache_dir, kind=kind)
    train = sample_rows(data.train, stage.max_train_samples, stage.seed)
    train = limit_lengths(train, tokenizer, config.data, "train", answers)
    test = sample_rows(data.test, stage.max_eval_samples, stage.seed)
    test = limit_lengths(test, tokenizer, config.data, "test", answers)
    return model, tokenizer, train, test


def trainer_arguments(ctx: StageContext, stage: TrainerStageConfig) -> dict:
    """Keyword arguments shared by TRL's SFTConfig and RewardConfig. Reporting goes through our
    tracker (report_to none); the final model is saved by `save_model`, checkpoints only with
    `save_steps`."""
    data, model = ctx.config.data, ctx.config.model
    return {
        "output_dir": str(ctx.stage_dir / "trainer"),
        # rows were already limited by limit_lengths; the margin covers the template's tokens
        "max_length": data.max_prompt_length + data.max_completion_length + 16,
        "report_to": "none",
        # checkpoints in <stage>/trainer/checkpoint-N only when asked for (they serve resume)
        "save_strategy": "steps" if stage.save_steps else "no",
        **({"save_steps": stage.save_steps} if stage.save_steps else {}),
        "save_total_limit": stage.save_total_limit,
        "learning_rate": stage.learning_rate,
        "num_train_epochs": stage.num_train_epochs,
        "max_steps": stage.max_steps,
        "per_device_train_batch_size": stage.per_device_train_batch_size,
        "per_device_eval_batch_size": stage.per_device_eval_batch_size,
        "gradient_accumulation_steps": stage.gradient_accumulation_steps,
        "lr_scheduler_type": stage.lr_scheduler_type,
        "warmup_steps": stage.warmup_steps,
        "weight_decay": stage.weight_decay,
        "max_grad_norm": stage.max_grad_norm,
        "logging_steps": stage.logging_steps,
        "bf16": model.mixed_precision == "bf16",
        "fp16": model.mixed_precision == "fp16",
        "seed": stage.seed,
        "data_seed": stage.seed,
        "dataloader_num_workers": 0,
        # transformers re-creates accelerate's state, and sees CPU processes only when told
        "use_cpu": distributed.world_size() > 1 and distributed.device().type == "cpu",
        # only when on: transformers deprecates the name, and the loader already enabled it
        **({"gradient_checkpointing": True} if model.gradient_checkpointing else {}),
    }


class TrackerCallback(TrainerCallback):
    """Forward a transformers Trainer's logs to our tracker as `<stage>/train/<name>`."""

    def __init__(self, tracker: Tracker, stage: str):
        self.tracker = tracker
        self.stage = stage

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001 (HF signature)
        maybe_kill(self.stage, "after_checkpoint", state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 (HF signature)
        metrics = {}
        for key, value in (logs or {}).items():
            split = "eval" if key.startswith("eval_") else "train"
            name = key.removeprefix(f"{split}_")  # train_loss → train/loss, eval_loss → eval/loss
            metrics[f"{self.stage}/{split}/{name}"] = value
        self.tracker.log(metrics, step=state.global_step)
