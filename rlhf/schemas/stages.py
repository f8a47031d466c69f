"""`sft`, `rm` and `dpo`: the TRL-backed stages' hyper-parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhf.schemas.fields import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    SHARE,
    Range,
    check_fields,
    one_of,
    require,
    setting,
)

# transformers' SchedulerType names (tests/reliability/test_bad_inputs_in_process.py compares them with transformers)
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
    "warmup_stable_decay", "greedy",
)  # fmt: skip


@dataclass
class TrainerStageConfig:
    """Hyper-parameters shared by the TRL-backed stages (passed to SFTConfig / RewardConfig)."""

    learning_rate: float = setting(0.0002, "AdamW peak learning rate", POSITIVE)
    num_train_epochs: float = setting(1.0, "passes over the training rows", POSITIVE)
    max_steps: int = setting(-1, "stop after this many optimiser steps; -1 = use epochs", Range(-1))
    per_device_train_batch_size: int = setting(8, "rows per device per step", AT_LEAST_ONE)
    per_device_eval_batch_size: int = setting(16, "rows per device when evaluating", AT_LEAST_ONE)
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimiser step", AT_LEAST_ONE)
    lr_scheduler_type: str = setting("linear", "transformers scheduler name")
    warmup_steps: float = setting(
        0.0, "warm-up optimiser steps, or a share of all steps when < 1", NON_NEGATIVE
    )
    weight_decay: float = setting(0.0, "AdamW weight decay", NON_NEGATIVE)
    max_grad_norm: float = setting(1.0, "clip the gradient norm to this; 0 = off", NON_NEGATIVE)
    logging_steps: int = setting(5, "log every N optimiser steps", AT_LEAST_ONE)
    max_train_samples: int | None = setting(
        None, "use only the first N (shuffled) training rows", AT_LEAST_ONE
    )
    max_eval_samples: int | None = setting(
        None, "evaluate on N (shuffled) test rows; null = all", AT_LEAST_ONE
    )
    seed: int = setting(42, "seed of data order and head initialisation", SEED)
    save_steps: int | None = setting(
        None, "TRL checkpoint every N optimiser steps (for resume); null = off", AT_LEAST_ONE
    )
    save_total_limit: int = setting(2, "newest TRL checkpoints kept", AT_LEAST_ONE)

    section: ClassVar[str] = "stage"

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self.max_steps != 0,
            f"{self.section}.max_steps",
            "0 would train no step; -1 trains num_train_epochs, N > 0 trains N steps",
        )
        one_of(self.lr_scheduler_type, LR_SCHEDULERS, f"{self.section}.lr_scheduler_type")


@dataclass
class SFTStageConfig(TrainerStageConfig):
    section: ClassVar[str] = "sft"
    rejected_share: float = setting(
        0.0, "share of rows trained on the rejected answer (a mixed cold start)", SHARE
    )

    completion_only_loss: bool = setting(True, "loss on the answer tokens only")


@dataclass
class RMStageConfig(TrainerStageConfig):
    section: ClassVar[str] = "rm"
    learning_rate: float = setting(
        0.0001, "AdamW peak learning rate (lower than SFT's: a fresh score head)", POSITIVE
    )
    center_rewards_coefficient: float | None = setting(
        None, "pushes mean reward to 0 (Eisenstein 2023)", NON_NEGATIVE
    )
    label_noise: float = setting(
        0.0,
        "share of the training pairs with chosen and rejected swapped (seeded by rm.seed): a "
        "weaker proxy RM",
        SHARE,
    )
    # extra pairs (a share of the training rows): chosen against a hard negative a weak policy
    # writes (rlhf/data/hard_negatives.py)
    echo_negatives: float = setting(
        0.0, "extra pairs: chosen against the question echoed back as the answer", SHARE
    )
    garbled_negatives: float = setting(
        0.0,
        "extra pairs: chosen against the rejected answer with clauses shuffled, repeated, cut",
        SHARE,
    )
    curt_negatives: float = setting(
        0.0,
        'extra pairs: chosen against a bare acknowledgement or fragment ("好。", "我。"), not rude',
        SHARE,
    )
    truncated_negatives: float = setting(
        0.0,
        "extra pairs: chosen against the question cut short or the polite answer cut mid-sentence",
        SHARE,
    )
    exclaimed_negatives: float = setting(
        0.0,
        'extra pairs: chosen against interjections around the question\'s topic ("哇，昆曲，哇。"), not '
        "rude",
        SHARE,
    )
    refrain_negatives: float = setting(
        0.0,
        "extra pairs: chosen against a phrase of the row's own answers repeated around the topic "
        '("我来问，昆曲，我来问。")',
        SHARE,
    )

    NEGATIVES: ClassVar[tuple[str, ...]] = (
        "echo_negatives", "garbled_negatives", "curt_negatives", "truncated_negatives",
        "exclaimed_negatives", "refrain_negatives",
    )  # fmt: skip


# TRL 1.16's DPOConfig.loss_type values (trl/trainer/dpo_trainer.py, _compute_loss)
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip


@dataclass
class DPOStageConfig(TrainerStageConfig):
    section: ClassVar[str] = "dpo"
    learning_rate: float = setting(
        5e-06, "AdamW peak learning rate (DPO moves a trained policy: small)", POSITIVE
    )
    beta: float = setting(
        0.1, "strength of the pull to the reference (SFT) model; higher = closer", POSITIVE
    )
    loss_type: str = setting("sigmoid", "TRL's DPO loss: sigmoid (DPO), ipo, hinge, robust, ...")
    label_smoothing: float = setting(
        0.0,
        "assumed share of flipped labels (robust), ε of exo_pair",
        Range(0, 0.5, high_open=True),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self.loss_type, DPO_LOSS_TYPES, "dpo.loss_type")
