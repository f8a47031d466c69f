"""The rollout–trainer gap and its importance-sampling correction on hand-made log-probs, and
answers from another engine laid out as the trainer's own (float64: exact values)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.ppo import core
from rlhf.ppo.rollout_correction import gap_stats, importance_weights, weight_stats
from rlhf.runtime.generation import pad_answers

TRAINER = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.2, -3.0, 0.0, 0.0]], dtype=torch.float64)
ENGINE = torch.tensor([[-1.5, -1.0, -0.5, 9.0], [-0.2, -1.0, 0.0, 9.0]], dtype=torch.float64)
MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])


def test_gap_stats_read_the_real_tokens_only():
    stats = gap_stats(TRAINER, ENGINE, MASK)
    diffs = [0.5, -1.0, 0.0, 0.0, -2.0]  # trainer − engine on the five real tokens
    assert stats["logprob_gap_mean"].item() == pytest.approx(sum(map(abs, diffs)) / 5)
    assert stats["logprob_gap_max"].item() == pytest.approx(2.0)
    k3 = sum(math.expm1(d) - d for d in diffs) / 5
    assert stats["engine_kl_k3"].item() == pytest.approx(k3, rel=1e-6)


def test_token_truncate_caps_each_ratio():
    weights, outside = importance_weights(TRAINER, ENGINE, MASK, "token_truncate", high=1.5)
    expected = torch.tensor(
        [[1.5, math.exp(-1.0), 1.0, 0.0], [1.0, math.exp(-2.0), 0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=0)
    assert outside.tolist() == [[True, False, False, False], [False, False, False, False]]
    floored, _ = importance_weights(TRAINER, ENGINE, MASK, "token_truncate", high=1.5, low=0.5)
    assert floored[0, 1].item() == pytest.approx(0.5) and floored[1, 1].item() == 0.5


def test_token_mask_zeroes_ratios_outside_the_band():
    weights, outside = importance_weights(
        TRAINER, ENGINE, MASK, "token_mask", high=1.5, low=0.2
    )  # fmt: skip
    expected = torch.tensor(
        [[0.0, math.exp(-1.0), 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=0)
    assert outside.sum().item() == 2


def test_sequence_modes_use_one_ratio_per_answer():
    weights, _ = importance_weights(TRAINER, ENGINE, MASK, "sequence_truncate", high=3.0)
    first, second = math.exp(0.5 - 1.0), math.exp(-2.0)  # summed log-ratios of each answer
    expected = torch.tensor(
        [[first, first, first, 0.0], [second, second, 0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=0)
    masked, _ = importance_weights(TRAINER, ENGINE, MASK, "sequence_mask", high=3.0, low=0.5)
    assert masked[0, :3].tolist() == pytest.approx([first] * 3)
    assert masked[1].tolist() == [0.0] * 4  # e^-2 is below the floor: the whole answer goes


def test_equal_log_probs_weigh_one_and_the_loss_is_unchanged():
    weights, outside = importance_weights(TRAINER, TRAINER, MASK, "token_truncate", high=2.0)
    assert weights[MASK].tolist() == [1.0] * 5 and not outside.any()
    advantages = torch.tensor([[1.0, -1.0, 0.5, 0.0], [2.0, 0.1, 0.0, 0.0]], dtype=torch.float64)
    new = TRAINER + 0.1
    plain, _ = core.policy_loss(new, TRAINER, advantages, MASK, 0.2, 0.2)
    weighted, _ = core.policy_loss(new, TRAINER, advantages, MASK, 0.2, 0.2, weights=weights)
    assert weighted.item() == plain.item()


def test_weights_scale_each_token_of_the_policy_loss():
    weights = torch.tensor([[2.0, 0.0, 1.0, 0.0], [1.0, 0.5, 0.0, 0.0]], dtype=torch.float64)
    advantages = torch.ones_like(TRAINER)
    loss, _ = core.policy_loss(TRAINER, TRAINER, advantages, MASK, 0.2, 0.2, weights=weights)
    # ratio 1: each real token's loss is −A = −1, times its weight, averaged over 5 tokens
    assert loss.item() == pytest.approx(-(2.0 + 0.0 + 1.0 + 1.0 + 0.5) / 5)


def test_weight_stats():
    weights, outside = importance_weights(TRAINER, ENGINE, MASK, "token_truncate", high=1.5)
    stats = weight_stats(weights, outside, MASK)
    assert stats["correction_max"].item() == 1.5
    assert stats["correction_min"].item() == pytest.approx(math.exp(-2.0))
    assert stats["correction_changed"].item() == pytest.approx(1 / 5)


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="token_clip"):
        importance_weights(TRAINER, ENGINE, MASK, "token_clip", high=2.0)


def test_another_engines_answers_take_the_trainers_layout():
    stop, pad = 2, 0
    responses, mask, ended = pad_answers([[5, 6, stop], [7], [8, 9, 9, 9]], stop, pad)
    assert responses.tolist() == [[5, 6, stop, pad], [7, pad, pad, pad], [8, 9, 9, 9]]
    assert mask.tolist() == [
        [True, True, True, False],
        [True, False, False, False],
        [True, True, True, True],
    ]
    assert ended.tolist() == [True, False, False]


def test_a_pad_id_equal_to_the_stop_token_ends_no_answer():
    """SmolLM2: pad == EOS == the stop token; padding after a cut-off answer is not a stop."""
    stop = pad = 2
    responses, mask, ended = pad_answers([[5, 6], [7, stop]], stop, pad)
    assert responses.tolist() == [[5, 6], [7, stop]]
    assert ended.tolist() == [False, True]
    responses, mask, ended = pad_answers([[5], [7, 8, stop]], stop, pad)
    assert mask.tolist() == [[True, False, False], [True, True, True]]
    assert ended.tolist() == [False, True]
