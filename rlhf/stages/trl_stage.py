"""The skeleton of a stage trained by a TRL trainer: `run_trl_stage` runs the phases, a `TrlStage`
fills in what differs (sft.py, rm.py, dpo.py).

1. data: the preference rows, checked for the columns the stage needs, before a model loads;
2. model and tokenizer (`model_kind`), rows sampled (`max_train_samples`, `max_eval_samples`) and
   held to the token limits;
3. the stage's own training rows (`training_rows`: mixed answers, hard negatives, ...);
4. TRL's config: the arguments every stage shares (`trainer_arguments`) plus the stage's own
   (`extra_arguments`), into `config_class`;
5. the trainer (`trainer_class`) with the stage's data sets (`datasets`), LoRA settings, our
   tracker as callback and the stage's own keywords (`trainer_keywords`: DPO's reference);
6. train, continuing from the newest TRL checkpoint on resume;
7. evaluate (`evaluate`): the stage's final metrics, the model to save, extra files;
8. the full weights gathered from a sharded model (a collective: every process);
9. save on the main process;
10. final metrics (`<stage>/train_rows` added) logged at the last optimiser step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback

from rlhf.config import Config, TrainerStageConfig
from rlhf.data.loading import limit_lengths, load_preference_data, require_answers, seeded_subset
from rlhf.models.checks import check_lora_targets
from rlhf.models.loading import check_trainable_precision, load_model_and_tokenizer, lora_config
from rlhf.models.saving import save_model
from rlhf.runs.faults import maybe_kill
from rlhf.runs.folders import RunPaths
from rlhf.runs.tracking import Tracker
from rlhf.runtime import distributed
from rlhf.runtime.host_memory import release_free_memory
from rlhf.stages.context import StageContext, stage_context


@dataclass
class Evaluation:
    metrics: dict[str, float]  # the stage's final metrics (the skeleton adds train_rows)
    model: PreTrainedModel  # what is saved to <stage>/model (merged there if it has adapters)
    extra_files: dict[str, dict] = field(default_factory=dict)  # JSON files beside the weights


class TrlStage:
    """What a TRL-backed stage fills in. `name` is its declared name, its config section (a
    TrainerStageConfig) and the prefix of its metrics."""

    name: str
    model_kind = "causal"  # causal: a language model; reward: a one-output sequence classifier
    new_head = False  # the model may start without its score head (a reward model being trained)
    config_class: type  # TRL's config class (SFTConfig, RewardConfig, ...)
    trainer_class: type[Trainer]  # TRL's trainer class

    def answers(self, config: Config) -> tuple[str, ...]:
        """The answer columns the stage trains on (besides the prompt)."""
        return ("chosen", "rejected")

    def training_rows(self, config: Config, rows: Dataset) -> Dataset:
        """The training rows after sampling and length limits, changed as the stage needs."""
        return rows

    def extra_arguments(self, config: Config) -> dict[str, Any]:
        """Keyword arguments of `config_class` beyond `trainer_arguments`."""
        return {}

    def datasets(self, config: Config, train: Dataset, test: Dataset) -> dict[str, Dataset]:
        """The trainer's data set keywords (train_dataset, eval_dataset)."""
        raise NotImplementedError

    def trainer_keywords(self, config: Config) -> dict[str, Any]:
        """Keyword arguments of `trainer_class` beyond the ones every stage passes."""
        return {}

    def evaluate(
        self, ctx: StageContext, trainer: Trainer, tokenizer: PreTrainedTokenizerBase, test: Dataset
    ) -> Evaluation:
        """The final metrics on the test rows, and what to save."""
        raise NotImplementedError


def run_trl_stage(stage: TrlStage, config: Config, paths: RunPaths) -> dict[str, float]:
    settings: TrainerStageConfig = getattr(config, stage.name)
    with stage_context(config, paths, stage.name) as ctx:
        answers = stage.answers(config)
        model, tokenizer, train, test = load_stage_inputs(ctx, stage, settings, answers)
        train = stage.training_rows(config, train)
        args = stage.config_class(
            **trainer_arguments(ctx, settings), **stage.extra_arguments(config)
        )
        num_layers = model.config.num_hidden_layers
        check_lora_targets(model, config.model.lora)
        trainer = stage.trainer_class(
            model=model,
            args=args,
            **stage.datasets(config, train, test),
            processing_class=tokenizer,
            peft_config=lora_config(config.model.lora, num_layers, kind=stage.model_kind),
            callbacks=[TrackerCallback(ctx.tracker, stage.name), HostMemoryCallback()],
            **stage.trainer_keywords(config),
        )
        check_trainable_precision(trainer.model, f"stage {stage.name}")
        trainer.train(resume_from_checkpoint=str(ctx.resume.checkpoint) if ctx.resume else None)
        evaluation = stage.evaluate(ctx, trainer, tokenizer, test)
        state_dict = gathered_state_dict(trainer)  # on every process
        if distributed.is_main_process():
            save_model(
                evaluation.model,
                tokenizer,
                ctx.model_dir,
                evaluation.extra_files,
                state_dict=state_dict,
            )
        ctx.final_metrics = {**evaluation.metrics, f"{stage.name}/train_rows": len(train)}
        ctx.tracker.log(ctx.final_metrics, step=trainer.state.global_step)
    return ctx.final_metrics


def load_stage_inputs(
    ctx: StageContext, stage: TrlStage, settings: TrainerStageConfig, answers: tuple[str, ...]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Dataset, Dataset]:
    """Data first (bad data fails before a model loads), then model, then length limits."""
    config = ctx.config
    data = load_preference_data(config.data)
    require_answers(data, answers, stage.name)
    ctx.info["data_fingerprint"] = data.fingerprint
    model, tokenizer = load_model_and_tokenizer(
        config.model, config.cache_dir, kind=stage.model_kind, new_head=stage.new_head
    )
    train = seeded_subset(data.train, settings.max_train_samples, settings.seed)
    train = limit_lengths(train, tokenizer, config.data, "train", answers)
    test = seeded_subset(data.test, settings.max_eval_samples, settings.seed)
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
        # transformers re-creates accelerate's state, and sees CPU processes only when told; it
        # also refuses bf16 without a GPU unless told the run is on the CPU
        "use_cpu": distributed.device().type == "cpu",
        # only when on: transformers deprecates the name, and the loader already enabled it
        **({"gradient_checkpointing": True} if model.gradient_checkpointing else {}),
    }


def gathered_state_dict(trainer: Trainer) -> dict | None:
    """Full weights of a model that ZeRO-3 or FSDP sharded across processes, or None when every
    process holds the whole model. A collective: every process must call it."""
    accelerator = trainer.accelerator
    if trainer.is_deepspeed_enabled:
        if accelerator.deepspeed_config["zero_optimization"]["stage"] != 3:
            return None
        return accelerator.get_state_dict(trainer.deepspeed)
    return accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None


class HostMemoryCallback(TrainerCallback):
    """host_heap=reuse: hand the heap's free pages back after each optimiser step, so that its
    micro-steps reuse memory and the heap does not fragment across steps."""

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (HF signature)
        release_free_memory()


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
