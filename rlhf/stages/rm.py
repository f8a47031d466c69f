"""Stage `rm`: a reward model from (prompt, chosen, rejected) pairs with TRL's RewardTrainer.

A one-output sequence classifier on the base model (full weights or LoRA with the score head
trained in full), trained with the pairwise log-sigmoid loss. Afterwards the test split is scored
with `rlhf.models.scoring` — the same code PPO's reward uses — for pairwise accuracy and mean
margin, saved beside the weights as the RM's statistics. The phases are the TRL stage
skeleton's (rlhf/stages/trl_stage.py).
"""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer
from trl import RewardConfig, RewardTrainer

from rlhf.config import Config
from rlhf.data.chat_format import conversations, preference_rows
from rlhf.data.hard_negatives import with_hard_negatives
from rlhf.models.saving import merged
from rlhf.models.scoring import score_conversations
from rlhf.rewards.reward_model import REWARD_STATS
from rlhf.runs.folders import RunPaths
from rlhf.stages.context import StageContext
from rlhf.stages.trl_stage import Evaluation, TrlStage, run_trl_stage


def pairwise_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Dataset,
    system_prompt: str | None,
    batch_size: int,
) -> dict[str, float]:
    """Accuracy (chosen scored above rejected), mean margin and mean scores on `rows`."""

    def scores(answer_column: str) -> torch.Tensor:
        rendered = conversations(rows["prompt"], rows[answer_column], system_prompt)
        return score_conversations(model, tokenizer, rendered, batch_size)

    chosen, rejected = scores("chosen"), scores("rejected")
    margin = chosen - rejected
    return {
        "accuracy": (margin > 0).float().mean().item(),
        "margin": margin.mean().item(),
        "chosen_score": chosen.mean().item(),
        "rejected_score": rejected.mean().item(),
        "score_std": torch.cat([chosen, rejected]).std().item(),
    }


class RmStage(TrlStage):
    name = "rm"
    model_kind = "reward"
    new_head = True  # trained from a causal LM: transformers adds the score head
    config_class = RewardConfig
    trainer_class = RewardTrainer

    def training_rows(self, config: Config, rows: Dataset) -> Dataset:
        rm = config.rm
        return with_hard_negatives(rows, rm.echo_negatives, rm.garbled_negatives, rm.seed)

    def extra_arguments(self, config: Config) -> dict:
        return {"center_rewards_coefficient": config.rm.center_rewards_coefficient}

    def datasets(self, config: Config, train: Dataset, test: Dataset) -> dict[str, Dataset]:
        return {"train_dataset": preference_rows(train, config.data.system_prompt)}

    def evaluate(
        self, ctx: StageContext, trainer: Trainer, tokenizer: PreTrainedTokenizerBase, test: Dataset
    ) -> Evaluation:
        config = ctx.config
        trained = merged(trainer.model)
        metrics = pairwise_metrics(
            trained,
            tokenizer,
            test,
            config.data.system_prompt,
            config.rm.per_device_eval_batch_size,
        )
        final = {f"rm/test/{name}": value for name, value in metrics.items()}
        return Evaluation(final, trained, {REWARD_STATS: metrics})


def run(config: Config, paths: RunPaths) -> dict[str, float]:
    return run_trl_stage(RmStage(), config, paths)
