"""Stage `rm`: a reward model from (prompt, chosen, rejected) pairs with TRL's RewardTrainer.

A one-output sequence classifier on the base model (full weights or LoRA with the score head
trained in full), trained with the pairwise log-sigmoid loss. Afterwards the test split is scored
with `rlhf.scoring` — the same code PPO uses — for pairwise accuracy and mean margin.
"""

from __future__ import annotations

import json

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer

from rlhf.config import Config
from rlhf.data import preference_rows, prompt_messages
from rlhf.hard_negatives import with_hard_negatives
from rlhf.models import check_trainable_precision, lora_config
from rlhf.ppo import distributed
from rlhf.scoring import score_conversations
from rlhf.stages.common import (
    RunPaths,
    TrackerCallback,
    gathered_state_dict,
    load_stage_inputs,
    merged,
    save_model,
    stage_context,
    trainer_arguments,
)

REWARD_STATS = "reward_stats.json"  # saved beside the RM's weights: test scores and threshold


def decision_threshold(model_dir) -> float:
    """Score above which the RM prefers an answer: midway between its mean chosen and mean
    rejected test scores (0 when the folder has no statistics)."""
    stats_file = model_dir / REWARD_STATS
    if not stats_file.is_file():
        return 0.0
    stats = json.loads(stats_file.read_text())
    return (stats["chosen_score"] + stats["rejected_score"]) / 2


def pairwise_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Dataset,
    system_prompt: str | None,
    batch_size: int,
) -> dict[str, float]:
    """Accuracy (chosen scored above rejected), mean margin and mean scores on `rows`."""

    def conversations(answer_column: str) -> list[list[dict[str, str]]]:
        return [
            prompt_messages(prompt, system_prompt) + [{"role": "assistant", "content": answer}]
            for prompt, answer in zip(rows["prompt"], rows[answer_column], strict=True)
        ]

    chosen = score_conversations(model, tokenizer, conversations("chosen"), batch_size)
    rejected = score_conversations(model, tokenizer, conversations("rejected"), batch_size)
    margin = chosen - rejected
    return {
        "accuracy": (margin > 0).float().mean().item(),
        "margin": margin.mean().item(),
        "chosen_score": chosen.mean().item(),
        "rejected_score": rejected.mean().item(),
        "score_std": torch.cat([chosen, rejected]).std().item(),
    }


def run(config: Config, paths: RunPaths, resolved: dict) -> dict[str, float]:
    with stage_context(config, paths, "rm", resolved) as ctx:
        model, tokenizer, train, test = load_stage_inputs(
            ctx, config.rm, kind="reward", answers=("chosen", "rejected")
        )
        train = with_hard_negatives(
            train, config.rm.echo_negatives, config.rm.garbled_negatives, config.rm.seed
        )
        args = RewardConfig(
            **trainer_arguments(ctx, config.rm),
            center_rewards_coefficient=config.rm.center_rewards_coefficient,
        )
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=preference_rows(train, config.data.system_prompt),
            processing_class=tokenizer,
            peft_config=lora_config(
                config.model.lora, model.config.num_hidden_layers, kind="reward"
            ),
            callbacks=[TrackerCallback(ctx.tracker, "rm")],
        )
        check_trainable_precision(trainer.model, "stage rm")
        trainer.train(resume_from_checkpoint=str(ctx.resume.checkpoint) if ctx.resume else None)
        trained = merged(trainer.model)
        metrics = pairwise_metrics(
            trained,
            tokenizer,
            test,
            config.data.system_prompt,
            config.rm.per_device_eval_batch_size,
        )
        state_dict = gathered_state_dict(trainer)  # on every process
        if distributed.is_main_process():
            extra = {REWARD_STATS: metrics}
            save_model(trained, tokenizer, ctx.model_dir, extra, state_dict=state_dict)
        ctx.final_metrics = {f"rm/test/{name}": value for name, value in metrics.items()}
        ctx.final_metrics["rm/train_rows"] = len(train)
        ctx.tracker.log(ctx.final_metrics, step=trainer.state.global_step)
    return ctx.final_metrics
