"""Reward-model scores of chat conversations, read at the last real token.

transformers' sequence classifiers pool at the last token that is not the pad id; when pad ==
EOS (SmolLM2) a conversation ending in EOS would be read one token early. Here the position comes
from the attention mask instead.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf.runtime.masks import last_true_index


@torch.no_grad()
def score_token_batch(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """(B, T) right-padded ids → (B,) float scores of a one-output sequence classifier."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    last_hidden = hidden[rows, last_true_index(attention_mask)]
    return model.score(last_hidden).squeeze(-1).float()


@torch.no_grad()
def score_conversations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    batch_size: int = 16,
) -> torch.Tensor:
    """Scores (N,) of whole conversations rendered with the tokenizer's chat template."""
    model.eval()
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    scores = []
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # positions must match training (right-padded batches)
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(model.device)
            scores.append(score_token_batch(model, batch["input_ids"], batch["attention_mask"]))
    finally:
        tokenizer.padding_side = padding_side
    return torch.cat(scores) if scores else torch.empty(0)
