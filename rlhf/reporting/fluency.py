"""Fluency of generated text under a model that never saw the run: the independent check of the
seed experiments' rewards (experiments/keyword_ppo, experiments/sentiment_ppo), which a policy
can win with word salad or a list of rated words.

Fluency = mean negative log-likelihood per character of a reply after its prompt under a model
that was not trained in the run: Gemma 3 270M for those checks (the multilingual base model of
conf/model/gemma3_270m.yaml), the run's own base model (`model`) for the eval stage's
`eval/<model>/fluency_nll`. Lower is more fluent. Per character, not per token, so that
tokenisations of different lengths compare.
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


def _start_ids(tokenizer) -> list[int]:
    """The token a text starts after: BOS (Gemma's <bos>), else EOS as a document separator (as
    GPT-2 uses it), else none."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return [token_id]
    return []


@torch.no_grad()
def nll_per_character_batch(
    model, tokenizer, prompts: list[str], replies: list[str], batch_size: int = 8
) -> list[float]:
    """Mean negative log-likelihood per character of each reply following its prompt (0 for an
    empty reply), for any causal LM and tokenizer. Prompt + reply is tokenised as one text after
    the start token (`_start_ids`); the tokens from the prompt's own token count on are the
    reply's. Batched: rows left-padded, positions counted over real tokens, and logits kept only
    for the replies' positions, so a 262k-token vocabulary costs (batch, longest reply, vocab)."""
    start = _start_ids(tokenizer)
    rows = []
    for prompt, reply in zip(prompts, replies, strict=True):
        prompt_ids = start + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = start + tokenizer(prompt + reply, add_special_tokens=False)["input_ids"]
        rows.append((ids, max(1, min(len(prompt_ids), len(ids)))))  # the first token is context
    device = next(model.parameters()).device
    values = []
    for first in range(0, len(rows), batch_size):
        values += _batch_nll(model, rows[first : first + batch_size], device)
    return [
        -total / len(reply) if reply else 0.0 for total, reply in zip(values, replies, strict=True)
    ]


def _batch_nll(model, rows: list[tuple[list[int], int]], device) -> list[float]:
    """Σ log p of the tokens ids[boundary:] of each (ids, boundary) row."""
    width = max(len(ids) for ids, _ in rows)
    scored = [len(ids) - boundary for ids, boundary in rows]
    keep = max(scored) + 1  # the position before the first scored token predicts it
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    for row, (ids, _) in enumerate(rows):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        use_cache=False,
        logits_to_keep=keep,
    ).logits[:, :-1]  # (B, keep - 1, V): predicts the last keep - 1 tokens
    targets = input_ids[:, width - keep + 1 :].to(device)
    logprobs = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    columns = torch.arange(keep - 1, device=device)
    mask = columns.unsqueeze(0) >= (keep - 1 - torch.tensor(scored, device=device)).unsqueeze(1)
    return (logprobs * mask).sum(dim=1).tolist()


def nll_per_character(model, tokenizer, prompt: str, reply: str) -> float:
    """Mean negative log-likelihood per character of `reply` following `prompt` (0 if empty)."""
    return nll_per_character_batch(model, tokenizer, [prompt], [reply])[0]


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
