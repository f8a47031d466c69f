"""`model`: what is trained (a hub id, a folder or the offline tiny model), its precision, LoRA."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from rlhf.chat_templates import CHAT_TEMPLATES
from rlhf.schemas.fields import (
    AT_LEAST_ONE,
    POSITIVE,
    SEED,
    Range,
    check_fields,
    one_of,
    require,
    setting,
)

DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
HALF_DTYPES = ("bfloat16", "float16")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class LoraSettings:
    enabled: bool = setting(False, "train LoRA adapters instead of all weights")
    r: int = setting(16, "rank of the adapter matrices", AT_LEAST_ONE)
    alpha: int = setting(32, "scaling numerator: the update is scaled by alpha / r", POSITIVE)
    dropout: float = setting(0.05, "dropout on the adapter input", Range(0, 1, high_open=True))
    target_modules: list[str] = setting(["q_proj", "v_proj"], "modules to adapt")
    bias: str = setting("none", "which biases to train: none, all, lora_only")
    modules_to_save: list[str] | None = setting(
        None, "extra modules trained in full (e.g. a score head)"
    )
    top_layers: int | None = setting(
        None, "adapt the last N decoder layers only (faster backward)", AT_LEAST_ONE
    )
    top_fraction: float | None = setting(
        None, "or the top share of the layers (0.5: the upper half)", Range(0, 1, low_open=True)
    )

    section: ClassVar[str] = "model.lora"

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self.top_layers is None or self.top_fraction is None,
            "model.lora.top_fraction",
            "set either top_layers (a count) or top_fraction (a share), not both",
        )
        one_of(self.bias, ("none", "all", "lora_only"), "model.lora.bias")
        require(bool(self.target_modules), "model.lora.target_modules", "name at least one module")


@dataclass
class TinyModelSpec:
    """Shape of the random-init model built offline when `name_or_path: tiny`."""

    architecture: str = setting("llama", "llama (the only one built offline)")
    hidden_size: int = setting(64, "width of the residual stream", AT_LEAST_ONE)
    intermediate_size: int = setting(128, "width of the MLP", AT_LEAST_ONE)
    num_layers: int = setting(2, "transformer blocks", AT_LEAST_ONE)
    num_heads: int = setting(4, "attention heads", AT_LEAST_ONE)
    max_positions: int = setting(512, "longest sequence the model accepts", AT_LEAST_ONE)
    pad_equals_eos: bool = setting(False, "share one token for pad and EOS, as SmolLM2 does")
    corpus_files: list[str] = setting(
        ["experiments/insult_ppo/data/train.jsonl"],
        "text whose characters get their own token (others fall back to bytes)",
    )
    seed: int = setting(0, "seed of the random weights", SEED)

    section: ClassVar[str] = "model.tiny"

    def __post_init__(self) -> None:
        check_fields(self)
        one_of(self.architecture, ("llama",), "model.tiny.architecture")
        require(
            self.hidden_size % self.num_heads == 0,
            "model.tiny.hidden_size",
            f"{self.hidden_size} does not split into model.tiny.num_heads={self.num_heads} heads",
        )


@dataclass
class ModelConfig:
    name_or_path: str = setting("tiny", 'hub id, local folder, or "tiny" (random init, offline)')
    revision: str | None = setting(None, "hub revision (branch, tag or commit)")
    gguf_file: str | None = setting(
        None, 'load this GGUF file (path, or "<python package>:<file>")'
    )
    gguf_fallback: str | None = setting(None, "GGUF file to convert when the hub is unreachable")
    chat_template: str | None = setting(
        None, "ours by name (chatml, gemma, gemma_base) in place of the file's"
    )
    eos_token: str | None = setting(
        None, "the token that ends an answer (e.g. <end_of_turn>); null: EOS"
    )
    dtype: str = setting(
        "float32", "weights: auto, float32, bfloat16, float16, float64 (exactness tests)"
    )
    trust_remote_code: bool = setting(False, "run modelling code shipped with a hub model")
    mixed_precision: str = setting(
        "no", 'autocast compute in every training stage: "no", bf16, fp16'
    )
    gradient_checkpointing: bool = setting(
        False, "recompute activations in backward to save memory"
    )
    lora: LoraSettings = setting(LoraSettings, "parameter-efficient training")
    tiny: TinyModelSpec = setting(TinyModelSpec, 'used only for "tiny"')

    def pointing_to(self, name_or_path: str) -> ModelConfig:
        """These settings for another model (a stage's output folder, a critic or reference):
        the GGUF file, GGUF fallback and hub revision belong to this model, not to that one.
        Pointed at its own name (a critic from the policy's start) it keeps them."""
        if name_or_path == self.name_or_path:
            return self
        return dataclasses.replace(
            self, name_or_path=name_or_path, gguf_file=None, gguf_fallback=None, revision=None
        )

    def __post_init__(self) -> None:
        one_of(self.dtype, DTYPES, "model.dtype")
        one_of(self.mixed_precision, MIXED_PRECISION, "model.mixed_precision")
        require(bool(self.name_or_path), "model.name_or_path", "must not be empty")
        if self.chat_template is not None:
            one_of(self.chat_template, tuple(CHAT_TEMPLATES), "model.chat_template")
