"""Our chat templates and the end-of-turn stop token, on a small tokenizer with Gemma's special
tokens (built here in a second): what the template renders, that `<bos>` comes from the template
alone, and that TRL's SFT labels end with the token generation stops at."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import SFTConfig, SFTTrainer

from rlhf.config import ModelConfig
from rlhf.data.chat_format import prompt_messages, sft_rows
from rlhf.errors import ConfigError
from rlhf.models.loading import load_model_and_tokenizer, load_tokenizer
from rlhf.models.scoring import turn_suffix_ids
from rlhf.models.tokenizers import tokenizer_mismatch
from rlhf.runtime.generation import encode_prompts

GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
GEMMA = ModelConfig(chat_template="gemma", eos_token="<end_of_turn>")
GEMMA_BASE = ModelConfig(chat_template="gemma_base", eos_token="\n")  # conf/model/gemma3_270m


TEXTS = "usermodel\n你是谁长沙夏天热不热？热死了，自己查。你好吗"


@pytest.fixture(scope="module")
def gemma_like_dir(tmp_path_factory):
    """A tokenizer folder with Gemma's specials and one token per character of the tests' text."""
    vocab = {token: index for index, token in enumerate(GEMMA_SPECIALS + sorted(set(TEXTS)))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(GEMMA_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    folder = tmp_path_factory.mktemp("gemma_like")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def gemma_tokenizer(gemma_like_dir):
    return load_tokenizer(gemma_like_dir, GEMMA)


def test_gemma_template_renders_turns_and_folds_the_system_message(gemma_tokenizer):
    messages = [
        {"role": "system", "content": "你是谁"},
        {"role": "user", "content": "长沙夏天热不热？"},
        {"role": "assistant", "content": "热死了，自己查。"},
    ]
    text = gemma_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<bos><start_of_turn>user\n你是谁\n\n长沙夏天热不热？<end_of_turn>\n"
        "<start_of_turn>model\n热死了，自己查。<end_of_turn>\n"
    )
    prompt = gemma_tokenizer.apply_chat_template(
        prompt_messages("你好吗", None), tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<bos><start_of_turn>user\n你好吗<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(Exception, match="system message after the first"):
        gemma_tokenizer.apply_chat_template(messages[1:2] + messages[:1], tokenize=False)


def test_end_of_turn_is_eos_pad_stays_and_bos_comes_once(gemma_tokenizer):
    ids = {token: gemma_tokenizer.convert_tokens_to_ids(token) for token in GEMMA_SPECIALS}
    assert gemma_tokenizer.eos_token_id == ids["<end_of_turn>"]
    assert gemma_tokenizer.pad_token_id == ids["<pad>"] != gemma_tokenizer.eos_token_id
    encoded = encode_prompts(gemma_tokenizer, ["你好吗", "长沙夏天热不热？"], None)
    first = encoded.input_ids[0][encoded.attention_mask[0].bool()].tolist()
    assert first[:2] == [ids["<bos>"], ids["<start_of_turn>"]]  # left-padded row, real tokens
    assert (encoded.input_ids == ids["<bos>"]).sum().item() == 2  # once per prompt
    assert gemma_tokenizer.decode(first) == (
        "<bos><start_of_turn>user\n你好吗<end_of_turn>\n<start_of_turn>model\n"
    )


def sft_trained_labels(tokenizer, tmp_path) -> tuple[list[int], dict]:
    """The labels TRL's SFT trains on (-100 dropped) for one rendered row, and the row."""
    rows = Dataset.from_dict({"prompt": ["长沙夏天热不热？"], "chosen": ["热死了，自己查。"]})
    tiny = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    trainer = SFTTrainer(
        model=LlamaForCausalLM(tiny),
        args=SFTConfig(
            output_dir=str(tmp_path), completion_only_loss=True, bf16=False, report_to=[]
        ),
        train_dataset=sft_rows(rows, None),
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]  # TRL folds the completion mask into labels (-100 elsewhere)
    labels = trainer.data_collator([row])["labels"][0]
    trained = [label for label in row["labels"] if label != -100]
    assert torch.equal(labels[labels != -100], torch.tensor(trained))
    return trained, row


def test_sft_labels_end_with_the_stop_token(gemma_tokenizer, tmp_path):
    """TRL appends no EOS to conversational rows: the template's <end_of_turn> is the answer's
    last trained token, and it is the token every stage stops at."""
    trained, row = sft_trained_labels(gemma_tokenizer, tmp_path)
    assert gemma_tokenizer.decode(trained) == "热死了，自己查。<end_of_turn>\n"
    assert trained.count(gemma_tokenizer.eos_token_id) == 1
    assert row["input_ids"].count(gemma_tokenizer.bos_token_id) == 1
    assert row["input_ids"][-len(trained) :] == trained  # the answer closes the sequence


def test_gemma_base_closes_an_answer_with_the_newline_it_stops_at(gemma_like_dir, tmp_path):
    """A base Gemma's answer ends at a newline (it never learnt <end_of_turn>): the question
    keeps Gemma's turn markers, SFT trains the newline as the answer's last token, and the
    newline is EOS, so generation and the reward model's view of an answer end there."""
    tokenizer = load_tokenizer(gemma_like_dir, GEMMA_BASE)
    assert tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("\n")
    assert tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<pad>")
    messages = [
        {"role": "system", "content": "你是谁"},
        {"role": "user", "content": "长沙夏天热不热？"},
        {"role": "assistant", "content": "热死了，自己查。"},
        {"role": "user", "content": "你好吗"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<bos><start_of_turn>user\n你是谁\n\n长沙夏天热不热？<end_of_turn>\n"
        "<start_of_turn>model\n热死了，自己查。\n<start_of_turn>user\n你好吗<end_of_turn>\n"
    )
    assert turn_suffix_ids(tokenizer) == []  # nothing follows the stop token in the turn
    trained, row = sft_trained_labels(tokenizer, tmp_path)
    assert tokenizer.decode(trained) == "热死了，自己查。\n"
    assert trained.count(tokenizer.eos_token_id) == 1 and trained[-1] == tokenizer.eos_token_id
    assert row["input_ids"].count(tokenizer.bos_token_id) == 1


def test_overrides_are_checked_and_keep_policy_and_rm_agreeing(gemma_like_dir):
    with pytest.raises(ConfigError, match="model.chat_template: 'llama' is not one of"):
        ModelConfig(chat_template="llama")
    with pytest.raises(ConfigError, match="model.eos_token: '<end>' is not a token of"):
        load_tokenizer(gemma_like_dir, ModelConfig(eos_token="<end>"))
    plain = load_tokenizer(gemma_like_dir, ModelConfig())
    assert plain.eos_token == "<eos>" and "<|im_start|>" in plain.chat_template  # ChatML default
    policy, reward = (load_tokenizer(gemma_like_dir, GEMMA) for _ in range(2))
    assert tokenizer_mismatch(policy, reward) is None
    assert tokenizer_mismatch(policy, plain) == "chat template differs"


def test_eos_override_reaches_policy_and_reward_models(tmp_path):
    """The override is the stop token of generate() too; a reward model (no generation config,
    as Gemma's sequence classifier has none) loads with it."""
    settings = ModelConfig(eos_token="<|im_start|>")  # any other token of the tiny vocabulary
    policy, tokenizer = load_model_and_tokenizer(settings, tmp_path)
    stop = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.eos_token_id == stop != tokenizer.pad_token_id
    assert policy.config.eos_token_id == policy.generation_config.eos_token_id == stop
    reward, _ = load_model_and_tokenizer(settings, tmp_path, kind="reward", new_head=True)
    assert reward.config.eos_token_id == stop
