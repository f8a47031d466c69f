"""Writing a model folder from any process of a multi-process launch.

`save_pretrained` writes weights only on global rank 0 once torch.distributed is initialised,
so a cache filled by another process (the tiny model, the GGUF conversion) came out without
weights and config. These folders are plain: config, generation config, one safetensors file,
tokenizer. Tied weights (the LM head sharing the embedding) are stored once, under their first
name in `state_dict()` order, as transformers does; loading re-ties them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def untied_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor kept once (first name wins): deterministic, so
    the same model always gives the same file."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in model.state_dict().items():
        storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if storage in seen:
            continue
        seen.add(storage)
        kept[name] = tensor.detach().contiguous()
    return kept


def write_model_folder(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    save_file(untied_state_dict(model), str(folder / "model.safetensors"), {"format": "pt"})
    tokenizer.save_pretrained(folder)
    return folder
