"""Rollouts: stop-token truncation, pad == EOS prompts, position ids under left padding."""

from __future__ import annotations

import torch

from rlhf.config import ModelConfig, TinyModelSpec
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.ppo.actor_critic import ActorCritic
from rlhf.runtime.generation import (
    SamplingSettings,
    encode_prompts,
    joined_inputs,
    sample_responses,
)
from rlhf.runtime.masks import truncate_after_stop


def test_truncate_after_the_first_stop_token_keeps_it():
    responses = torch.tensor([[5, 7, 2, 9, 2], [5, 5, 5, 5, 5], [2, 2, 2, 2, 2]])
    mask, ended = truncate_after_stop(responses, stop_token_id=2)
    assert mask.int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_prompt_masks_keep_eos_tokens_when_pad_equals_eos(tmp_path):
    _, tokenizer = load_model_and_tokenizer(
        ModelConfig(tiny=TinyModelSpec(pad_equals_eos=True)), tmp_path
    )
    encoded = encode_prompts(tokenizer, ["你好", "今天天气怎么样？"], system_prompt="简短回答。")
    eos = tokenizer.eos_token_id
    real_lengths = [
        len(tokenizer(t, add_special_tokens=False)["input_ids"])
        for t in (
            tokenizer.apply_chat_template(
                [{"role": "system", "content": "简短回答。"}, {"role": "user", "content": p}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for p in ["你好", "今天天气怎么样？"]
        )
    ]
    assert encoded.attention_mask.sum(1).tolist() == real_lengths
    short = encoded.input_ids[0]
    assert encoded.input_ids[0, 0] == eos and encoded.attention_mask[0, 0] == 0  # left padding
    inside = (short == eos) & (encoded.attention_mask[0] == 1)
    assert inside.sum() == 2  # the <|im_end|> of system and user turns count as real tokens


def test_left_padding_does_not_change_log_probs(tmp_path):
    policy, tokenizer = load_model_and_tokenizer(ModelConfig(), tmp_path)
    model = ActorCritic(policy, "value_head", reference=policy)
    prompts = ["你好", "今天天气怎么样？我想出去玩"]
    encoded = encode_prompts(tokenizer, prompts, None)
    responses = torch.tensor([[100, 101, tokenizer.eos_token_id, 0], [102, 103, 104, 105]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    widths = (encoded.input_ids.shape[1], responses.shape[1])
    batch_logits, batch_values = model.policy_forward(
        joined_inputs(encoded, responses, mask), *widths
    )
    for row in range(2):
        alone = encode_prompts(tokenizer, prompts[row : row + 1], None)
        length = int(mask[row].sum())
        single = joined_inputs(
            alone, responses[row : row + 1, :length], mask[row : row + 1, :length]
        )
        logits, values = model.policy_forward(single, alone.input_ids.shape[1], length)
        torch.testing.assert_close(batch_logits[row, :length], logits[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch_values[row, :length], values[0], atol=1e-5, rtol=1e-4)


def test_sampled_responses_stop_at_eos_and_are_padded_after(tiny_sft_model):
    policy, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_sft_model)), ".")
    encoded = encode_prompts(
        tokenizer, ["你是谁？", "吃了没？", "几点了？", "推荐一本书"] * 2, None
    )
    torch.manual_seed(0)
    responses, mask, ended = sample_responses(
        policy,
        encoded,
        SamplingSettings(max_new_tokens=40),
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert ended.any()
    for row in range(responses.shape[0]):
        length = int(mask[row].sum())
        if ended[row]:
            assert responses[row, length - 1] == tokenizer.eos_token_id  # EOS kept, scored on
            assert (responses[row, : length - 1] != tokenizer.eos_token_id).all()
        assert (responses[row, length:] == tokenizer.pad_token_id).all()
