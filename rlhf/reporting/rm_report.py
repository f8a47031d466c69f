"""The reward model's report before PPO: held-out accuracy and margin, and whether the RM's
preference probabilities mean what they say.

A Bradley–Terry RM says P(chosen ≻ rejected) = sigmoid(s_chosen − s_rejected). Calibration is
read in top-label form: for a pair with margin m the RM's confidence in the answer it ranks
higher is c = sigmoid(|m|) ∈ [0.5, 1], and it is right when m > 0 (a tie, m = 0, counts half).
The reliability table bins c into `num_bins` equal-width bins over [0.5, 1]; a calibrated RM's
accuracy in each bin equals its mean confidence there. ECE = Σ_b (n_b / N) · |acc_b − conf_b|
(Guo et al. 2017). An RM at accuracy 0.7 with confidences near 1 is over-confident: PPO meets its
mistakes at full strength.

The rm stage has no policy to sample from, so the RM's score spread on the starting (SFT)
policy's own samples is taken where they are drawn: the PPO stage's reward calibration
(`reward.calibrate`) scores `reward.calibrate_samples` of them, and `score_spread` summarises
those raw scores (`ppo/reward_calibration.json`, logged as `ppo/start/score_*`). A spread far
wider than the data's margins, or answers already above the threshold, says how much room PPO
has before it leaves what the RM was trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ReliabilityBin:
    low: float  # confidence range [low, high) (the last bin includes 1)
    high: float
    count: int  # pairs whose confidence falls in it
    confidence: float  # their mean confidence (NaN when empty)
    accuracy: float  # their share ranked right (NaN when empty)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def reliability_table(margins: list[float], num_bins: int = 10) -> list[ReliabilityBin]:
    """Margins (N,) s_chosen − s_rejected → `num_bins` bins of top-label confidence over [0.5, 1]."""
    width = 0.5 / num_bins
    members: list[list[tuple[float, float]]] = [[] for _ in range(num_bins)]
    for margin in margins:
        confidence = sigmoid(abs(margin))
        correct = 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0
        index = min(int((confidence - 0.5) / width), num_bins - 1)
        members[index].append((confidence, correct))
    table = []
    for index, pairs in enumerate(members):
        n = len(pairs)
        table.append(
            ReliabilityBin(
                low=0.5 + index * width,
                high=0.5 + (index + 1) * width,
                count=n,
                confidence=sum(c for c, _ in pairs) / n if n else math.nan,
                accuracy=sum(a for _, a in pairs) / n if n else math.nan,
            )
        )
    return table


def expected_calibration_error(table: list[ReliabilityBin]) -> float:
    """Σ_b (n_b / N) · |accuracy_b − confidence_b| over the non-empty bins (0 with no pairs)."""
    total = sum(row.count for row in table)
    if total == 0:
        return 0.0
    return sum(row.count / total * abs(row.accuracy - row.confidence) for row in table if row.count)


def report_markdown(metrics: dict[str, float], table: list[ReliabilityBin]) -> str:
    """`rm/report.md`: the held-out numbers, then the reliability table."""

    def number(value: float) -> str:
        return "" if math.isnan(value) else f"{value:.3f}"

    lines = ["# Reward model report (held-out pairs)", ""]
    lines += [f"- {name}: {value:.4g}" for name, value in metrics.items()]
    lines += [
        "",
        "Calibration of sigmoid(s_chosen − s_rejected), top-label: confidence in the answer "
        "ranked higher, and the share ranked right.",
        "",
        "| confidence bin | pairs | mean confidence | accuracy |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| [{row.low:.2f}, {row.high:.2f}) | {row.count} | {number(row.confidence)} | "
        f"{number(row.accuracy)} |"
        for row in table
    ]
    return "\n".join(lines) + "\n"


def quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values, linearly interpolated between the nearest ranks."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def score_spread(scores: list[float]) -> dict[str, float]:
    """Count, mean, sample standard deviation (as the calibration uses), min, 10th percentile,
    median, 90th percentile and max of raw reward scores (at least two)."""
    ordered = sorted(scores)
    n = len(ordered)
    mean = sum(ordered) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in ordered) / (n - 1))
    return {
        "n": n, "mean": mean, "std": std, "min": ordered[0], "p10": quantile(ordered, 0.1),
        "median": quantile(ordered, 0.5), "p90": quantile(ordered, 0.9), "max": ordered[-1],
    }  # fmt: skip
