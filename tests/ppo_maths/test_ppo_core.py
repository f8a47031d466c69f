"""PPO maths against numbers worked out by hand, and invariance under padding."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.ppo import core
from rlhf.ppo.kl_control import AdaptiveKLController, FixedKLController, make_kl_controller


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_matches_the_hand_computed_example():
    # δ2 = 2; δ1 = 0 + 0.9·0 − 1 = −1; δ0 = 1 + 0.9·1 − 0.5 = 1.4
    # A2 = 2; A1 = −1 + 0.72·2 = 0.44; A0 = 1.4 + 0.72·0.44 = 1.7168
    advantages, returns = core.gae(t([1, 0, 2]), t([0.5, 1, 0]), t([1, 1, 1]), gamma=0.9, lam=0.8)
    assert advantages[0].tolist() == pytest.approx([1.7168, 0.44, 2.0])
    assert returns[0].tolist() == pytest.approx([2.2168, 1.44, 2.0])


def test_gae_ignores_whatever_sits_in_padding():
    mask = t([1, 1, 1, 0, 0])
    rewards, values = t([1, 0, 2, float("nan"), -7]), t([0.5, 1, 0, float("inf"), 3])
    advantages, returns = core.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert advantages[0].tolist() == pytest.approx([1.7168, 0.44, 2.0, 0, 0])
    assert returns[0].tolist() == pytest.approx([2.2168, 1.44, 2.0, 0, 0])


def test_gae_with_gamma_and_lambda_one_is_return_minus_value():
    advantages, returns = core.gae(t([1, 2, 3]), t([0.5, 0.5, 0.5]), t([1, 1, 1]), 1.0, 1.0)
    assert returns[0].tolist() == pytest.approx([6, 5, 3])
    assert advantages[0].tolist() == pytest.approx([5.5, 4.5, 2.5])


@pytest.mark.parametrize(
    "estimator,expected",
    [("k1", 1.0), ("abs", 1.0), ("k2", 0.5), ("k3", math.exp(-1))],
)
def test_kl_estimators_at_logp_minus_one_ref_minus_two(estimator, expected):
    value = core.kl_penalty(t([-1.0]), t([-2.0]), estimator)
    assert value.item() == pytest.approx(expected)


def test_kl_estimators_when_policy_is_below_reference():
    # logp − ref = −1: k1 = −1, abs = 1, k2 = ½, k3 = (e − 1) − 1 = e − 2
    values = {e: core.kl_penalty(t([-2.0]), t([-1.0]), e).item() for e in ("k1", "abs", "k2", "k3")}
    assert values == pytest.approx({"k1": -1, "abs": 1, "k2": 0.5, "k3": math.e - 2})


def test_full_kl_from_logits():
    # p = (½, ½), q = (¼, ¾): KL = ½ ln 2 + ½ ln(2/3) = ½ ln(4/3)
    kl = core.full_kl_from_logits(t([[0.0, 0.0]]), t([[0.0, math.log(3)]]))
    assert kl.item() == pytest.approx(0.5 * math.log(4 / 3))


def test_entropy_from_logits():
    logits = torch.zeros(1, 2, 4)
    assert core.entropy_from_logits(logits)[0].tolist() == pytest.approx([math.log(4)] * 2)


def test_per_token_rewards_put_the_score_on_the_last_real_token():
    rewards, non_score = core.per_token_rewards(
        scores=t(2.0, -1.0)[0:2],
        kl=t([0.1, 0.2, 0.3, 8.0], [0.4, 5.0, 5.0, 5.0]),
        kl_coef=0.5,
        mask=t([1, 1, 1, 0], [1, 0, 0, 0]),
    )
    assert rewards[0].tolist() == pytest.approx([-0.05, -0.1, 1.85, 0])
    assert rewards[1].tolist() == pytest.approx([-1.2, 0, 0, 0])
    assert non_score[0].tolist() == pytest.approx([-0.05, -0.1, -0.15, 0])


def test_masked_mean_var_and_whitening():
    values, mask = t([1, 2, 3, 4, 100]), t([1, 1, 1, 1, 0])
    assert core.masked_mean(values, mask).item() == pytest.approx(2.5)
    assert core.masked_var(values, mask).item() == pytest.approx(5 / 3)  # Bessel-corrected
    assert core.masked_var(values, mask, unbiased=False).item() == pytest.approx(1.25)
    std = math.sqrt(5 / 3)
    whitened = core.masked_whiten(values, mask)
    assert whitened[0].tolist() == pytest.approx([-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std, 0])
    scaled = core.masked_whiten(values, mask, shift_mean=False)
    assert scaled[0, :4].tolist() == pytest.approx([2.5 + x / std for x in (-1.5, -0.5, 0.5, 1.5)])


def test_masked_mean_ignores_nan_in_padding():
    assert core.masked_mean(t([1.0, float("nan")]), t([1, 0])).item() == 1.0


def test_clipped_policy_loss_by_hand():
    logp = torch.log(t([1.5]))
    loss, stats = core.policy_loss(logp, t([0.0]), t([1.0]), t([1]), 0.2, 0.2)
    assert loss.item() == pytest.approx(-1.2)  # max(−1.5, −1.2)
    assert stats["clipfrac"].item() == 1.0 and stats["ratio_mean"].item() == pytest.approx(1.5)
    # negative advantage, ratio 0.5: max(0.5, 0.8) = 0.8
    loss, _ = core.policy_loss(torch.log(t([0.5])), t([0.0]), t([-1.0]), t([1]), 0.2, 0.2)
    assert loss.item() == pytest.approx(0.8)


def test_asymmetric_and_dual_clip():
    # ratio 1.5, A = 1, ε_high = 0.3: max(−1.5, −1.3) = −1.3
    loss, _ = core.policy_loss(torch.log(t([1.5])), t([0.0]), t([1.0]), t([1]), 0.2, 0.3)
    assert loss.item() == pytest.approx(-1.3)
    # ratio 5, A = −1: max(5, 1.2) = 5, capped by dual clip c = 3 at −c·A = 3
    logp = torch.log(t([5.0]))
    assert core.policy_loss(logp, t([0.0]), t([-1.0]), t([1]), 0.2, 0.2)[0].item() == 5
    loss, _ = core.policy_loss(logp, t([0.0]), t([-1.0]), t([1]), 0.2, 0.2, dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0)


def test_policy_loss_gradient_is_zero_when_clipped():
    logp = torch.log(t([1.5])).requires_grad_()
    core.policy_loss(logp, t([0.0]), t([1.0]), t([1]), 0.2, 0.2)[0].backward()
    assert logp.grad.item() == 0.0


def test_approx_kl_k1_and_k3():
    # log r = log(2): k1 of old ‖ new = −log 2, k3 = (2 − 1) − log 2
    _, stats = core.policy_loss(t([math.log(2)]), t([0.0]), t([1.0]), t([1]), 10, 10)
    assert stats["approxkl"].item() == pytest.approx(-math.log(2))
    assert stats["approxkl_k3"].item() == pytest.approx(1 - math.log(2))


def test_clipped_value_loss_by_hand():
    # V = 2, old = 1, R = 3, ε = 0.2: max((2−3)², (1.2−3)²) = 3.24 → ½·3.24
    loss, stats = core.value_loss(t([2.0]), t([1.0]), t([3.0]), t([1]), 0.2)
    assert loss.item() == pytest.approx(1.62)
    assert stats["clipfrac"].item() == 1.0


def test_the_losses_return_their_statistics_as_tensors_without_a_host_sync():
    """0-d tensors, detached: the trainer reduces them to numbers once per update."""
    logp = torch.log(t([1.5, 0.5])).requires_grad_()
    _, policy_stats = core.policy_loss(logp, t([0.0, 0.0]), t([1.0, -1.0]), t([1, 1]), 0.2, 0.2)
    _, value_stats = core.value_loss(t([2.0, 1.0]), t([1.0, 1.0]), t([3.0, 0.0]), t([1, 1]), 0.2)
    for value in [*policy_stats.values(), *value_stats.values()]:
        assert torch.is_tensor(value) and value.dim() == 0 and not value.requires_grad
    assert sorted(policy_stats) == [
        "approxkl",
        "approxkl_k3",
        "clipfrac",
        "ratio_max",
        "ratio_mean",
    ]
    assert policy_stats["ratio_max"].item() == pytest.approx(1.5)
    assert sorted(value_stats) == ["clipfrac", "explained_variance", "mean"]
    assert value_stats["mean"].item() == pytest.approx(1.5)


def test_loss_aggregation_modes():
    loss, mask = t([1, 2, 0], [3, 0, 0]), t([1, 1, 0], [1, 0, 0])
    assert core.aggregate(loss, mask, "token_mean").item() == pytest.approx(2.0)
    assert core.aggregate(loss, mask, "seq_mean_token_mean").item() == pytest.approx(2.25)
    assert core.aggregate(loss, mask, "seq_mean_token_sum").item() == pytest.approx(3.0)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_losses_ignore_padding(mode):
    mask = t([1, 1, 0], [1, 0, 0])
    logp, old = t([-1, -2, 9], [-1, 7, 7]), t([-1.1, -1.9, -9], [-0.8, 1, 1])
    adv = t([0.5, -0.5, 100], [1.0, -50, 50])
    junk = logp.clone()
    junk[mask == 0] = 1e3  # ratio overflows to inf in padding
    assert core.policy_loss(logp, old, adv, mask, 0.2, 0.2, aggregation=mode)[
        0
    ].item() == pytest.approx(
        core.policy_loss(junk, old, adv, mask, 0.2, 0.2, aggregation=mode)[0].item()
    )
    values, returns = t([1, 2, 3], [4, 5, 6]), t([1.5, 2.5, -9], [3, 9, 9])
    junk_values = values.clone()
    junk_values[mask == 0] = 1e3
    assert core.value_loss(values, values, returns, mask, 0.2, mode)[0].item() == pytest.approx(
        core.value_loss(junk_values, junk_values, returns, mask, 0.2, mode)[0].item()
    )


def test_explained_variance():
    returns, mask = t([1, 2, 3, 99]), t([1, 1, 1, 0])
    assert core.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert core.explained_variance(t([2, 2, 2, 0]), returns, mask).item() == pytest.approx(0.0)


def test_entropy_bonus_is_aggregated_entropy():
    entropy, mask = t([1.0, 3.0, 50.0]), t([1, 1, 0])
    assert core.entropy_bonus(entropy, mask, "token_mean").item() == pytest.approx(2.0)


def test_fixed_kl_controller_never_moves():
    controller = make_kl_controller(0.05, adaptive=False, target=6, horizon=10000)
    assert isinstance(controller, FixedKLController)
    controller.update(100.0, 1000)
    assert controller.value == 0.05


def test_adaptive_kl_controller_by_hand():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    controller.update(current_kl=12.0, n_samples=1000)  # error clipped to +0.2 → ×1.02
    assert controller.value == pytest.approx(0.102)
    controller.update(current_kl=5.4, n_samples=1000)  # error −0.1 → ×0.99
    assert controller.value == pytest.approx(0.102 * 0.99)
    restored = AdaptiveKLController(1.0, 6.0, 10000)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value
