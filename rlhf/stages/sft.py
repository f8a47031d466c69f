"""Stage `sft`: supervised fine-tuning on prompt → chosen with TRL's SFTTrainer.

The loss covers the answer tokens only (prompt-completion rows, `completion_only_loss`), full
weights or LoRA (`model.lora.enabled`). `sft.max_train_samples` takes a small share of the data
for a cold start. The merged model and tokenizer are saved to `<run>/sft/model/`.
"""

from __future__ import annotations

import random

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from rlhf.config import Config
from rlhf.data import sft_rows
from rlhf.models import check_trainable_precision, lora_config
from rlhf.ppo import distributed
from rlhf.stages.common import (
    RunPaths,
    TrackerCallback,
    gathered_state_dict,
    load_stage_inputs,
    save_model,
    stage_context,
    trainer_arguments,
)


def mix_answers(rows: Dataset, rejected_share: float, seed: int) -> Dataset:
    """Answer a seeded share of the rows with `rejected` instead of `chosen`: a cold start that
    teaches the answer format while leaving the preferred behaviour rare, for PPO to amplify."""
    count = round(rejected_share * len(rows))
    if count == 0:
        return rows
    picked = set(random.Random(seed).sample(range(len(rows)), count))
    answers = [
        r if i in picked else c
        for i, (c, r) in enumerate(zip(rows["chosen"], rows["rejected"], strict=True))
    ]
    return rows.remove_columns("chosen").add_column("chosen", answers)


def run(config: Config, paths: RunPaths, resolved: dict) -> dict[str, float]:
    with stage_context(config, paths, "sft", resolved) as ctx:
        model, tokenizer, train, test = load_stage_inputs(
            ctx,
            config.sft,
            kind="causal",
            answers=("chosen", "rejected") if config.sft.rejected_share else ("chosen",),
        )
        train = mix_answers(train, config.sft.rejected_share, config.sft.seed)
        args = SFTConfig(
            **trainer_arguments(ctx, config.sft),
            completion_only_loss=config.sft.completion_only_loss,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=sft_rows(train, config.data.system_prompt),
            eval_dataset=sft_rows(test, config.data.system_prompt),
            processing_class=tokenizer,
            peft_config=lora_config(config.model.lora, model.config.num_hidden_layers),
            callbacks=[TrackerCallback(ctx.tracker, "sft")],
        )
        check_trainable_precision(trainer.model, "stage sft")
        trainer.train(resume_from_checkpoint=str(ctx.resume.checkpoint) if ctx.resume else None)
        evaluation = trainer.evaluate()
        state_dict = gathered_state_dict(trainer)  # on every process
        if distributed.is_main_process():
            save_model(trainer.model, tokenizer, ctx.model_dir, state_dict=state_dict)
        ctx.final_metrics = {
            "sft/test/loss": evaluation["eval_loss"],
            "sft/test/mean_token_accuracy": evaluation.get(
                "eval_mean_token_accuracy", float("nan")
            ),
            "sft/train_rows": len(train),
            "sft/test_rows": len(test),
        }
        ctx.tracker.log(ctx.final_metrics, step=trainer.state.global_step)
    return ctx.final_metrics
