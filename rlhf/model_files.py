"""Writing a model folder from any process of a multi-process launch.

`save_pretrained` writes weights only on global rank 0 once torch.distributed is initialised,
so a cache filled by another process (the tiny model, the GGUF conversion) came out without
weights and config. These folders are plain: config, generation config, one safetensors file
(tied weights stored once, as transformers does), tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def write_model_folder(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
    return folder
