"""Stage `rm`: a reward model from (prompt, chosen, rejected) pairs with TRL's RewardTrainer.

A one-output sequence classifier on the base model (full weights or LoRA with the score head
trained in full), trained with the pairwise log-sigmoid loss. Afterwards the test split is scored
with `rlhf.models.scoring` — the same code PPO's reward uses — for pairwise accuracy and mean
margin, saved beside the weights as the RM's statistics, and for whether the RM can be won by
brevity: the Pearson correlation of score and answer length (characters) over the test answers,
and how it ranks one short, not rude answer per test row
(`rlhf.data.hard_negatives.brevity_negatives`) against the chosen one. The RM report
(rlhf/reporting/rm_report.py) adds the calibration of sigmoid(score difference): a reliability
table and its ECE (`rm/test/ece`), written to `rm/report.md` and logged as the table
`rm/calibration`. With `rm.label_noise` a seeded share of the training pairs is swapped first
(rlhf/data/label_noise.py; `rm/flipped_pairs`, and `label_noise` in the run record), before the
hard negatives are drawn from them. The phases are the TRL stage skeleton's
(rlhf/stages/trl_stage.py).
"""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer
from trl import RewardConfig, RewardTrainer

from rlhf.config import Config
from rlhf.data.chat_format import conversations, preference_rows
from rlhf.data.hard_negatives import brevity_negatives, with_hard_negatives
from rlhf.data.label_noise import with_label_noise
from rlhf.models.saving import merged
from rlhf.models.scoring import score_conversations
from rlhf.ppo.health import pearson
from rlhf.reporting.rm_report import (
    ReliabilityBin,
    expected_calibration_error,
    reliability_table,
    report_markdown,
)
from rlhf.rewards.reward_model import REWARD_STATS
from rlhf.runs.folders import RunPaths
from rlhf.runtime import distributed
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
) -> tuple[dict[str, float], list[ReliabilityBin]]:
    """Pairwise, brevity and calibration metrics of a trained RM on the test rows, and the
    reliability table of its pairwise probabilities."""
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
    table = reliability_table((scores["chosen"] - scores["rejected"]).tolist())
    metrics = {
        **pairwise_metrics(scores["chosen"], scores["rejected"]),
        **brevity_metrics(scores, lengths),
        "ece": expected_calibration_error(table),
    }
    return metrics, table


class RmStage(TrlStage):
    name = "rm"
    model_kind = "reward"
    new_head = True  # trained from a causal LM: transformers adds the score head
    config_class = RewardConfig
    trainer_class = RewardTrainer
    flipped_pairs = 0  # training pairs swapped by rm.label_noise (set by training_rows)

    def training_rows(self, config: Config, rows: Dataset) -> Dataset:
        rm = config.rm
        rows, self.flipped_pairs = with_label_noise(rows, rm.label_noise, rm.seed)
        return with_hard_negatives(
            rows,
            rm.echo_negatives,
            rm.garbled_negatives,
            rm.seed,
            curt_share=rm.curt_negatives,
            truncated_share=rm.truncated_negatives,
            exclaimed_share=rm.exclaimed_negatives,
            refrain_share=rm.refrain_negatives,
        )

    def extra_arguments(self, config: Config) -> dict:
        return {"center_rewards_coefficient": config.rm.center_rewards_coefficient}

    def datasets(self, config: Config, train: Dataset, test: Dataset) -> dict[str, Dataset]:
        return {"train_dataset": preference_rows(train, config.data.system_prompt)}

    def evaluate(
        self, ctx: StageContext, trainer: Trainer, tokenizer: PreTrainedTokenizerBase, test: Dataset
    ) -> Evaluation:
        trained = merged(trainer.model)
        metrics, table = held_out_metrics(trained, tokenizer, test, ctx.config)
        final = {f"rm/test/{name}": value for name, value in metrics.items()}
        final["rm/flipped_pairs"] = self.flipped_pairs
        ctx.info["label_noise"] = {
            "share": ctx.config.rm.label_noise, "flipped_pairs": self.flipped_pairs,
        }  # fmt: skip
        columns = ["low", "high", "pairs", "confidence", "accuracy"]
        rows = [[b.low, b.high, b.count, b.confidence, b.accuracy] for b in table]
        ctx.tracker.log_table("rm/calibration", columns, rows)
        if distributed.is_main_process():
            report = report_markdown({**final, "label_noise": ctx.config.rm.label_noise}, table)
            (ctx.stage_dir / "report.md").write_text(report, encoding="utf-8")
        return Evaluation(final, trained, {REWARD_STATS: metrics})


def run(config: Config, paths: RunPaths) -> dict[str, float]:
    return run_trl_stage(RmStage(), config, paths)
