"""Stage `rm`: a reward model from (prompt, chosen, rejected) pairs with TRL's RewardTrainer.

A one-output sequence classifier on the base model (full weights or LoRA with the score head
trained in full), trained with the pairwise log-sigmoid loss. Afterwards the test split is scored
with `rlhf.scoring` — the same code PPO uses — for pairwise accuracy and mean margin, and for
whether the RM can be won by brevity: the Pearson correlation of score and answer length
(characters) over the test answers, and how it ranks one short, not rude answer per test row
(`rlhf.hard_negatives.brevity_negatives`) against the chosen one.
"""

from __future__ import annotations

import json

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer

from rlhf.config import Config
from rlhf.data import preference_rows, prompt_messages
from rlhf.hard_negatives import brevity_negatives, with_hard_negatives
from rlhf.models import lora_config
from rlhf.ppo import distributed
from rlhf.ppo.health import pearson
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


def held_out_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Dataset,
    system_prompt: str | None,
    batch_size: int,
    answers: dict[str, list[str]],
) -> dict[str, torch.Tensor]:
    """(N,) scores of each named answer list, answering `rows`' prompts in order."""

    def conversations(texts: list[str]) -> list[list[dict[str, str]]]:
        return [
            prompt_messages(prompt, system_prompt) + [{"role": "assistant", "content": answer}]
            for prompt, answer in zip(rows["prompt"], texts, strict=True)
        ]

    return {
        name: score_conversations(model, tokenizer, conversations(texts), batch_size)
        for name, texts in answers.items()
    }


def pairwise_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Accuracy (chosen scored above rejected), mean margin and mean scores; inputs (N,)."""
    margin = chosen - rejected
    return {
        "accuracy": (margin > 0).float().mean().item(),
        "margin": margin.mean().item(),
        "chosen_score": chosen.mean().item(),
        "rejected_score": rejected.mean().item(),
        "score_std": torch.cat([chosen, rejected]).std().item(),
    }


def brevity_metrics(
    scores: dict[str, torch.Tensor], lengths: dict[str, list[int]]
) -> dict[str, float]:
    """Can the RM be won by brevity? `scores` and `lengths` (characters) of the answers named
    chosen, rejected and short (one short, not rude answer per row), each (N,):
    length_corr = Pearson(score, length) over chosen + rejected; short_length_corr the same
    with the short answers added; short_accuracy = share of rows whose chosen answer scores
    above its short one; short_above_threshold = share of short answers above the decision
    threshold (midpoint of mean chosen and mean rejected score)."""

    def corr(names: tuple[str, ...]) -> float:
        values = torch.cat([scores[n] for n in names]).tolist()
        return pearson(values, [float(x) for n in names for x in lengths[n]])

    threshold = (scores["chosen"].mean() + scores["rejected"].mean()) / 2
    return {
        "length_corr": corr(("chosen", "rejected")),
        "short_length_corr": corr(("chosen", "rejected", "short")),
        "short_accuracy": (scores["chosen"] > scores["short"]).float().mean().item(),
        "short_above_threshold": (scores["short"] > threshold).float().mean().item(),
    }


def held_out_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Dataset,
    config: Config,
) -> dict[str, float]:
    """Pairwise and brevity metrics of a trained RM on the test rows."""
    answers = {
        "chosen": list(rows["chosen"]),
        "rejected": list(rows["rejected"]),
        "short": brevity_negatives(list(rows["prompt"]), list(rows["rejected"]), config.rm.seed),
    }
    scores = held_out_scores(
        model,
        tokenizer,
        rows,
        config.data.system_prompt,
        config.rm.per_device_eval_batch_size,
        answers,
    )
    lengths = {name: [len(text) for text in texts] for name, texts in answers.items()}
    return {
        **pairwise_metrics(scores["chosen"], scores["rejected"]),
        **brevity_metrics(scores, lengths),
    }


def run(config: Config, paths: RunPaths, resolved: dict) -> dict[str, float]:
    with stage_context(config, paths, "rm", resolved) as ctx:
        model, tokenizer, train, test = load_stage_inputs(
            ctx, config.rm, kind="reward", answers=("chosen", "rejected")
        )
        rm = config.rm
        train = with_hard_negatives(
            train,
            rm.echo_negatives,
            rm.garbled_negatives,
            rm.seed,
            curt_share=rm.curt_negatives,
            truncated_share=rm.truncated_negatives,
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
        trainer.train(resume_from_checkpoint=str(ctx.resume.checkpoint) if ctx.resume else None)
        trained = merged(trainer.model)
        metrics = held_out_metrics(trained, tokenizer, test, config)
        state_dict = gathered_state_dict(trainer)  # on every process
        if distributed.is_main_process():
            extra = {REWARD_STATS: metrics}
            save_model(trained, tokenizer, ctx.model_dir, extra, state_dict=state_dict)
        ctx.final_metrics = {f"rm/test/{name}": value for name, value in metrics.items()}
        ctx.final_metrics["rm/train_rows"] = len(train)
        ctx.tracker.log(ctx.final_metrics, step=trainer.state.global_step)
    return ctx.final_metrics
