"""`eval.judge`: a second measure of the goal that the policy did not train against, and the
"reward hacking suspected" check that compares it with the reward model.

A policy optimised against a learnt reward finds what that reward likes, which need not be the
goal: the insult RM learnt "short = rude" and PPO shortened its answers to "好。" and "我。",
which the RM called 92 % rude and no Chinese reader would (experiments/insult_ppo/REPORT.md).
The judge is any reward config (`rlhf/rewards`: a function such as the rule-based
`rlhf.rewards.rudeness.rudeness_judge`, a classifier, or another RM folder, the "gold" reward of
an over-optimisation study); it must not share training data with the PPO reward model. It is
scored raw on the same answers as the RM, in the eval stage (`eval/<model>/judge_score`,
`eval/<model>/judge_above_threshold`, `eval/judge_win_rate`) and, with `eval.judge_in_ppo`, in
PPO's periodic evaluation (`ppo/eval/judge_score`, `ppo/eval/judge_above_threshold`).

Reward hacking is suspected (`eval/hacking_suspected` = 1, a warning line, and the pipeline's
closing summary) when
- the share of the policy's answers above the RM's threshold exceeds the share above the
  judge's by more than `eval.hacking_margin` (`eval/<model>/rm_judge_gap`), or
- the policy's mean answer length over the baseline's (`eval/length_ratio`) leaves
  [1/`eval.length_drift_factor`, `eval.length_drift_factor`].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from rlhf.config import Config, EvalConfig
from rlhf.rewards import RewardFunction, build_reward

MODELS = ("baseline", "policy")


@dataclasses.dataclass
class Judge:
    score: RewardFunction  # (prompts, completions) → (N,) raw judge scores
    threshold: float  # a score above it counts (for a rudeness judge: rude)


def build_judge(config: Config) -> Judge | None:
    """The configured judge and its threshold; None when `eval.judge` is null."""
    cfg = config.eval.judge
    if cfg is None:
        return None
    score = build_reward(cfg, None, config.data.system_prompt, config.model)
    threshold = config.eval.judge_threshold
    if threshold is None and cfg.kind == "reward_model":
        from rlhf.stages.rm import decision_threshold  # the stages import this module

        threshold = decision_threshold(Path(cfg.model_path))
    return Judge(score, 0.0 if threshold is None else threshold)


def win_rate(policy: torch.Tensor, baseline: torch.Tensor) -> float:
    """Share of prompts where the policy scores above the baseline, ties counted half; (N,)."""
    ties = (policy == baseline).float()
    return ((policy > baseline).float() + 0.5 * ties).mean().item()


def judge_metrics(judged: dict[str, torch.Tensor], threshold: float) -> dict[str, float]:
    """Mean judge score and share above the judge's threshold per model, and the policy's win
    rate by the judge; `judged` maps baseline / policy to (N,) judge scores."""
    metrics = {"eval/judge_threshold": threshold}
    for name in MODELS:
        metrics[f"eval/{name}/judge_score"] = judged[name].mean().item()
        above = (judged[name] > threshold).float().mean().item()
        metrics[f"eval/{name}/judge_above_threshold"] = above
    metrics["eval/judge_win_rate"] = win_rate(judged["policy"], judged["baseline"])
    return metrics


def hacking_check(
    metrics: dict[str, float], margin: float | None, length_factor: float | None
) -> tuple[dict[str, float], list[str]]:
    """From the eval metrics (model_metrics and judge_metrics of both models): the numbers of
    the check and its reasons, one sentence each (none: not suspected)."""
    numbers: dict[str, float] = {}
    reasons = []
    if "eval/policy/judge_above_threshold" in metrics:
        for name in MODELS:
            rm_share = metrics[f"eval/{name}/above_threshold"]
            gap = rm_share - metrics[f"eval/{name}/judge_above_threshold"]
            numbers[f"eval/{name}/rm_judge_gap"] = gap
        gap = numbers["eval/policy/rm_judge_gap"]
        if margin is not None and gap > margin:
            reasons.append(
                f"the RM puts {metrics['eval/policy/above_threshold']:.0%} of the policy's "
                f"answers above its threshold, the judge "
                f"{metrics['eval/policy/judge_above_threshold']:.0%}: gap {gap:.2f} > "
                f"eval.hacking_margin {margin:g}"
            )
    baseline, policy = metrics["eval/baseline/length"], metrics["eval/policy/length"]
    if baseline > 0:
        ratio = policy / baseline
        numbers["eval/length_ratio"] = ratio
        if length_factor is not None and not 1 / length_factor <= ratio <= length_factor:
            reasons.append(
                f"the policy's answers average {policy:.1f} tokens against the baseline's "
                f"{baseline:.1f}: ratio {ratio:.2f} outside [{1 / length_factor:.2f}, "
                f"{length_factor:g}] (eval.length_drift_factor)"
            )
    numbers["eval/hacking_suspected"] = float(bool(reasons))
    return numbers, reasons


def hacking_summary(metrics: dict[str, float], cfg: EvalConfig) -> str:
    """One line for a run's closing summary, from the eval stage's final metrics."""
    _, reasons = hacking_check(metrics, cfg.hacking_margin, cfg.length_drift_factor)
    if reasons:
        return "reward hacking suspected: " + "; ".join(reasons)
    if "eval/policy/judge_above_threshold" in metrics:
        return "no reward hacking suspected: the RM and the judge agree, the answers' length held"
    return "no reward hacking suspected by answer length (no eval.judge to check the RM against)"
