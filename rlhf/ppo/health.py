"""Training-health monitors: alarms when PPO drifts into a known failure, as warnings or stops.

Watched per update (thresholds in `ppo.health`, each null = off):
- KL to the reference above `kl_max`, or below `kl_min` (an estimate negative beyond noise means
  the log-probs of policy and reference are computed inconsistently);
- policy entropy below `entropy_min` (collapse onto a few tokens);
- EOS rate below `eos_rate_min`, truncation rate above `truncation_rate_max`;
- the probability ratio's maximum above `ratio_max` (a policy far from the one that sampled);
- distinct n-grams / all n-grams of the batch's responses below `distinct_min` (mode collapse);
- the share of the batch's decoded answers that hold its most frequent phrase
  (rlhf/reporting/phrases.py; `ppo/health/top_phrase_share`) above `top_phrase_max`: answers that
  stay distinct while all saying "别问我，<topic>，别问我" have collapsed onto one phrase, which
  distinct n-grams over the whole batch barely see;
- the score rising while the correlation of score and response length passes `length_corr_max`
  (the reward is being won by length alone);
- the mean response length of the last `trend_window` updates over that of the first
  `trend_window` outside [1/`length_drift_max`, `length_drift_max`]: answers shrinking from 39
  to 11 tokens while the score rose is how the insult RM was won by brevity, and a correlation
  within one batch does not see it.
Every alarm is logged as `health/<name>` = 1 and a warning line; names listed in
`ppo.health.stop_on` stop the run (HealthStop) after the update is logged and before it is
checkpointed, so the newest checkpoint is the last good state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from rlhf.config import HealthConfig
from rlhf.errors import RlhfError
from rlhf.reporting.phrases import top_phrase

log = logging.getLogger(__name__)


class HealthStop(RlhfError):
    """A health alarm configured to stop the run went off."""


@dataclass
class Alarm:
    name: str  # the threshold's config key, e.g. kl_max
    message: str


def distinct_ngrams(sequences: list[list[int]], n: int) -> float:
    """Distinct n-grams / all n-grams over a batch of token sequences (1.0 when there are none)."""
    grams = [tuple(seq[i : i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation; 0 when either side is constant."""
    a, b = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = (a.square().sum() * b.square().sum()).sqrt()
    return 0.0 if denominator == 0 else (a * b).sum().item() / denominator.item()


def slope(values: list[float]) -> float:
    """Least-squares slope of values against their index."""
    t = torch.arange(len(values), dtype=torch.float64)
    v = torch.tensor(values, dtype=torch.float64)
    t = t - t.mean()
    return ((t * (v - v.mean())).sum() / t.square().sum()).item()


# name → (metric it reads, True when an alarm is "above the threshold")
BOUNDS = {
    "kl_max": ("ppo/objective/kl", True),
    "kl_min": ("ppo/objective/kl", False),
    "entropy_min": ("ppo/policy/entropy", False),
    "eos_rate_min": ("ppo/eos_rate", False),
    "truncation_rate_max": ("ppo/truncation_rate", True),
    "ratio_max": ("ppo/policy/ratio_max", True),
    "distinct_min": ("ppo/health/distinct", False),
}


def threshold_alarms(metrics: dict[str, float], cfg: HealthConfig) -> list[Alarm]:
    """Alarms of the plain thresholds, from one update's metrics (missing metrics are skipped)."""
    alarms = []
    for name, (key, above) in BOUNDS.items():
        bound = getattr(cfg, name)
        if bound is None or key not in metrics:
            continue
        value = metrics[key]
        if (value > bound) if above else (value < bound):
            relation = ">" if above else "<"
            alarms.append(Alarm(name, f"{key} = {value:.4g} {relation} {name} {bound:g}"))
    return alarms


def phrase_alarm(texts: list[str], cfg: HealthConfig) -> tuple[float, Alarm | None]:
    """(share of the answers holding their most frequent phrase, its alarm above
    top_phrase_max)."""
    top = top_phrase(texts)
    bound = cfg.top_phrase_max
    if bound is None or top.share <= bound:
        return top.share, None
    return top.share, Alarm(
        "top_phrase_max",
        f"ppo/health/top_phrase_share = {top.share:.4g} > top_phrase_max {bound:g}: "
        f"{top.phrase!r} is in {round(top.share * len(texts))} of the batch's {len(texts)} answers",
    )


def length_alarm(correlation: float, score_history: list[float], cfg: HealthConfig) -> Alarm | None:
    """The score rises over the last trend_window updates and length explains it."""
    window = score_history[-cfg.trend_window :]
    if cfg.length_corr_max is None or len(window) < cfg.trend_window:
        return None
    trend = slope(window)
    if trend > 0 and correlation > cfg.length_corr_max:
        return Alarm(
            "length_corr_max",
            f"score rising ({trend:+.4g}/update) with corr(score, length) = {correlation:.3f} "
            f"> length_corr_max {cfg.length_corr_max:g}",
        )
    return None


def length_drift_alarm(
    start_lengths: list[float], recent_lengths: list[float], cfg: HealthConfig
) -> tuple[float | None, Alarm | None]:
    """(ratio of the recent to the starting mean length, its alarm): None until the first
    trend_window updates are in; the alarm when the ratio leaves [1/max, max]."""
    if len(start_lengths) < cfg.trend_window or not recent_lengths:
        return None, None
    start = sum(start_lengths) / len(start_lengths)
    recent = sum(recent_lengths) / len(recent_lengths)
    ratio = recent / start if start > 0 else 1.0
    bound = cfg.length_drift_max
    if bound is None or 1 / bound <= ratio <= bound:
        return ratio, None
    return ratio, Alarm(
        "length_drift_max",
        f"mean response length {recent:.1f} tokens over the last {len(recent_lengths)} updates "
        f"against {start:.1f} over the first {len(start_lengths)}: ratio {ratio:.2f} outside "
        f"[{1 / bound:.2f}, {bound:g}] (length_drift_max)",
    )


class HealthMonitor:
    """Adds health statistics to each update's metrics and raises the configured alarms."""

    def __init__(self, cfg: HealthConfig):
        self.cfg = cfg
        self.score_history: list[float] = []
        self.start_lengths: list[float] = []  # mean response length of the first updates
        self.recent_lengths: list[float] = []  # ... of the last trend_window updates

    def observe(self, metrics: dict[str, float], responses: list[list[int]],
                scores: list[float], texts: list[str] | None = None) -> list[Alarm]:  # fmt: skip
        """Update `metrics` in place with health/* entries; returns the alarms. `texts`: the
        decoded responses (the phrase statistic and alarm are skipped without them)."""
        lengths = [float(len(r)) for r in responses]
        metrics["ppo/health/distinct"] = distinct_ngrams(responses, self.cfg.distinct_n)
        metrics["ppo/health/length_score_corr"] = pearson(scores, lengths)
        self.score_history = [*self.score_history, sum(scores) / len(scores)][-100:]
        alarms = threshold_alarms(metrics, self.cfg)
        if texts is not None:
            metrics["ppo/health/top_phrase_share"], phrase = phrase_alarm(texts, self.cfg)
            alarms += [phrase] if phrase else []
        length = length_alarm(metrics["ppo/health/length_score_corr"], self.score_history, self.cfg)
        alarms += [length] if length else []
        alarms += self._length_drift(metrics, sum(lengths) / len(lengths))
        for alarm in alarms:
            metrics[f"health/{alarm.name}"] = 1.0
            log.warning("health alarm: %s", alarm.message)
        return alarms

    def _length_drift(self, metrics: dict[str, float], mean_length: float) -> list[Alarm]:
        window = self.cfg.trend_window
        if len(self.start_lengths) < window:
            self.start_lengths.append(mean_length)
        self.recent_lengths = [*self.recent_lengths, mean_length][-window:]
        ratio, alarm = length_drift_alarm(self.start_lengths, self.recent_lengths, self.cfg)
        if ratio is not None:
            metrics["ppo/health/length_ratio"] = ratio
        return [alarm] if alarm else []

    def stop_if_configured(self, alarms: list[Alarm], update: int, last_good: str) -> None:
        stopping = [a for a in alarms if a.name in self.cfg.stop_on]
        if stopping:
            raise HealthStop(
                f"health: {stopping[0].message} at update {update} (ppo.health.stop_on); "
                f"last good checkpoint: {last_good}"
            )

    def state_dict(self) -> dict:
        return {
            "score_history": list(self.score_history),
            "start_lengths": list(self.start_lengths),
            "recent_lengths": list(self.recent_lengths),
        }

    def load_state_dict(self, state: dict) -> None:
        self.score_history = list(state["score_history"])
        # checkpoints written before the length-drift alarm have no lengths: it starts over
        self.start_lengths = list(state.get("start_lengths", []))
        self.recent_lengths = list(state.get("recent_lengths", []))
