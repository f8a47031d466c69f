"""A LoRA model's frozen base linear layers held in the autocast dtype, and their float32 values
read back from the model folder before the adapters are merged for saving.

Under `model.mixed_precision=bf16` autocast casts every float32 linear weight to bf16 at each
call, and backward keeps that copy (it is what ∂/∂input multiplies by): a LoRA model pays for
its frozen base twice, 4 bytes a weight resident plus 2 bytes a weight per pass in flight.
Casting the frozen base once gives the matmuls the same bf16 operands, hence the same outputs
and gradients, with no copy. The adapters (every `lora_*` module, whichever adapter is active)
and `modules_to_save` copies keep their float32 masters; embeddings, norms and a linear layer
whose weight is tied to a non-linear module (an LM head tied to the embedding) stay float32, as
autocast leaves them. Merging adapters into bf16 weights would round the saved model, so the
float32 base is read back from the folder it was loaded from first (`restore`); the cast is
made only when that folder holds every weight it would need.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from rlhf.errors import ModelLoadError
from rlhf.models.low_precision import AUTOCAST_DTYPES, release_loaded_files

log = logging.getLogger(__name__)

WRAPPER_PARTS = ("base_layer", "original_module")  # PEFT's names for the wrapped base module


@dataclass
class FrozenBase:
    """Where the cast layers sit (checkpoint name → module name in the PEFT model's base
    model: `model.layers.0.self_attn.q_proj` → `….q_proj.base_layer`) and the folder whose
    safetensors files hold their float32 weights."""

    folder: Path
    modules: dict[str, str]

    def restore(self, model: nn.Module) -> None:
        """Float32 weights back in the cast layers of `model` (this one or a copy of it), from
        the folder; each must round to the weight it replaces (else the folder changed)."""
        base = model.get_base_model()
        layers = {name: base.get_submodule(path) for name, path in self.modules.items()}
        tensors = _read(self.folder, _weight_keys(layers))
        for name, layer in layers.items():
            for param_name in _names(layer):
                key = f"{name}.{param_name}"
                full = tensors.get(key)
                current = getattr(layer, param_name)
                if full is None or not torch.equal(full.to(current), current.detach()):
                    raise ModelLoadError(
                        f"{self.folder}: weight {key} is missing or no longer the one this run "
                        "started from (the folder changed), so the merged model cannot be saved"
                    )
                restored = full.to(device=current.device, dtype=torch.float32)
                setattr(layer, param_name, nn.Parameter(restored, requires_grad=False))


def cast_frozen_base(model: nn.Module, mode: str) -> FrozenBase | None:
    """Cast the frozen float32 base linears of PEFT `model` to the autocast dtype of `mode`
    (in place) and return them with their folder; None, changing nothing, under "no", when none
    are frozen float32, or when the model's folder (`config._name_or_path`) does not hold all
    their weights (a model built in memory)."""
    dtype = AUTOCAST_DTYPES.get(mode)
    if dtype is None or not hasattr(model, "get_base_model"):
        return None
    base = model.get_base_model()
    layers = frozen_linears(base)
    if not layers:
        return None
    folder = Path(base.config._name_or_path or ".")
    missing = _weight_keys(layers) - _keys(folder)
    if missing:
        log.info(
            "LoRA base: kept in float32 (%s lacks %d of its weights, e.g. %s, to restore them "
            "for the merged save)", folder, len(missing), sorted(missing)[0],
        )  # fmt: skip
        return None
    for layer in layers.values():
        layer.to(dtype)
    release_loaded_files(model, dtype)  # else the float32 file pages stay resident beside them
    paths = {id(module): path for path, module in base.named_modules()}
    log.info(
        "LoRA base: %d frozen linear layers held in %s (autocast casts them at every call "
        "otherwise); float32 values read back from %s for the merged save",
        len(layers), mode, folder,
    )  # fmt: skip
    return FrozenBase(folder, {name: paths[id(layer)] for name, layer in layers.items()})


def frozen_linears(base: nn.Module) -> dict[str, nn.Linear]:
    """The frozen float32 linear layers of a PEFT model's base model by checkpoint name, adapters
    and linears tied to a non-linear module left out."""
    tied = {
        id(p)
        for m in base.modules()
        if not isinstance(m, nn.Linear)
        for p in m.parameters(recurse=False)
    }
    layers = {}
    for name, module in base.named_modules():
        parts = name.split(".")
        if not isinstance(module, nn.Linear) or _is_adapter(parts):
            continue
        params = list(module.parameters(recurse=False))
        if any(p.requires_grad or p.dtype != torch.float32 or id(p) in tied for p in params):
            continue
        layers[".".join(part for part in parts if part not in WRAPPER_PARTS)] = module
    return layers


def _is_adapter(parts: list[str]) -> bool:
    return any(part.startswith("lora_") or part == "modules_to_save" for part in parts)


def _weight_keys(layers: dict[str, nn.Linear]) -> set[str]:
    return {f"{name}.{param}" for name, layer in layers.items() for param in _names(layer)}


def _names(layer: nn.Linear) -> list[str]:
    return [name for name, _ in layer.named_parameters(recurse=False)]


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def _keys(folder: Path) -> set[str]:
    keys: set[str] = set()
    for path in _files(folder):
        with safe_open(str(path), framework="pt") as handle:
            keys.update(handle.keys())
    return keys


def _read(folder: Path, wanted: set[str]) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in _files(folder):
        with safe_open(str(path), framework="pt") as handle:
            for key in wanted & set(handle.keys()):
                tensors[key] = handle.get_tensor(key)
    return tensors
