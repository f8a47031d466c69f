"""Reward from a trained reward-model folder: score of prompt + completion as a conversation,
and the statistics the rm stage saves beside the weights (its decision threshold)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf.config import ModelConfig
from rlhf.data.chat_format import conversations
from rlhf.models.loading import load_model, load_tokenizer, resolve_model_dir
from rlhf.models.scoring import score_conversations
from rlhf.runtime import distributed

REWARD_STATS = "reward_stats.json"  # beside a trained RM's weights: its test scores


def decision_threshold(model_dir: Path) -> float:
    """Score above which the RM prefers an answer: midway between its mean chosen and mean
    rejected test scores (0 when the folder has no statistics)."""
    stats_file = model_dir / REWARD_STATS
    if not stats_file.is_file():
        return 0.0
    stats = json.loads(stats_file.read_text())
    return (stats["chosen_score"] + stats["rejected_score"]) / 2


class RewardModelScorer:
    def __init__(self, path: Path, system_prompt: str | None, settings: ModelConfig):
        settings = ModelConfig(name_or_path=str(path), dtype=settings.dtype)
        folder = resolve_model_dir(settings, cache_dir=".")
        self.tokenizer = load_tokenizer(folder, settings)
        self.model = load_model(folder, settings, self.tokenizer, kind="reward").eval()
        self.model.requires_grad_(False).to(distributed.device())  # this process's GPU, if any
        self.system_prompt = system_prompt

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        rendered = conversations(prompts, completions, self.system_prompt)
        return score_conversations(self.model, self.tokenizer, rendered)
