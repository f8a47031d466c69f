"""Tokenizers that must agree: PPO pairs the policy with a reference, a critic and a reward
model, and they must all read text the same way (vocabulary, chat template, pad and EOS)."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from rlhf.config import ModelConfig
from rlhf.errors import ConfigError
from rlhf.models.loading import load_tokenizer, resolve_model_dir


def tokenizer_mismatch(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> str | None:
    """What differs between two tokenizers that must agree (None when nothing does)."""
    checks = {
        "vocabulary": lambda t: hash(tuple(sorted(t.get_vocab().items()))),
        "chat template": lambda t: t.chat_template,
        "pad token": lambda t: t.pad_token,
        "EOS token": lambda t: t.eos_token,
    }
    for name, read in checks.items():
        if read(a) != read(b):
            shown = (
                "" if name in ("vocabulary", "chat template") else f" ({read(a)!r} vs {read(b)!r})"
            )
            return f"{name} differs{shown}"
    return None


def check_tokenizers_agree(
    main_name: str, main: PreTrainedTokenizerBase, others: dict[str, PreTrainedTokenizerBase]
) -> None:
    """Policy, reference, critic and reward model must read text the same way: stop otherwise."""
    for name, tokenizer in others.items():
        problem = tokenizer_mismatch(main, tokenizer)
        if problem:
            raise ConfigError(f"{name} and {main_name} disagree: {problem}")


def tokenizer_at(
    path: str, settings: ModelConfig, cache_dir: str | Path
) -> PreTrainedTokenizerBase:
    """The tokenizer of the model at `path`, loaded with the other settings of `settings`."""
    other = settings.pointing_to(path)
    return load_tokenizer(resolve_model_dir(other, cache_dir), other)
