"""The algorithm registry (rlhf/algorithms.py): each conf/algorithm option resolves to the same
effective settings, the names config validation accepts are the registered ones, and a new
estimator is one function and one registration: a toy one, declared in this file only, trains
through the real PPO loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlhf import algorithms
from rlhf.app import typed_config
from rlhf.config import PPOConfig
from rlhf.errors import ConfigError
from rlhf.paths import PROJECT_ROOT
from rlhf.ppo import core, estimators
from tests.helpers.ppo import make_config, make_trainer

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


def test_config_validation_accepts_exactly_the_registered_names():
    for name, declaration in algorithms.ESTIMATORS.items():
        ppo = PPOConfig(advantage_estimator=name, samples_per_prompt=2)
        assert (ppo.critic, ppo.whiten_advantages, ppo.loss_aggregation) == (
            declaration.critic, declaration.whiten_advantages, declaration.loss_aggregation,
        )  # fmt: skip
    for name in algorithms.KL_ESTIMATORS:
        assert PPOConfig(kl_estimator=name).kl_estimator == name
    for name in algorithms.LOSS_AGGREGATIONS:
        assert PPOConfig(loss_aggregation=name).loss_aggregation == name
    for key, table in (
        ("advantage_estimator", algorithms.ESTIMATORS),
        ("kl_estimator", algorithms.KL_ESTIMATORS),
        ("loss_aggregation", algorithms.LOSS_AGGREGATIONS),
    ):
        line = f"ppo.{key}: 'nope' is not one of {', '.join(table)}"
        with pytest.raises(ConfigError) as caught:
            PPOConfig(**{key: "nope"})
        assert str(caught.value) == line
        with pytest.raises(ValueError) as caught:  # the maths' lookup says the same
            {"advantage_estimator": algorithms.estimator, "kl_estimator": algorithms.kl_estimator,
             "loss_aggregation": algorithms.aggregation}[key]("nope")  # fmt: skip
        assert str(caught.value) == line


def test_the_kl_in_the_loss_takes_the_estimators_declared_for_it():
    in_loss = [name for name, kl in algorithms.KL_ESTIMATORS.items() if kl.loss_gradient]
    assert in_loss == ["k2", "k3"]
    for name in algorithms.KL_ESTIMATORS:
        if name in in_loss:
            assert PPOConfig(kl_in="loss", kl_estimator=name).kl_in == "loss"
        else:
            with pytest.raises(ConfigError, match=f"ppo.kl_estimator: '{name}' with ppo.kl_in"):
                PPOConfig(kl_in="loss", kl_estimator=name)


def test_the_maths_dispatches_through_the_registry():
    logprobs, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -1.0]])
    assert core.kl_penalty(logprobs, ref, "k1").tolist() == [[1.0, -1.0]]
    with pytest.raises(ValueError, match="ppo.kl_estimator: 'full' needs the logits"):
        core.kl_penalty(logprobs, ref, "full")
    with pytest.raises(ValueError, match="advantage estimator 'grpo' is already registered"):
        algorithms.register_estimator(algorithms.ESTIMATORS["grpo"])
    with pytest.raises(ValueError, match="loss aggregation 'mean' is not one of token_mean"):
        algorithms.register_estimator(dataclasses.replace(TOY, loss_aggregation="mean"))
    with pytest.raises(ValueError, match="'gae' needs a critic"):
        estimators.advantages("gae", ref, ref[:, 0], None, ref < 0, 1, 1.0, 1.0)


# --- a new estimator: one function, one registration, this test ---------------------------

CALLS: list[tuple[int, ...]] = []  # the shape of `scores` at each call of the toy estimator


def score_minus_half(scores: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A toy estimator: A = score − 0.5 on every response token, (B,), (B, T) → (B, T) twice."""
    CALLS.append(tuple(scores.shape))
    per_token = (scores - 0.5)[:, None].expand(mask.shape)
    advantages = torch.where(mask.bool(), per_token, torch.zeros_like(per_token))
    return advantages, advantages.clone()


TOY = algorithms.EstimatorDeclaration(
    name="score_minus_half",
    function=f"{__name__}:score_minus_half",
    critic="none",
    whiten_advantages=False,
    loss_aggregation="token_mean",
)


@pytest.fixture
def toy_estimator():
    algorithms.register_estimator(TOY)
    CALLS.clear()
    yield TOY
    del algorithms.ESTIMATORS[TOY.name]
    CALLS.clear()


def test_a_toy_estimator_trains_the_policy_through_the_real_loop(
    toy_estimator, tiny_sft_model, tmp_path
):
    config = make_config(tiny_sft_model, advantage_estimator=TOY.name, total_updates=2)
    assert config.ppo.critic == "none" and config.ppo.whiten_advantages is False  # its own
    trainer = make_trainer(config, tmp_path)
    assert trainer.model.critic is None and trainer.model.value_head is None
    policy = trainer.model.policy_parameters()
    before = [p.detach().clone() for p in policy]
    for _ in range(2):
        trainer.step()
    assert CALLS == [(8,), (8,)]  # once an update, on the 8 answers of the rollout
    assert all(not torch.equal(a, b) for a, b in zip(before, policy, strict=True))
    rollout = trainer._last_rollout
    expected = (rollout.scores - 0.5)[:, None].expand(rollout.mask.shape)[rollout.mask.bool()]
    assert torch.allclose(
        rollout.advantages[rollout.mask.bool()], expected.to(rollout.advantages.dtype)
    )


def test_an_unregistered_estimator_is_refused(compose_config):
    with pytest.raises(ConfigError, match="ppo.advantage_estimator: 'score_minus_half' is not"):
        typed_config(compose_config(["stage=ppo", "ppo.advantage_estimator=score_minus_half"]))
