"""Reward from a trained reward-model folder: score of prompt + completion as a conversation."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import PartialState

from rlhf.config import ModelConfig
from rlhf.data.loading import prompt_messages
from rlhf.models.loading import load_model, load_tokenizer, resolve_model_dir
from rlhf.models.scoring import score_conversations


class RewardModelScorer:
    def __init__(self, path: Path, system_prompt: str | None, settings: ModelConfig):
        settings = ModelConfig(name_or_path=str(path), dtype=settings.dtype)
        folder = resolve_model_dir(settings, cache_dir=".")
        self.tokenizer = load_tokenizer(folder, settings)
        self.model = load_model(folder, settings, self.tokenizer, kind="reward").eval()
        self.model.requires_grad_(False).to(PartialState().device)  # this process's GPU, if any
        self.system_prompt = system_prompt

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        conversations = [
            prompt_messages(prompt, self.system_prompt) + [{"role": "assistant", "content": answer}]
            for prompt, answer in zip(prompts, completions, strict=True)
        ]
        return score_conversations(self.model, self.tokenizer, conversations)
