"""Stage `rm`: a reward model from (prompt, chosen, rejected) pairs with TRL's RewardTrainer.

A one-output sequence classifier on the base model (full weights or LoRA with the score head
trained in full), trained with the pairwise log-sigmoid loss. Afterwards the test split is scored
with `rlhf.models.scoring` — the same code PPO's reward uses — for pairwise accuracy and mean
margin, saved beside the weights as the RM's statistics, and for whether the RM can be won by
brevity: the Pearson correlation of score and answer length (characters) over the test answers,
and how it ranks one short, not rude answer per test row
(`rlhf.data.hard_negatives.brevity_negatives`) against the chosen one. The phases are the TRL
stage skeleton's (rlhf/stages/trl_stage.py).
"""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer
from trl import RewardConfig, RewardTrainer

from rlhf.config import Config
from rlhf.data.chat_format import conversations, preference_rows
from rlhf.data.hard_negatives import brevity_negatives, with_hard_negatives
from rlhf.models.saving import merged
from rlhf.models.scoring import score_conversations
from rlhf.ppo.health import pearson
from rlhf.rewards.reward_model import REWARD_STATS
from rlhf.runs.folders import RunPaths
from rlhf.stages.context import StageContext
from rlhf.stages.trl_stage import Evaluation, TrlStage, run_trl_stage


def held_out_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Dataset,
    system_prompt: str | None,
    batch_size: int,
    answers: dict[str, list[str]],
) -> dict[str, torch.Tensor]:
    """(N,) scores of each named answer list, answering `rows`' prompts in order."""
    return {
        name: score_conversations(
            model, tokenizer, conversations(rows["prompt"], texts, system_prompt), batch_size
        )
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


class RmStage(TrlStage):
    name = "rm"
    model_kind = "reward"
    new_head = True  # trained from a causal LM: transformers adds the score head
    config_class = RewardConfig
    trainer_class = RewardTrainer

    def training_rows(self, config: Config, rows: Dataset) -> Dataset:
        rm = config.rm
        return with_hard_negatives(
            rows,
            rm.echo_negatives,
            rm.garbled_negatives,
            rm.seed,
            curt_share=rm.curt_negatives,
            truncated_share=rm.truncated_negatives,
        )

    def extra_arguments(self, config: Config) -> dict:
        return {"center_rewards_coefficient": config.rm.center_rewards_coefficient}

    def datasets(self, config: Config, train: Dataset, test: Dataset) -> dict[str, Dataset]:
        return {"train_dataset": preference_rows(train, config.data.system_prompt)}

    def evaluate(
        self, ctx: StageContext, trainer: Trainer, tokenizer: PreTrainedTokenizerBase, test: Dataset
    ) -> Evaluation:
        trained = merged(trainer.model)
        metrics = held_out_metrics(trained, tokenizer, test, ctx.config)
        final = {f"rm/test/{name}": value for name, value in metrics.items()}
        return Evaluation(final, trained, {REWARD_STATS: metrics})


def run(config: Config, paths: RunPaths) -> dict[str, float]:
    return run_trl_stage(RmStage(), config, paths)
