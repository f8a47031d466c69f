"""Generation from a causal LM, shared by PPO's rollouts, the eval stage and chat: encode
chat-formatted prompts, sample answers with the KV cache, cut them after the stop token.

Layout: prompts are left-padded (B, Tq) so that generation continues every row from its last
real token; responses are right-padded (B, Tr). Masks always come from lengths and the first
stop token (rlhf/runtime/masks.py), never from the pad id: with SmolLM2 pad == EOS ==
<|im_end|>, and that token also sits inside every chat-formatted prompt.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase

from rlhf.data.chat_format import prompt_messages
from rlhf.runtime.masks import truncate_after_stop


@dataclass
class EncodedPrompts:
    input_ids: torch.Tensor  # (B, Tq) left-padded
    attention_mask: torch.Tensor  # (B, Tq) 1 on real tokens


@dataclass
class SamplingSettings:
    """How responses are drawn. Sampling is softmax(logits / temperature) over the whole
    vocabulary, except the stop token among the first min_new_tokens (generate suppresses it
    there; PPO's log-probs use the same restriction: rlhf/ppo/logprobs.py `stop_suppressed`);
    top_k / top_p truncate it (chat and evaluation only: PPO refuses them)."""

    max_new_tokens: int
    min_new_tokens: int = 0
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def describe(self) -> str:
        if not self.do_sample:
            how = "greedy"
        else:
            how = f"sampled at temperature {self.temperature:g}"
            how += f", top-k {self.top_k}" if self.top_k else ", no top-k"
            how += f", top-p {self.top_p:g}" if self.top_p < 1 else ", no top-p"
        return f"{how}, {self.min_new_tokens}–{self.max_new_tokens} new tokens"


def row_seeds(seed: int, stream: str, step: int, rows: Sequence[int]) -> list[int]:
    """One 63-bit seed per response, from (seed, stream, step, global row index): a response's
    randomness does not depend on which process samples it or what else is in its batch."""
    seeds = []
    for row in rows:
        digest = hashlib.sha256(f"{seed}:{stream}:{step}:{row}".encode()).digest()
        seeds.append(int.from_bytes(digest[:8], "little") >> 1)
    return seeds


class SeededSampling(LogitsProcessor):
    """Sampling inside greedy decoding by the Gumbel-max trick: argmax(logits / T + G) with G
    standard Gumbel noise is an exact sample of softmax(logits / T). Each row draws its noise
    from its own generator, so a row's sample depends on its seed and its own logits only."""

    def __init__(self, settings: SamplingSettings, seeds: Sequence[int]):
        self.settings = settings
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scaled = scores / self.settings.temperature
        scaled = truncate_distribution(scaled, self.settings.top_k, self.settings.top_p)
        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20)))
        return scaled + gumbel.to(device=scores.device, dtype=scores.dtype)


def truncate_distribution(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """(B, V) temperature-scaled logits with tokens outside the top-k / top-p set at −inf."""
    if top_k:
        kth = torch.topk(scaled, min(top_k, scaled.shape[-1]), dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1:  # keep the most likely tokens until their mass reaches top_p
        ordered, order = torch.sort(scaled, descending=True, dim=-1)
        probs = ordered.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


@contextlib.contextmanager
def neutral_generation_config(
    model: PreTrainedModel, stop_token_id: int, pad_token_id: int
) -> Iterator[GenerationConfig]:
    """Generation with only the settings we pass: a checkpoint's generation_config.json
    (a repetition penalty, its own top-p, suppressed tokens) never changes sampling silently.
    transformers fills unset values from `model.generation_config`, so that is swapped for a
    neutral one while generating."""
    owner = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = owner.generation_config
    neutral = GenerationConfig(eos_token_id=stop_token_id, pad_token_id=pad_token_id)
    owner.generation_config = neutral
    try:
        yield neutral
    finally:
        owner.generation_config = saved


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    system_prompt: str | None,
    device: torch.device | str = "cpu",
) -> EncodedPrompts:
    """Chat-format (with the assistant turn opened) and left-pad a list of prompts, on
    `device`."""
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
    return EncodedPrompts(ids.to(device), mask.to(device))


@torch.no_grad()
def sample_responses(
    model: PreTrainedModel,
    prompts: EncodedPrompts,
    settings: SamplingSettings,
    stop_token_id: int,
    pad_token_id: int,
    seeds: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample with the KV cache; returns (responses, response_mask, ended), everything after the
    first stop token replaced by pad. `seeds`: one per row (`row_seeds`); None draws them from
    torch's global generator."""
    processors = []
    if settings.do_sample:
        if seeds is None:
            seeds = torch.randint(0, 2**62, (len(prompts.input_ids),)).tolist()
        processors.append(SeededSampling(settings, seeds))
    with neutral_generation_config(model, stop_token_id, pad_token_id):
        output = model.generate(
            input_ids=prompts.input_ids,
            attention_mask=prompts.attention_mask,
            max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens,
            do_sample=False,  # greedy over SeededSampling's perturbed logits when sampling
            logits_processor=processors,
            use_cache=True,
        )
    responses = output[:, prompts.input_ids.shape[1] :]
    mask, ended = truncate_after_stop(responses, stop_token_id)
    return responses.masked_fill(~mask, pad_token_id), mask, ended


def pad_answers(
    answers: Sequence[Sequence[int]], stop_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Answers as token lists (from another engine) → (responses, response_mask, ended) in
    sample_responses' layout: right-padded to the longest, cut after the first stop token. The
    padding is found from the lengths: a pad id equal to the stop token (SmolLM2) ends nothing."""
    lengths = torch.tensor([len(answer) for answer in answers], dtype=torch.long)
    width = max(1, int(lengths.max()) if len(answers) else 1)
    responses = torch.full((len(answers), width), pad_token_id, dtype=torch.long)
    for row, answer in enumerate(answers):
        responses[row, : len(answer)] = torch.tensor(list(answer), dtype=torch.long)
    positions = torch.arange(width)[None, :]
    is_stop = (responses == stop_token_id) & (positions < lengths[:, None])
    ended = is_stop.any(dim=1)
    last = torch.where(ended, is_stop.int().argmax(dim=1), lengths - 1)
    mask = positions <= last[:, None]
    return responses.masked_fill(~mask, pad_token_id), mask, ended


def sample_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    system_prompt: str | None,
    settings: SamplingSettings,
    stop_token_id: int | None = None,
    seeds: Sequence[int] | None = None,
) -> tuple[EncodedPrompts, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Prompts → (encoded prompts, responses, response mask, ended, decoded answers), on the
    model's device; stops at `stop_token_id` (EOS by default)."""
    encoded = encode_prompts(tokenizer, prompts, system_prompt, model.device)
    stop = tokenizer.eos_token_id if stop_token_id is None else stop_token_id
    responses, mask, ended = sample_responses(
        model, encoded, settings, stop, tokenizer.pad_token_id, seeds
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
