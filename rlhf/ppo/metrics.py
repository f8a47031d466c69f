"""Statistics and sample rows of a PPO rollout, as pure functions of the rollout's tensors."""

from __future__ import annotations

from rlhf.ppo import core
from rlhf.ppo.rollout import Rollout

SAMPLE_COLUMNS = ["update", "prompt", "response", "score", "kl", "length", "eos"]


def rollout_metrics(rollout: Rollout) -> dict[str, float]:
    """Per-update statistics of a rollout (see the metric table in docs/ppo.md)."""
    mask = rollout.mask
    per_sequence = {
        "kl": core.masked_sum(rollout.kl, mask, dim=1),
        "kl_k1": core.masked_sum(
            core.kl_penalty(rollout.logprobs, rollout.ref_logprobs, "k1"), mask, 1
        ),
        "kl_k3": core.masked_sum(
            core.kl_penalty(rollout.logprobs, rollout.ref_logprobs, "k3"), mask, 1
        ),
        "non_score_reward": core.masked_sum(rollout.non_score_rewards, mask, dim=1),
        "entropy": core.masked_sum(-rollout.logprobs, mask, dim=1),
    }
    metrics = {f"ppo/objective/{k}": v.mean().item() for k, v in per_sequence.items()}
    metrics["ppo/objective/scores"] = rollout.scores.mean().item()
    metrics["ppo/objective/raw_scores"] = rollout.raw_scores.mean().item()
    metrics["ppo/objective/rlhf_reward"] = (
        (rollout.scores + per_sequence["non_score_reward"]).mean().item()
    )
    metrics["ppo/eos_rate"] = rollout.ended.float().mean().item()
    metrics["ppo/truncation_rate"] = 1 - metrics["ppo/eos_rate"]
    metrics["ppo/response_length"] = mask.sum(1).float().mean().item()
    metrics["ppo/val/returns_mean"] = core.masked_mean(rollout.returns, mask).item()
    metrics["ppo/val/advantages_mean"] = core.masked_mean(rollout.advantages, mask).item()
    for key, value in (rollout.engine_stats or {}).items():  # sampled by another engine
        metrics[f"ppo/rollout/{key}"] = float(value)
    if rollout.uniform is not None:  # answers in groups (samples_per_prompt >= 2)
        metrics["ppo/uniform_group_share"] = rollout.uniform.float().mean().item()
        trained = rollout.loss_mask.any(1).float().mean().item()
        metrics["ppo/dropped_group_share"] = 1.0 - trained
    return metrics


def sample_row(
    update: int,
    prompt: str,
    response: str,
    score: float,
    kl: float | None,
    length: int,
    ended: bool,
) -> list:
    """One row of a sample table (SAMPLE_COLUMNS); kl None where it was not computed."""
    kl = None if kl is None else round(float(kl), 4)
    return [update, prompt, response, round(float(score), 4), kl, int(length), bool(ended)]


def sample_rows(rollout: Rollout, update: int) -> list[list]:
    """Rows of the sample table: one per response."""
    kl = core.masked_sum(rollout.kl, rollout.mask, dim=1)
    return [
        sample_row(update, p, r, s.item(), k.item(), n, e)
        for p, r, s, k, n, e in zip(
            rollout.prompts,
            rollout.texts,
            rollout.raw_scores,
            kl,
            rollout.mask.sum(1),
            rollout.ended,
            strict=True,
        )
    ]
