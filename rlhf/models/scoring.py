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


def turn_suffix_ids(tokenizer: PreTrainedTokenizerBase) -> list[int] | None:
    """Token ids the chat template puts after the end-of-turn (EOS) token of an assistant
    answer, e.g. the newline after ChatML's `<|im_end|>`; None when the template does not end
    an answer with EOS (then finished answers cannot be rebuilt from tokens)."""
    answer = "ANSWER_END"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}],
        tokenize=False,
    )
    marker = answer + tokenizer.eos_token
    if marker not in text:
        return None
    suffix = text[text.rindex(marker) + len(marker) :]
    return tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []


def conversation_token_batch(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    ended: torch.Tensor,
    eos_id: int,
    suffix_ids: list[int],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a reward model reads for the answers a policy produced, right-padded:
    (B, Tq) left-padded prompts + (B, Tr) responses (mask True on real tokens) → (input_ids,
    attention_mask), each (B, L). A finished answer (`ended`) closes its turn as the chat
    template does: EOS (added when the answer stopped at another stop token) and the template's
    suffix; an answer cut at the length limit gets nothing, so the reward model can tell them
    apart."""
    rows = []
    for index in range(prompt_ids.shape[0]):
        row = prompt_ids[index][prompt_mask[index].bool()].tolist()
        response = response_ids[index][response_mask[index].bool()].tolist()
        row += response
        if bool(ended[index]):
            row += ([] if response and response[-1] == eos_id else [eos_id]) + suffix_ids
        rows.append(row)
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[index, : len(row)] = 1
    return input_ids, attention_mask


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
