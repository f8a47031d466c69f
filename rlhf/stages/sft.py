"""Stage `sft`: supervised fine-tuning on prompt → chosen with TRL's SFTTrainer.

The loss covers the answer tokens only (prompt-completion rows, `completion_only_loss`), full
weights or LoRA (`model.lora.enabled`). `sft.max_train_samples` takes a small share of the data
for a cold start. The merged model and tokenizer are saved to `<run>/sft/model/`. The phases are
the TRL stage skeleton's (rlhf/stages/trl_stage.py).
"""

from __future__ import annotations

import random

from datasets import Dataset
from transformers import PreTrainedTokenizerBase, Trainer
from trl import SFTConfig, SFTTrainer

from rlhf.config import Config
from rlhf.data.chat_format import sft_rows
from rlhf.runs.folders import RunPaths
from rlhf.stages.context import StageContext
from rlhf.stages.trl_stage import Evaluation, TrlStage, run_trl_stage


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


class SftStage(TrlStage):
    name = "sft"
    config_class = SFTConfig
    trainer_class = SFTTrainer

    def answers(self, config: Config) -> tuple[str, ...]:
        return ("chosen", "rejected") if config.sft.rejected_share else ("chosen",)

    def training_rows(self, config: Config, rows: Dataset) -> Dataset:
        return mix_answers(rows, config.sft.rejected_share, config.sft.seed)

    def extra_arguments(self, config: Config) -> dict:
        return {"completion_only_loss": config.sft.completion_only_loss}

    def datasets(self, config: Config, train: Dataset, test: Dataset) -> dict[str, Dataset]:
        system_prompt = config.data.system_prompt
        return {
            "train_dataset": sft_rows(train, system_prompt),
            "eval_dataset": sft_rows(test, system_prompt),
        }

    def evaluate(
        self, ctx: StageContext, trainer: Trainer, tokenizer: PreTrainedTokenizerBase, test: Dataset
    ) -> Evaluation:
        evaluation = trainer.evaluate()
        metrics = {
            "sft/test/loss": evaluation["eval_loss"],
            "sft/test/mean_token_accuracy": evaluation.get(
                "eval_mean_token_accuracy", float("nan")
            ),
            "sft/test_rows": len(test),
        }
        return Evaluation(metrics, trainer.model)


def run(config: Config, paths: RunPaths) -> dict[str, float]:
    return run_trl_stage(SftStage(), config, paths)
