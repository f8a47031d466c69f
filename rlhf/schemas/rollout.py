"""`ppo.rollout`: which engine samples PPO's answers (transformers' generate, or vLLM in the
training process) and the correction for the gap between the engine's and the trainer's
probabilities (rlhf/runtime/vllm_engine.py, docs/rollouts.md)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import ClassVar

from rlhf.errors import ConfigError
from rlhf.schemas.fields import AT_LEAST_ONE, POSITIVE, check_fields, one_of, require, setting

ENGINES = ("hf", "vllm")
VLLM_INSTALL = "pip install -e '.[vllm]' (CUDA: '.[vllm-cuda]')"


def require_vllm() -> None:
    """One line naming the extra when the vllm engine is asked for and vLLM is not installed
    (here, torch-free: the config checks it before anything loads)."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            f"ppo.rollout.engine=vllm needs vLLM, which is not installed: {VLLM_INSTALL}"
        )


CORRECTIONS = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass
class RolloutSettings:
    """How PPO's answers are sampled. `vllm` follows the policy every update: a LoRA policy by
    its adapter, saved and named in the next request; a full-parameter one by loading its
    weights into the engine in place (CUDA only)."""

    engine: str = setting(
        "hf", "hf (transformers' generate on the trained model) or vllm (pip install -e '.[vllm]')"
    )
    dtype: str = setting("bfloat16", "vllm: the engine's weights and arithmetic")
    kv_cache_gib: float = setting(1.0, "vllm: memory set aside for the KV cache", POSITIVE)
    max_model_len: int | None = setting(
        None,
        "vllm: the longest prompt + answer it plans for; null: the model's own limit, at most 4096",
        AT_LEAST_ONE,
    )
    compile: bool = setting(
        False,
        "vllm: torch.compile the engine's model (a minute or more at the first start on a CPU, "
        "cached on disk); false runs it eagerly",
    )
    correction: str = setting(
        "none",
        "importance weights for the engine-trainer probability gap: none, token_truncate, "
        "token_mask, sequence_truncate, sequence_mask (as TRL's vllm_importance_sampling_mode)",
    )
    correction_max: float = setting(
        3.0, "cap on the trainer/engine probability ratio (truncate) or the mask's top", POSITIVE
    )
    correction_min: float | None = setting(
        None, "floor of the ratio (truncate) or the mask's bottom; null: none", POSITIVE
    )

    section: ClassVar[str] = "ppo.rollout"

    def __post_init__(self) -> None:
        check_fields(self)
        one_of(self.engine, ENGINES, "ppo.rollout.engine")
        one_of(self.dtype, ("bfloat16", "float16", "float32"), "ppo.rollout.dtype")
        one_of(self.correction, CORRECTIONS, "ppo.rollout.correction")
        require(
            self.correction == "none" or self.engine == "vllm",
            "ppo.rollout.correction",
            f"{self.correction} corrects vLLM's samples; with ppo.rollout.engine=hf the trainer's "
            "model samples its own answers (set it to none)",
        )
        require(
            self.correction_min is None or self.correction_min < self.correction_max,
            "ppo.rollout.correction_min",
            f"{self.correction_min} is not below ppo.rollout.correction_max={self.correction_max}",
        )
