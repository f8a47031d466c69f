"""A trained model's folder: merged weights (LoRA folded in), tokenizer and extra JSON files,
published in one rename so that a reader never sees half of it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf.paths import publish_dir


def merged(model: PreTrainedModel) -> PreTrainedModel:
    """The plain model with any LoRA adapters folded into its weights."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    final: Path,
    extra_files: dict[str, dict] | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Save merged weights (LoRA folded in), the tokenizer and any extra JSON files, published
    in one rename. `state_dict`: full weights gathered from a sharded model (ZeRO-3 / FSDP)."""
    model = merged(model)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".saving-") as tmp:
        staged = Path(tmp) / final.name
        model.save_pretrained(staged, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(staged)
        for name, content in (extra_files or {}).items():
            (staged / name).write_text(json.dumps(content, indent=2))
        publish_dir(staged, final)
    return final
