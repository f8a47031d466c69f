"""Per-update statistics of a hand-made rollout."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.ppo.metrics import rollout_metrics, sample_rows
from rlhf.ppo.rollout import Rollout
from rlhf.runtime.generation import EncodedPrompts


def test_rollout_metrics_by_hand():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    logprobs = torch.tensor([[-1.0, -2.0, -9.0], [-1.0, -9.0, -9.0]])
    ref = torch.tensor([[-2.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    kl = logprobs - ref  # k1: [[1, 0, ·], [−0.5, ·, ·]]
    rollout = Rollout(
        prompts=["a", "b"],
        encoded=EncodedPrompts(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1)),
        responses=torch.zeros(2, 3, dtype=torch.long),
        mask=mask,
        ended=torch.tensor([True, False]),
        texts=["xy", "z"],
        raw_scores=torch.tensor([2.0, 0.0]),
        scores=torch.tensor([1.0, -1.0]),
        logprobs=logprobs,
        ref_logprobs=ref,
        kl=kl,
        non_score_rewards=-0.1 * kl * mask,
        advantages=torch.zeros(2, 3),
        returns=torch.ones(2, 3),
    )
    metrics = rollout_metrics(rollout)
    assert metrics["ppo/objective/kl"] == pytest.approx((1.0 - 0.5) / 2)
    assert metrics["ppo/objective/kl_k1"] == pytest.approx(0.25)
    k3 = [math.exp(-1) + 1 - 1, 0.0, math.exp(0.5) - 0.5 - 1]  # (r − 1) − log r, r = q/p
    assert metrics["ppo/objective/kl_k3"] == pytest.approx((k3[0] + k3[1] + k3[2]) / 2)
    assert metrics["ppo/objective/non_score_reward"] == pytest.approx((-0.1 + 0.05) / 2)
    assert metrics["ppo/objective/rlhf_reward"] == pytest.approx((1 - 0.1 - 1 + 0.05) / 2)
    assert metrics["ppo/objective/entropy"] == pytest.approx((3.0 + 1.0) / 2)
    assert metrics["ppo/objective/scores"] == 0.0 and metrics["ppo/objective/raw_scores"] == 1.0
    assert (metrics["ppo/eos_rate"], metrics["ppo/truncation_rate"]) == (0.5, 0.5)
    assert metrics["ppo/response_length"] == 1.5
    assert sample_rows(rollout, update=3)[0] == [3, "a", "xy", 2.0, 1.0, 2, True]
