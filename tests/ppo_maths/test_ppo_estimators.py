"""The critic-free advantage estimators and the loss aggregations that go with them, against
numbers worked out by hand, and invariance under padding."""

from __future__ import annotations

import pytest
import torch

from rlhf.ppo import core, estimators

NAN = float("nan")


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def two_groups_of_three():
    """Per-token rewards of 6 answers to 2 prompts (rows 0–2 and 3–5), padding holding NaN.
    Group A: scores 0.5, 1, 2.5 on the last token and −β·KL on the tokens before, so the answers'
    rewards R are 0.5 − 0.5 = 0, 1 and 2.5 − 0.25 − 0.25 = 2. Group B: three answers scored 5."""
    rewards = t(
        [-0.5, 0.5, NAN],
        [1.0, NAN, NAN],
        [-0.25, -0.25, 2.5],
        [0.0, 5.0, NAN],
        [5.0, NAN, NAN],
        [0.0, 0.0, 5.0],
    )
    mask = t([1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]).bool()
    return rewards, mask


def per_sequence(advantages, mask):
    """The one value each sequence carries on all its tokens (checked to be the same)."""
    values = []
    for row, keep in zip(advantages, mask, strict=True):
        kept = row[keep]
        assert torch.all(kept == kept[0]) and torch.all(row[~keep] == 0)
        values.append(kept[0].item())
    return values


def test_grpo_is_the_reward_standardised_within_its_group():
    # A: R = 0, 1, 2 → mean 1, Bessel std √((1 + 0 + 1) / 2) = 1 → −1, 0, 1 (÷ (1 + ε));
    # B: R = 5, 5, 5 → std 0 → 0 / ε = 0
    rewards, mask = two_groups_of_three()
    advantages, returns = estimators.grpo(rewards, mask, group_size=3)
    scale = 1 / (1 + estimators.GROUP_EPS)
    assert per_sequence(advantages, mask) == pytest.approx([-scale, 0, scale, 0, 0, 0], abs=1e-12)
    assert per_sequence(returns, mask) == pytest.approx([0, 1, 2, 5, 5, 5])


def test_dr_grpo_drops_the_std():
    rewards, mask = two_groups_of_three()
    rewards[:3] *= 10  # R = 0, 10, 20: GRPO's advantages would not change, Dr. GRPO's scale
    advantages, _ = estimators.dr_grpo(rewards, mask, group_size=3)
    assert per_sequence(advantages, mask) == pytest.approx([-10, 0, 10, 0, 0, 0])


def test_rloo_subtracts_the_mean_of_the_other_answers():
    # R = 0: others (1 + 2) / 2 = 1.5 → −1.5; R = 1: (0 + 2) / 2 = 1 → 0; R = 2: 0.5 → 1.5
    rewards, mask = two_groups_of_three()
    advantages, _ = estimators.rloo(rewards, mask, group_size=3)
    assert per_sequence(advantages, mask) == pytest.approx([-1.5, 0, 1.5, 0, 0, 0])


def test_discounted_returns_and_reinforce_pp_whitened_over_the_batch():
    # γ = 0.5. Row 0: G2 = 1, G1 = −0.2 + 0.5·1 = 0.3, G0 = −0.1 + 0.5·0.3 = 0.05.
    # Row 1 (2 tokens): G1 = 2, G0 = 0.2 + 0.5·2 = 1.2.
    rewards, mask = t([-0.1, -0.2, 1.0], [0.2, 2.0, NAN]), t([1, 1, 1], [1, 1, 0]).bool()
    advantages, returns = estimators.reinforce_pp(rewards, mask, gamma=0.5)
    torch.testing.assert_close(returns, t([0.05, 0.3, 1.0], [1.2, 2.0, 0.0]))
    # whitened over the 5 tokens: mean 0.91, Bessel std √(2.392 / 4) = 0.773305
    whitened = core.masked_whiten(advantages, mask)
    assert whitened[mask].tolist() == pytest.approx(
        [-1.11211, -0.78882, 0.11638, 0.37501, 1.40954], abs=1e-5
    )


def test_reinforce_pp_baseline_subtracts_the_group_mean_score_on_the_last_token():
    # one group of 2: scores 1 and 3 (mean 2) on the last token, −0.1 of KL on every token.
    # After the baseline: row 0 [−0.1, 0.9 − 2] = [−0.1, −1.1], row 1 [−0.1, −0.1, 0.9].
    # γ = 1 returns: [−1.2, −1.1] and [0.7, 0.8, 0.9].
    rewards = t([-0.1, 0.9, NAN], [-0.1, -0.1, 2.9])
    mask = t([1, 1, 0], [1, 1, 1]).bool()
    advantages, returns = estimators.reinforce_pp_baseline(
        rewards, t(1.0, 3.0), mask, group_size=2, gamma=1.0
    )
    torch.testing.assert_close(returns, t([-1.2, -1.1, 0.0], [0.7, 0.8, 0.9]))
    # whitened: mean 0.02, Bessel std √(4.588 / 4) = 1.070981
    assert core.masked_whiten(advantages, mask)[mask].tolist() == pytest.approx(
        [-1.13914, -1.04577, 0.63493, 0.72830, 0.82168], abs=1e-5
    )


@pytest.mark.parametrize(
    "name", ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]
)
def test_estimators_ignore_padding_and_dispatch_by_name(name):
    rewards, mask = two_groups_of_three()
    scores = t(0.5, 1.0, 2.5, 5.0, 5.0, 5.0)
    other = rewards.clone()
    other[~mask] = 1e3
    first = estimators.advantages(name, rewards, scores, None, mask, 3, 0.9, 1.0)
    second = estimators.advantages(name, other, scores, None, mask, 3, 0.9, 1.0)
    for a, b in zip(first, second, strict=True):
        assert torch.isfinite(a).all() and torch.equal(a, b) and torch.all(a[~mask] == 0)


def test_group_helpers_and_uniform_groups():
    scores = t(0.0, 1.0, 2.0, 5.0, 5.0, 5.0)
    assert estimators.group_mean(scores, 3).tolist() == [1, 1, 1, 5, 5, 5]
    assert estimators.group_std(scores, 3).tolist() == [1, 1, 1, 0, 0, 0]
    assert estimators.uniform_groups(scores, 3).tolist() == [False] * 3 + [True] * 3
    assert estimators.uniform_groups(scores, 2).tolist() == [False, False, False, False, True, True]
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        estimators.grouped(scores, 4)
    with pytest.raises(ValueError):
        estimators.advantages(
            "gae", scores[:, None], scores, None, scores[:, None] > -1, 3, 1.0, 1.0
        )


def test_constant_length_aggregation_and_rows_left_out():
    # rows sum to 6 and 9; over a constant horizon of 4: 1.5 and 2.25 → mean 1.875.
    # A third row with no token in the loss (a dropped group) counts in no sequence mean.
    loss = t([1, 2, 3], [4, 5, NAN], [7, 7, 7])
    mask = t([1, 1, 1], [1, 1, 0], [0, 0, 0])
    assert core.aggregate(loss, mask, "seq_mean_token_sum_norm", horizon=4).item() == 1.875
    assert core.aggregate(loss, mask, "seq_mean_token_mean").item() == pytest.approx(3.25)  # 2, 4.5
    assert core.aggregate(loss, mask, "seq_mean_token_sum").item() == pytest.approx(7.5)  # 6, 9
    assert core.aggregate(loss, mask, "token_mean").item() == pytest.approx(3.0)  # 15 / 5
    with pytest.raises(ValueError, match="constant horizon"):
        core.aggregate(loss, mask, "seq_mean_token_sum_norm")
