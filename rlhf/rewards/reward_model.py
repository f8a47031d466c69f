"""Reward from a trained reward-model folder: score of prompt + completion as a conversation,
and the statistics the rm stage saves beside the weights (its decision threshold).

During PPO the reward model reads the token ids the policy produced (the tokenizers are checked
to agree before training), so an answer cut at max_new_tokens carries no end-of-turn token and
is not scored as a finished one; text alone (chat, evaluation of other models) is rendered
with the chat template as in training.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf.config import ModelConfig
from rlhf.data.chat_format import conversations
from rlhf.models.loading import load_model, load_tokenizer, resolve_model_dir
from rlhf.models.low_precision import autocast, cast_frozen_linears
from rlhf.models.scoring import (
    conversation_token_batch,
    score_conversations,
    score_token_batch,
    turn_suffix_ids,
)
from rlhf.rewards.tokens import ResponseTokens
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
        # model.mixed_precision: scored under autocast like the policy, weights cast once
        self.mixed_precision = settings.mixed_precision
        settings = ModelConfig(name_or_path=str(path), dtype=settings.dtype)
        folder = resolve_model_dir(settings, cache_dir=".")
        self.tokenizer = load_tokenizer(folder, settings)
        self.model = load_model(folder, settings, self.tokenizer, kind="reward").eval()
        self.model.requires_grad_(False).to(distributed.device())  # this process's GPU, if any
        cast_frozen_linears(self.model, self.mixed_precision)
        self.system_prompt = system_prompt
        self.suffix_ids = turn_suffix_ids(self.tokenizer)

    @torch.no_grad()
    def __call__(
        self, prompts: list[str], completions: list[str], tokens: ResponseTokens | None = None
    ) -> torch.Tensor:
        if tokens is not None and self.suffix_ids is not None:
            return self.score_tokens(tokens)
        rendered = conversations(prompts, completions, self.system_prompt)
        with autocast(self.mixed_precision, self.model.device.type):
            return score_conversations(self.model, self.tokenizer, rendered)

    @torch.no_grad()
    def score_tokens(self, tokens: ResponseTokens, batch_size: int = 16) -> torch.Tensor:
        """Scores (B,) of the policy's own prompt and response token ids."""
        input_ids, attention_mask = conversation_token_batch(
            tokens.prompt_ids.cpu(),
            tokens.prompt_mask.cpu(),
            tokens.response_ids.cpu(),
            tokens.response_mask.cpu(),
            tokens.ended.cpu(),
            self.tokenizer.eos_token_id,
            self.suffix_ids,
            self.tokenizer.pad_token_id,
        )
        device = self.model.device
        with autocast(self.mixed_precision, device.type):
            scores = [
                score_token_batch(
                    self.model,
                    input_ids[start : start + batch_size].to(device),
                    attention_mask[start : start + batch_size].to(device),
                )
                for start in range(0, len(input_ids), batch_size)
            ]
        return torch.cat(scores)
