"""One loader for every stage: find a model's folder, then load its tokenizer and weights.

Sources, in the order they are tried:
1. `tiny`: a random-init model built offline (rlhf/models/tiny.py);
2. `gguf_file`: a GGUF file converted once into a cached folder (rlhf/models/gguf.py);
3. a local folder (relative paths are read from the project root);
4. a hub id: the local hub cache, then a download (safetensors and tokenizer files only);
5. `gguf_fallback`, when the hub cannot be reached.
Weights load from safetensors only, and hub modelling code runs only with trust_remote_code.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from peft import LoraConfig
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as transformers_logging

from rlhf.chat_templates import CHAT_TEMPLATES, CHATML_TEMPLATE
from rlhf.config import LoraSettings, ModelConfig
from rlhf.errors import ConfigError, ModelLoadError
from rlhf.models.checks import check_kind, check_model_folder, check_tokenizer_files
from rlhf.models.gguf import converted_gguf_dir
from rlhf.models.tiny import tiny_model_dir
from rlhf.paths import resolve_path

log = logging.getLogger(__name__)

HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]
MODEL_CLASSES = {"causal": AutoModelForCausalLM, "reward": AutoModelForSequenceClassification}


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") <= 1 and not name.startswith((".", "/", "~"))


def _from_hub(cfg: ModelConfig) -> Path | None:
    """The local snapshot of a hub model (cached or downloaded), or None when unreachable."""
    for local_only in (True, False):
        try:
            folder = snapshot_download(
                cfg.name_or_path,
                revision=cfg.revision,
                allow_patterns=HUB_FILES,
                local_files_only=local_only,
            )
            return Path(folder)
        except Exception as exc:  # offline, unknown repo, or gated: all mean "not from the hub"
            reason = " ".join(str(exc).split())[:200]
    log.warning("hub model %s unavailable: %s", cfg.name_or_path, reason)
    return None


def resolve_model_dir(cfg: ModelConfig, cache_dir: str | Path) -> Path:
    """A local folder holding config, weights and tokenizer for `cfg`."""
    cache = resolve_path(cache_dir)
    if cfg.name_or_path == "tiny":
        return tiny_model_dir(cfg.tiny, cache)
    if cfg.gguf_file:
        return converted_gguf_dir(cfg.gguf_file, cache)
    local = resolve_path(cfg.name_or_path)
    if local.exists():
        return check_model_folder(local)
    if not _looks_like_hub_id(cfg.name_or_path):
        raise ModelLoadError(f"model.name_or_path: folder {local} does not exist")
    folder = _from_hub(cfg)
    if folder is not None:
        return check_model_folder(folder)
    if cfg.gguf_fallback:
        log.info("using the GGUF fallback %s for %s", cfg.gguf_fallback, cfg.name_or_path)
        return converted_gguf_dir(cfg.gguf_fallback, cache)
    raise ModelLoadError(
        f"model.name_or_path: {cfg.name_or_path!r} is neither a local folder ({local}) nor "
        "reachable on the hub; set model.gguf_fallback or point to a local folder"
    )


def load_tokenizer(model_dir: Path, cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token and a chat template guaranteed; `model.eos_token`
    and `model.chat_template` replace the file's (every stage stops answers at EOS)."""
    check_tokenizer_files(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_dir, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError, ImportError, TypeError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"cannot load the tokenizer of {model_dir}: {reason}") from exc
    if cfg.eos_token is not None:
        if cfg.eos_token not in tokenizer.get_vocab():
            raise ConfigError(f"model.eos_token: {cfg.eos_token!r} is not a token of {model_dir}")
        tokenizer.eos_token = cfg.eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # masks come from lengths, never pad ids
    if cfg.chat_template is not None:
        tokenizer.chat_template = CHAT_TEMPLATES[cfg.chat_template]
    elif tokenizer.chat_template is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def torch_dtype(name: str) -> torch.dtype | str:
    return "auto" if name == "auto" else getattr(torch, name)


def load_model(
    model_dir: Path,
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    kind: str = "causal",
    new_head: bool = False,
) -> PreTrainedModel:
    """Weights from `model_dir`: `causal` LM, or `reward` (one-output sequence classifier).
    Every weight must come from the folder (models/checks.py `check_kind`), except a reward
    model's score head with `new_head` (a reward model about to be trained from a causal LM)."""
    model, missing = load_model_report(model_dir, cfg, tokenizer, kind)
    check_kind(model_dir, kind, missing, new_head)
    if missing:
        log.info("%s: new score head (%s)", model_dir, ", ".join(sorted(missing)))
    return model


def load_model_report(
    model_dir: Path,
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    kind: str = "causal",
) -> tuple[PreTrainedModel, set[str]]:
    """The model, and the names of the weights the folder lacked (freshly initialised, e.g.
    the score head of a sequence classifier built from a causal LM). transformers' own load
    report of them is not printed: the caller decides whether they are a problem."""
    extra = {"num_labels": 1} if kind == "reward" else {}
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model, info = MODEL_CLASSES[kind].from_pretrained(
            model_dir,
            dtype=torch_dtype(cfg.dtype),
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
            output_loading_info=True,
            **extra,
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"cannot load a {kind} model from {model_dir}: {reason}") from exc
    finally:
        transformers_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.eos_token is not None:  # generate() without an explicit stop token stops there too
        model.config.eos_token_id = tokenizer.eos_token_id
        if getattr(model, "generation_config", None) is not None:  # a reward model has none
            model.generation_config.eos_token_id = tokenizer.eos_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model, set(info["missing_keys"])


def check_trainable_precision(model: torch.nn.Module, what: str) -> None:
    """Stop before training weights stored in half precision: without a float32 master copy an
    AdamW step below half an ulp (most steps of a 1e-5 learning rate) is lost."""
    half = [n for n, p in model.named_parameters() if p.requires_grad and p.element_size() < 4]
    if half:
        raise ConfigError(
            f"model.dtype: {what} would train {len(half)} half-precision tensors "
            f"(e.g. {half[0]}) with no float32 master copy, so small AdamW steps are lost; set "
            "model.dtype=float32 model.mixed_precision=bf16, or train LoRA adapters"
        )


def lora_config(settings: LoraSettings, num_layers: int, kind: str = "causal") -> LoraConfig | None:
    """PEFT LoraConfig from the model settings, or None when LoRA is off. `num_layers` is the
    model's decoder depth, for `top_layers`."""
    if not settings.enabled:
        return None
    layers = None
    top = settings.top_layers
    if settings.top_fraction is not None:  # a share works on any depth: at least one layer
        top = max(1, round(settings.top_fraction * num_layers))
    if top is not None:
        if top > num_layers:
            raise ConfigError(
                f"model.lora.top_layers: {top} is more than the model's {num_layers} layers "
                "(model.lora.top_fraction sets a share that fits any model)"
            )
        layers = list(range(num_layers - top, num_layers))
    return LoraConfig(
        layers_to_transform=layers,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias=settings.bias,
        modules_to_save=list(settings.modules_to_save) if settings.modules_to_save else None,
        task_type="SEQ_CLS" if kind == "reward" else "CAUSAL_LM",
    )


def load_model_and_tokenizer(
    cfg: ModelConfig, cache_dir: str | Path, kind: str = "causal", new_head: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    model_dir = resolve_model_dir(cfg, cache_dir)
    tokenizer = load_tokenizer(model_dir, cfg)
    return load_model(model_dir, cfg, tokenizer, kind, new_head), tokenizer
