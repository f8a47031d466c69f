"""Generation from a causal LM, shared by PPO's rollouts, the eval stage and chat: encode
chat-formatted prompts, sample answers with the KV cache, cut them after the stop token.

Layout: prompts are left-padded (B, Tq) so that generation continues every row from its last
real token; responses are right-padded (B, Tr). Masks always come from lengths and the first
stop token (rlhf/runtime/masks.py), never from the pad id: with SmolLM2 pad == EOS ==
<|im_end|>, and that token also sits inside every chat-formatted prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf.data.chat_format import prompt_messages
from rlhf.runtime.masks import truncate_after_stop


@dataclass
class EncodedPrompts:
    input_ids: torch.Tensor  # (B, Tq) left-padded
    attention_mask: torch.Tensor  # (B, Tq) 1 on real tokens


@dataclass
class SamplingSettings:
    max_new_tokens: int
    min_new_tokens: int = 0
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], system_prompt: str | None
) -> EncodedPrompts:
    """Chat-format (with the assistant turn opened) and left-pad a list of prompts."""
    texts = [
        tokenizer.apply_chat_template(
            prompt_messages(p, system_prompt), tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = torch.tensor(row)
        mask[index, width - len(row) :] = 1
    return EncodedPrompts(ids, mask)


@torch.no_grad()
def sample_responses(
    model: PreTrainedModel,
    prompts: EncodedPrompts,
    settings: SamplingSettings,
    stop_token_id: int,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample with the KV cache; returns (responses, response_mask, ended), everything after the
    first stop token replaced by pad."""
    sampling = (
        {
            "do_sample": True,
            "temperature": settings.temperature,
            "top_k": settings.top_k,
            "top_p": settings.top_p,
        }
        if settings.do_sample
        else {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
    )
    output = model.generate(
        input_ids=prompts.input_ids,
        attention_mask=prompts.attention_mask,
        max_new_tokens=settings.max_new_tokens,
        min_new_tokens=settings.min_new_tokens,
        eos_token_id=stop_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
        **sampling,
    )
    responses = output[:, prompts.input_ids.shape[1] :]
    mask, ended = truncate_after_stop(responses, stop_token_id)
    return responses.masked_fill(~mask, pad_token_id), mask, ended


def sample_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    system_prompt: str | None,
    settings: SamplingSettings,
    stop_token_id: int | None = None,
) -> tuple[EncodedPrompts, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Prompts → (encoded prompts, responses, response mask, ended, decoded answers), on the
    model's device; stops at `stop_token_id` (EOS by default)."""
    encoded = encode_prompts(tokenizer, prompts, system_prompt)
    device = model.device
    encoded = EncodedPrompts(encoded.input_ids.to(device), encoded.attention_mask.to(device))
    stop = tokenizer.eos_token_id if stop_token_id is None else stop_token_id
    responses, mask, ended = sample_responses(
        model, encoded, settings, stop, tokenizer.pad_token_id
    )
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)  # pad after the stop
    return encoded, responses, mask, ended, texts


def joined_inputs(
    prompts: EncodedPrompts, responses: torch.Tensor, response_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and position_ids of prompt + response; positions count real
    tokens only, so a left-padded row sees the same positions as it would unpadded."""
    attention_mask = torch.cat([prompts.attention_mask, response_mask.long()], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {
        "input_ids": torch.cat([prompts.input_ids, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids,
    }
