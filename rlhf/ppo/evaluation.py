"""Held-out evaluation during PPO: answers to the evaluation prompts with the evaluation
sampling settings (greedy by default), scored raw by the reward and, when given, by an
independent judge (eval.judge). Each process answers its share of the prompts; the
statistics cover all of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from rlhf.ppo.metrics import sample_row
from rlhf.ppo.rollout import Rollout
from rlhf.reporting.phrases import top_phrase
from rlhf.runtime import distributed, sharding

if TYPE_CHECKING:
    from rlhf.rewards.judge import Judge


@torch.no_grad()
def evaluate(
    sample_and_score: Callable[..., Rollout],
    prompts: list[str],
    batch_size: int,
    policy: torch.nn.Module,
    judge: Judge | None,
    threshold: float,
    update: int,
) -> tuple[dict[str, float], list[list]]:
    """The `ppo/eval/*` metrics of `prompts` and their sample-table rows (every process's).
    `sample_and_score(prompts, rows, evaluation=True)` answers and scores one batch (rows: the
    prompts' positions, which seed their answers); `threshold`: the reward's decision
    threshold (ppo/eval/above_threshold)."""
    texts, scores, lengths, ended, judged = [], [], [], [], []
    mine = distributed.shard(prompts)
    offset = distributed.shard_offset(len(prompts))
    # gathered once: processes may have different numbers of batches (no collective inside)
    with sharding.gathered(policy):
        for start in range(0, len(mine), batch_size):
            rows = list(range(offset + start, offset + start + batch_size))
            batch = mine[start : start + batch_size]
            rollout = sample_and_score(batch, rows[: len(batch)], evaluation=True)
            texts += rollout.texts
            scores += rollout.raw_scores.tolist()
            lengths += rollout.mask.sum(1).tolist()
            ended += rollout.ended.tolist()
            if judge is not None:
                judged += judge.score(rollout.prompts, rollout.texts).tolist()
    gathered = distributed.gather_objects((texts, scores, lengths, ended, judged))
    texts, scores, lengths, ended, judged = (
        [x for part in gathered for x in part[i]] for i in range(5)
    )
    rows = [
        sample_row(update, p, t, s, None, n, e)
        for p, t, s, n, e in zip(prompts, texts, scores, lengths, ended, strict=True)
    ]
    n = max(len(scores), 1)
    metrics = {
        "ppo/eval/score": sum(scores) / n,
        "ppo/eval/length": sum(lengths) / n,
        "ppo/eval/eos_rate": sum(ended) / n,
        "ppo/eval/distinct": len(set(texts)) / n,
        "ppo/eval/above_threshold": sum(s > threshold for s in scores) / n,
        "ppo/eval/top_phrase_share": top_phrase(texts).share,
    }
    if judge is not None:
        metrics["ppo/eval/judge_score"] = sum(judged) / n
        above = sum(score > judge.threshold for score in judged)
        metrics["ppo/eval/judge_above_threshold"] = above / n
    return metrics, rows
