"""What a model folder must hold before anything loads from it, each problem as one line naming
the folder: a readable `config.json`, whole safetensors weights, tokenizer files, and the right
kind of model (a causal LM where one answers, a sequence classifier where one scores); and LoRA
target names that exist in the loaded model.

transformers' own messages for these are misleading ("install sentencepiece" for a folder
without tokenizer files) or name no file (a bare JSONDecodeError, a SafetensorError), so the
folder is checked first; the checks read only the JSON files and the safetensors headers.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import torch
from torch.nn import Linear

from rlhf.config import LoraSettings
from rlhf.errors import ConfigError, ModelLoadError
from rlhf.models.safetensors_header import safetensors_problem

# Any one of these is a tokenizer transformers can load (fast, BPE, WordPiece, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
    "spiece.model", "sentencepiece.bpe.model",
)  # fmt: skip
CLASSIFIER_SUFFIX = "ForSequenceClassification"


def read_model_config(folder: Path) -> dict:
    """The folder's config.json as a dict, or one line saying why it is not usable."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"model folder {folder} has no config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"model folder {folder}: config.json is not valid JSON ({exc})"
        ) from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelLoadError(
            f"model folder {folder}: config.json names no model_type, so it is no transformers "
            "model config"
        )
    return config


def check_model_folder(folder: Path) -> Path:
    """A folder with a usable config.json and whole safetensors weights (pickled weights are
    never loaded)."""
    if not folder.is_dir():
        raise ModelLoadError(f"model path {folder} is a file, not a model folder")
    read_model_config(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ModelLoadError(
            f"model folder {folder} holds no *.safetensors weights (pickled weights are not loaded)"
        )
    for path in weights:
        problem = safetensors_problem(path)
        if problem:
            raise ModelLoadError(f"model folder {folder}: {problem}")
    return folder


def check_tokenizer_files(folder: Path) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"model folder {folder} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer with the model (tokenizer.save_pretrained)"
        )


def is_classifier(folder: Path) -> bool:
    """Whether the folder holds a sequence classifier (a reward model), by its config."""
    architectures = read_model_config(folder).get("architectures") or []
    return any(str(name).endswith(CLASSIFIER_SUFFIX) for name in architectures)


def check_kind(folder: Path, kind: str, missing: set[str], new_head: bool) -> None:
    """Refuse a model whose weights the folder does not hold: a causal LM with any weight
    missing (transformers would initialise it at random), a reward model without its trained
    score head (unless `new_head`: a reward model or critic about to be trained)."""
    if kind == "causal":
        if is_classifier(folder):
            raise ModelLoadError(
                f"model folder {folder} holds a reward model (sequence classifier), not a "
                "language model that answers prompts"
            )
        if missing:
            raise ModelLoadError(
                f"model folder {folder} lacks {len(missing)} weight(s) of a language model "
                f"(e.g. {sorted(missing)[0]}); they would start random"
            )
        return
    head = sorted(name for name in missing if name.split(".")[0] in ("score", "classifier"))
    body = sorted(set(missing) - set(head))
    if body:
        raise ModelLoadError(
            f"model folder {folder} lacks {len(body)} weight(s) of the model (e.g. {body[0]}); "
            "they would start random"
        )
    if head and not new_head:
        raise ModelLoadError(
            f"model folder {folder} is not a reward model: it has no trained score head "
            f"({head[0]} would start random); point to an rm stage's model folder"
        )


def check_lora_targets(model: torch.nn.Module, settings: LoraSettings) -> None:
    """Every name in `model.lora.target_modules` and `modules_to_save` names a module of this
    model (PEFT's rule: the full name or its last dotted parts); PEFT itself only refuses a
    list that matches nothing at all, and a typo beside a good name would silently adapt less."""
    if not settings.enabled:
        return
    names = [name for name, _ in model.named_modules() if name]
    linear = sorted(
        {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, Linear)}
    )
    for key, targets in (
        ("model.lora.target_modules", settings.target_modules),
        ("model.lora.modules_to_save", settings.modules_to_save or []),
    ):
        for target in targets:
            if not any(name == target or name.endswith(f".{target}") for name in names):
                close = difflib.get_close_matches(target, linear, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"{key}: {target!r} names no module of the model{hint}; its linear "
                    f"layers: {', '.join(linear)}"
                )
