"""A tiny random-init causal LM with an offline tokenizer, for tests and quick runs.

The tokenizer gives every character of a small corpus (the training data) its own token and falls
back to UTF-8 bytes for anything else, so it encodes any text, needs no training (deterministic by
construction) and keeps Chinese at one token per character. It speaks ChatML, like SmolLM2 and
Qwen2.5. The folder is cached under `<cache_dir>/tiny/<hash of spec and corpus>`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import string
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhf.chat_templates import CHATML_TEMPLATE
from rlhf.config import TinyModelSpec
from rlhf.models.files import write_model_folder
from rlhf.paths import publish_dir_once, resolve_path

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<|pad|>", "<|im_start|>", "<|im_end|>"


def _corpus_characters(spec: TinyModelSpec) -> list[str]:
    chars = set(string.printable)
    for name in spec.corpus_files:
        path = resolve_path(name)
        if path.is_file():
            chars.update(path.read_text(encoding="utf-8"))
        else:
            log.warning("tiny tokenizer: corpus file %s not found; its characters use bytes", path)
    return sorted(chars - {"\r"})


def build_tokenizer(spec: TinyModelSpec, characters: list[str]) -> PreTrainedTokenizerFast:
    """Character vocabulary with UTF-8 byte fallback; ChatML special tokens."""
    specials = [EOS, BOS] if spec.pad_equals_eos else [PAD, EOS, BOS]
    vocab = {token: index for index, token in enumerate(specials)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in characters:
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS if spec.pad_equals_eos else PAD,
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_model(spec: TinyModelSpec, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    # its own seed, without touching the caller's generator: a run that builds the model
    # (first use of a cache) then draws the same fresh heads as a run that finds it cached
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def tiny_model_dir(spec: TinyModelSpec, cache_dir: Path) -> Path:
    """Build (once) and return the folder of the tiny model described by `spec`."""
    characters = _corpus_characters(spec)
    fingerprint = json.dumps({"spec": asdict(spec), "chars": characters}, sort_keys=True)
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    final = cache_dir / "tiny" / key
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("building tiny model %s (%d characters in vocabulary)", final, len(characters))
    tokenizer = build_tokenizer(spec, characters)
    model = build_model(spec, tokenizer)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        staged = Path(tmp) / "model"
        write_model_folder(model, tokenizer, staged)  # on whichever process builds it
        publish_dir_once(staged, final)  # another process of the launch may have won the race
    return final
