"""The "reward hacking suspected" check of the eval stage: the training reward's verdict on the
policy's answers against an independent judge's (`eval.judge`, rlhf/rewards/judge.py), the
answers' length against the baseline's, and how much of them one phrase takes against the
baseline's.

Reward hacking is suspected (`eval/hacking_suspected` = 1, a warning line, and the pipeline's
closing summary) when
- the share of the policy's answers above the reward's threshold exceeds the share above the
  judge's by more than `eval.hacking_margin` (`eval/<model>/rm_judge_gap`) — counted beyond the
  same gap on the data's own preferred answers when the eval stage measured them
  (`eval/data_rude/rm_judge_gap`; `eval/policy/rm_judge_excess`): a judge that sees half of the
  data's real rudeness leaves a gap that is its blind spot, not the policy's doing — or
- the policy's mean answer length over the baseline's (`eval/length_ratio`) leaves
  [1/`eval.length_drift_factor`, `eval.length_drift_factor`], or
- the share of the policy's answers that hold its most frequent phrase
  (`eval/<model>/top_phrase_share`, rlhf/reporting/phrases.py) exceeds the baseline's share by
  more than `eval.phrase_margin` (`eval/top_phrase_gap`).
The insult RM of experiments/insult_ppo/REPORT.md fails the first two: it called 92 % of "好。",
"我。" rude, the rudeness judge none, and the answers shrank from 39 to 11 tokens. The third
catches a policy whose answers all differ (the topic changes) while 45 of 50 say
"别问我，<topic>，别问我。": rude by the judge, the same length, yet one phrase won the reward.
"""

from __future__ import annotations

import logging

import torch

from rlhf.config import Config, EvalConfig

MODELS = ("baseline", "policy")  # the eval stage's two models, in its tables' order


def win_rate(policy: torch.Tensor, baseline: torch.Tensor) -> float:
    """Share of prompts where the policy scores above the baseline, ties counted half; (N,)."""
    ties = (policy == baseline).float()
    return ((policy > baseline).float() + 0.5 * ties).mean().item()


def judge_metrics(judged: dict[str, torch.Tensor], threshold: float) -> dict[str, float]:
    """Mean judge score and share above the judge's threshold per model, and the policy's win
    rate by the judge; `judged` maps baseline / policy to (N,) judge scores."""
    metrics = {"eval/judge_threshold": threshold}
    for name in MODELS:
        metrics.update(judge_row(name, judged[name], threshold))
    metrics["eval/judge_win_rate"] = win_rate(judged["policy"], judged["baseline"])
    return metrics


def judge_row(name: str, judged: torch.Tensor, threshold: float) -> dict[str, float]:
    """Mean judge score and share above the judge's threshold of one set of (N,) answers."""
    return {
        f"eval/{name}/judge_score": judged.mean().item(),
        f"eval/{name}/judge_above_threshold": (judged > threshold).float().mean().item(),
    }


def hacking_check(
    metrics: dict[str, float],
    margin: float | None,
    length_factor: float | None,
    phrase_margin: float | None = None,
    phrases: dict[str, str] | None = None,
) -> tuple[dict[str, float], list[str]]:
    """From the eval metrics (model_metrics and judge_metrics of both models): the numbers of
    the check and its reasons, one sentence each (none: not suspected). `phrases`: each model's
    most frequent phrase, named in the reason when given."""
    numbers: dict[str, float] = {}
    reasons = []
    if "eval/policy/judge_above_threshold" in metrics:
        reference = ("data_rude",) if "eval/data_rude/judge_above_threshold" in metrics else ()
        for name in MODELS + reference:
            rm_share = metrics[f"eval/{name}/above_threshold"]
            gap = rm_share - metrics[f"eval/{name}/judge_above_threshold"]
            numbers[f"eval/{name}/rm_judge_gap"] = gap
        gap = numbers["eval/policy/rm_judge_gap"]
        blind = max(0.0, numbers["eval/data_rude/rm_judge_gap"]) if reference else 0.0
        if reference:
            numbers["eval/policy/rm_judge_excess"] = gap - blind
        if margin is not None and gap - blind > margin:
            beyond = f", {gap - blind:.2f} beyond the data's answers' {blind:.2f}" if blind else ""
            reasons.append(
                f"the RM puts {metrics['eval/policy/above_threshold']:.0%} of the policy's "
                f"answers above its threshold, the judge "
                f"{metrics['eval/policy/judge_above_threshold']:.0%}: gap {gap:.2f}{beyond} > "
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
    reason = phrase_check(metrics, numbers, phrase_margin, phrases or {})
    reasons += [reason] if reason else []
    numbers["eval/hacking_suspected"] = float(bool(reasons))
    return numbers, reasons


def phrase_check(
    metrics: dict[str, float],
    numbers: dict[str, float],
    margin: float | None,
    phrases: dict[str, str],
) -> str | None:
    """Adds `eval/top_phrase_gap` (policy's top-phrase share − baseline's) to `numbers`; the
    reason when it passes `margin`."""
    shares = [metrics.get(f"eval/{name}/top_phrase_share") for name in MODELS]
    if None in shares:
        return None
    baseline, policy = shares
    gap = numbers["eval/top_phrase_gap"] = policy - baseline
    if margin is None or gap <= margin:
        return None

    def named(name: str) -> str:
        return f" {phrases[name]!r}" if phrases.get(name) else ""

    return (
        f"the policy's most frequent phrase{named('policy')} is in {policy:.0%} of its answers, "
        f"the baseline's{named('baseline')} in {baseline:.0%} of its: gap {gap:.2f} > "
        f"eval.phrase_margin {margin:g}"
    )


def hacking_summary(metrics: dict[str, float], cfg: EvalConfig) -> str:
    """One line for a run's closing summary, from the eval stage's final metrics."""
    _, reasons = hacking_check(
        metrics, cfg.hacking_margin, cfg.length_drift_factor, cfg.phrase_margin
    )
    if reasons:
        return "reward hacking suspected: " + "; ".join(reasons)
    if "eval/policy/judge_above_threshold" in metrics:
        return (
            "no reward hacking suspected: the RM and the judge agree, the answers' length held, "
            "no phrase took over"
        )
    return (
        "no reward hacking suspected by answer length and phrases (no eval.judge to check the RM "
        "against)"
    )


def closing_summary(config: Config, metrics: dict[str, float]) -> list[tuple[int, str]]:
    """The eval stage's lines of a pipeline's closing summary (its declared `summary`)."""
    line = hacking_summary(metrics, config.eval)
    level = logging.WARNING if line.startswith("reward hacking") else logging.INFO
    return [(level, f"eval: {line}")]
