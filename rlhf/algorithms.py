"""The algorithm registry: every advantage estimator, KL estimator and loss aggregation declared
once, with what follows from it; config validation, the maths' dispatch and the PPO loop read it.

An advantage estimator (`ppo.advantage_estimator`) says which critic it needs, whether its
advantages are whitened over the batch, how its per-token losses are aggregated and whether its
baseline is the prompt's group: `ppo.critic`, `ppo.whiten_advantages` and
`ppo.loss_aggregation` left null take these. A KL estimator (`ppo.kl_estimator`) says whether
it estimates KL itself (the adaptive controller steers it), whether its gradient as a loss term
is the KL's (`ppo.kl_in=loss`), and whether it needs the two models' logits. A loss aggregation
(`ppo.loss_aggregation`) says whether each sequence weighs the same.

Light on imports (no torch): config validation reads it. Each function is named as
"module:function" and imported only when called, as in rlhf/stages/table.py:

- advantage estimator: a pure function returning `(advantages, returns)`, both (B, T) and 0 on
  padding, that takes by name any of `rewards` (B, T) per-token rewards, `scores` (B,),
  `values` (B, T) the critic's (estimators with a critic), `mask` (B, T) response mask,
  `group_size` (answers per prompt, consecutive rows), `gamma`, `lam`;
- KL estimator: `(logprobs, ref_logprobs)` (B, T) → (B, T); with `from_logits`,
  `(logits, ref_logits, temperature, keep=...)` (B, T, V) → (B, T);
- loss aggregation: `(loss, mask, horizon)` with (B, T) per-token losses → a scalar.

Adding one: its function (rlhf/ppo/estimators.py, rlhf/ppo/core.py, or any module), one
`register_*` call with its declaration, and its test (tests/config/test_algorithm_registry.py declares
and trains a toy estimator this way).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

SEPARATE, NO_CRITIC = "separate", "none"  # the critic an estimator needs: a value model, or none


def imported(name: str) -> Callable:
    """The function named "module:function", imported now."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class EstimatorDeclaration:
    name: str  # ppo.advantage_estimator=<name>
    function: str  # "module:function" → (advantages, returns); its arguments as described above
    critic: str  # ppo.critic when null: separate (a value model) or none (critic-free)
    whiten_advantages: bool  # ppo.whiten_advantages when null: whiten over the global batch
    loss_aggregation: str  # ppo.loss_aggregation when null: a declared aggregation's name
    needs_groups: bool = False  # its baseline is the prompt's group: samples_per_prompt >= 2

    def load(self) -> Callable:
        return imported(self.function)


@dataclass(frozen=True)
class KLEstimatorDeclaration:
    name: str  # ppo.kl_estimator=<name>
    function: str  # "module:function", per token (B, T)
    estimates_kl: bool = True  # an estimate of KL itself; else the controller steers k1
    loss_gradient: bool = False  # as a loss term its gradient is KL's: allowed with kl_in=loss
    from_logits: bool = False  # exact, from both models' logits (computed with the forward pass)

    def load(self) -> Callable:
        return imported(self.function)


@dataclass(frozen=True)
class AggregationDeclaration:
    name: str  # ppo.loss_aggregation=<name>
    function: str  # "module:function": (loss (B, T), mask (B, T), horizon) → scalar
    per_sequence: bool  # each sequence weighs the same (else each token does)

    def load(self) -> Callable:
        return imported(self.function)


ESTIMATORS: dict[str, EstimatorDeclaration] = {}
KL_ESTIMATORS: dict[str, KLEstimatorDeclaration] = {}
LOSS_AGGREGATIONS: dict[str, AggregationDeclaration] = {}


def _register(table: dict, declaration, what: str):
    if declaration.name in table:
        raise ValueError(f"{what} {declaration.name!r} is already registered")
    table[declaration.name] = declaration
    return declaration


def register_estimator(declaration: EstimatorDeclaration) -> EstimatorDeclaration:
    """Adds an advantage estimator: `ppo.advantage_estimator=<its name>` then selects it."""
    if declaration.loss_aggregation not in LOSS_AGGREGATIONS:
        raise ValueError(
            f"advantage estimator {declaration.name!r}: loss aggregation "
            f"{declaration.loss_aggregation!r} is not one of {', '.join(LOSS_AGGREGATIONS)}"
        )
    if declaration.critic not in (SEPARATE, NO_CRITIC):
        raise ValueError(
            f"advantage estimator {declaration.name!r}: critic {declaration.critic!r} is not "
            f"{SEPARATE} or {NO_CRITIC}"
        )
    return _register(ESTIMATORS, declaration, "advantage estimator")


def register_kl_estimator(declaration: KLEstimatorDeclaration) -> KLEstimatorDeclaration:
    """Adds a KL estimator: `ppo.kl_estimator=<its name>` then selects it."""
    return _register(KL_ESTIMATORS, declaration, "KL estimator")


def register_aggregation(declaration: AggregationDeclaration) -> AggregationDeclaration:
    """Adds a loss aggregation: `ppo.loss_aggregation=<its name>` then selects it."""
    return _register(LOSS_AGGREGATIONS, declaration, "loss aggregation")


def _declared(table: dict, name: str, key: str):
    """The declaration of `name` in `table`; unknown: one line naming the key and the choices."""
    if name not in table:
        raise ValueError(f"{key}: {name!r} is not one of {', '.join(table)}")
    return table[name]


def estimator(name: str) -> EstimatorDeclaration:
    return _declared(ESTIMATORS, name, "ppo.advantage_estimator")


def kl_estimator(name: str) -> KLEstimatorDeclaration:
    return _declared(KL_ESTIMATORS, name, "ppo.kl_estimator")


def aggregation(name: str) -> AggregationDeclaration:
    return _declared(LOSS_AGGREGATIONS, name, "ppo.loss_aggregation")


# --- the declarations (references: rlhf/ppo/core.py, rlhf/ppo/estimators.py) ---------------

CORE, GROUPS = "rlhf.ppo.core", "rlhf.ppo.estimators"

# every token weighs the same
register_aggregation(AggregationDeclaration("token_mean", f"{CORE}:token_mean", per_sequence=False))
# each sequence weighs the same: GRPO's 1/|o|
register_aggregation(
    AggregationDeclaration("seq_mean_token_mean", f"{CORE}:seq_mean_token_mean", per_sequence=True)
)
# longer sequences weigh more
register_aggregation(
    AggregationDeclaration("seq_mean_token_sum", f"{CORE}:seq_mean_token_sum", per_sequence=True)
)
# token sums over a constant horizon instead of each length: Dr. GRPO
register_aggregation(
    AggregationDeclaration(
        "seq_mean_token_sum_norm", f"{CORE}:seq_mean_token_sum_norm", per_sequence=True
    )
)

# log p − log q: unbiased, high variance, can be negative
register_kl_estimator(KLEstimatorDeclaration("k1", f"{CORE}:kl_k1"))
# ½ (log p − log q)²: a loss term with KL's gradient, not an estimate of KL
register_kl_estimator(
    KLEstimatorDeclaration("k2", f"{CORE}:kl_k2", estimates_kl=False, loss_gradient=True)
)
# (r − 1) − log r with r = q / p: unbiased, ≥ 0, low variance (GRPO's loss term)
register_kl_estimator(KLEstimatorDeclaration("k3", f"{CORE}:kl_k3", loss_gradient=True))
# |log p − log q|
register_kl_estimator(KLEstimatorDeclaration("abs", f"{CORE}:kl_abs", estimates_kl=False))
# Σ_v p(v) (log p(v) − log q(v)) over the vocabulary: exact, from both models' logits
register_kl_estimator(KLEstimatorDeclaration("full", "rlhf.ppo.logprobs:full_kl", from_logits=True))

# PPO: a learnt value baseline, GAE(γ, λ), advantages whitened per batch
register_estimator(
    EstimatorDeclaration(
        "gae", f"{CORE}:gae", critic=SEPARATE, whiten_advantages=True,
        loss_aggregation="token_mean",
    )
)  # fmt: skip
# GRPO (Shao et al. 2024): (R − group mean) / (group std + ε), 1/|o| per answer
register_estimator(
    EstimatorDeclaration(
        "grpo", f"{GROUPS}:grpo", critic=NO_CRITIC, whiten_advantages=False,
        loss_aggregation="seq_mean_token_mean", needs_groups=True,
    )
)  # fmt: skip
# Dr. GRPO (Liu et al. 2025): R − group mean, token sums over a constant length
register_estimator(
    EstimatorDeclaration(
        "dr_grpo", f"{GROUPS}:dr_grpo", critic=NO_CRITIC, whiten_advantages=False,
        loss_aggregation="seq_mean_token_sum_norm", needs_groups=True,
    )
)  # fmt: skip
# RLOO (Ahmadian et al. 2024): R − mean of the group's other answers
register_estimator(
    EstimatorDeclaration(
        "rloo", f"{GROUPS}:rloo", critic=NO_CRITIC, whiten_advantages=False,
        loss_aggregation="token_mean", needs_groups=True,
    )
)  # fmt: skip
# REINFORCE++ (Hu 2025): discounted per-token returns, KL in the reward, whitened
register_estimator(
    EstimatorDeclaration(
        "reinforce_pp", f"{GROUPS}:reinforce_pp", critic=NO_CRITIC, whiten_advantages=True,
        loss_aggregation="token_mean",
    )
)  # fmt: skip
# REINFORCE++-baseline: the group's mean score subtracted first
register_estimator(
    EstimatorDeclaration(
        "reinforce_pp_baseline", f"{GROUPS}:reinforce_pp_baseline", critic=NO_CRITIC,
        whiten_advantages=True, loss_aggregation="token_mean", needs_groups=True,
    )
)  # fmt: skip
