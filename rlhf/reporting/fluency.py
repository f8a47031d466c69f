"""Fluency of generated text under a model that never saw the run: the independent check of the
seed experiments' rewards (experiments/keyword_ppo, experiments/sentiment_ppo), which a policy
can win with word salad or a list of rated words.

Fluency = mean negative log-likelihood per character of a reply after its prompt under Gemma 3
270M (the multilingual base model of conf/model/gemma3_270m.yaml; lower is more fluent). Per
character, not per token, so that tokenisations of different lengths compare.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rlhf.config import ModelConfig
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.paths import PROJECT_ROOT


def fluency_model(cache_dir: Path = Path("~/.cache/rlhf")):
    """Gemma 3 270M and its tokenizer, in eval mode (converted once into the model cache)."""
    loaded = OmegaConf.load(PROJECT_ROOT / "conf" / "model" / "gemma3_270m.yaml")
    settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), loaded))
    model, tokenizer = load_model_and_tokenizer(settings, cache_dir.expanduser())
    return model.eval(), tokenizer


@torch.no_grad()
def nll_per_character(model, tokenizer, prompt: str, reply: str) -> float:
    """Mean negative log-likelihood per character of `reply` following `prompt` (0 if empty)."""
    prompt_ids = tokenizer("<bos>" + prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer("<bos>" + prompt + reply, add_special_tokens=False)["input_ids"]
    logprobs = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    targets = torch.tensor(ids[1:])
    per_token = logprobs[torch.arange(len(targets)), targets][len(prompt_ids) - 1 :]
    return -per_token.sum().item() / max(1, len(reply))


def first_and_last_samples(ppo_dir: Path, table: str) -> dict[int, list[dict]]:
    """The rows of a PPO run's samples table (`<ppo_dir>/tables/<table>.jsonl`) at its first and
    its last update, by update (one entry when they are the same)."""
    text = (ppo_dir / "tables" / f"{table}.jsonl").read_text(encoding="utf-8")
    by_update = collections.defaultdict(list)
    for line in text.splitlines():
        row = json.loads(line)
        by_update[row["update"]].append(row)
    updates = sorted(by_update)
    return {update: by_update[update] for update in dict.fromkeys([updates[0], updates[-1]])}
