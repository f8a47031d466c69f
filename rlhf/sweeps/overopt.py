"""Reward over-optimisation in a sweep: gold and proxy reward against √KL, the Gao et al. 2022
fit, and the spread over seeds (`python -m rlhf.compare` adds it when jobs logged a judge).

The gold reward is `eval.judge` (logged by PPO's periodic evaluation as `ppo/eval/judge_score`;
the gold score), the proxy the reward PPO trains against (`ppo/eval/score`, raw), both
on the same held-out answers every `ppo.eval_every` updates. Each evaluation at update u is a
point at d = √KL, KL the mean per-sequence KL to the reference of update u's rollouts
(`ppo/objective/kl`, 0 before the first update); scores are gains over the job's own update-0
evaluation, as in Gao et al., whose fit for RL is

    gold(d) = d · (α − β · ln d),   least squares over every job's points (linear in α, β),

peaking at d* = exp(α/β − 1) with gold(d*) = β · d* when β > 0 (β ≤ 0: no peak; with β < 0
that point is a minimum). Seeds: jobs whose swept overrides differ only in a key named `seed` or
`*.seed` are repeats of one setting, reported as mean ± std (sample std) over its complete
seeds. A seed is flagged when its final gold gain is an outlier among its setting's complete
seeds by the modified z-score of Iglewicz and Hoaglin: |0.6745 · (x − median) / MAD| > 3.5, MAD
the median absolute deviation (mean absolute deviation × 1.2533 when the MAD is 0); it needs at
least 3 seeds. Running jobs are drawn, fitted and listed with what they have logged so far, but
left out of the seed statistics (their latest point is not their final one).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.runs.tracking import read_jsonl

GOLD = "ppo/eval/judge_score"
PROXY = "ppo/eval/score"
KL = "ppo/objective/kl"
OUTLIER_Z = 3.5  # Iglewicz & Hoaglin's cut for the modified z-score
SEED_KEY = re.compile(r"^(?:.*\.)?seed$")
PART = re.compile(r",(?=[^,=]+=)")  # a label's "k=v" parts (values may hold commas)


@dataclass(frozen=True)
class GaoFit:
    alpha: float
    beta: float
    points: int  # points with d > 0 that were fitted

    @property
    def peak(self) -> float | None:
        """d* = √KL of the gold peak, None when β ≤ 0 (no peak)."""
        return math.exp(self.alpha / self.beta - 1) if self.beta > 0 else None

    @property
    def peak_gold(self) -> float | None:
        return self.beta * self.peak if self.peak is not None else None

    def __call__(self, d: float) -> float:
        return d * (self.alpha - self.beta * math.log(d)) if d > 0 else 0.0


def fit_gao(points: list[tuple[float, float]]) -> GaoFit | None:
    """(d, gold gain) points → least-squares α, β of gold = α·d − β·d·ln d; None with fewer
    than 2 points at d > 0 or when d and d·ln d are collinear (all points at one d)."""
    rows = [(d, -d * math.log(d), y) for d, y in points if d > 0]
    s11 = sum(a * a for a, _, _ in rows)
    s12 = sum(a * b for a, b, _ in rows)
    s22 = sum(b * b for _, b, _ in rows)
    t1 = sum(a * y for a, _, y in rows)
    t2 = sum(b * y for _, b, y in rows)
    det = s11 * s22 - s12 * s12
    if len(rows) < 2 or abs(det) <= 1e-12 * max(s11 * s22, 1e-300):
        return None
    return GaoFit((t1 * s22 - t2 * s12) / det, (s11 * t2 - s12 * t1) / det, len(rows))


def modified_z_scores(values: list[float]) -> list[float]:
    """0.6745 · (x − median) / MAD per value (MAD 0: 1.2533 · mean absolute deviation; all
    equal: zeros)."""
    median = statistics.median(values)
    deviations = [abs(v - median) for v in values]
    mad = statistics.median(deviations)
    if mad > 0:
        return [0.6745 * (v - median) / mad for v in values]
    mean_ad = sum(deviations) / len(values)
    if mean_ad == 0:
        return [0.0] * len(values)
    return [(v - median) / (1.253314 * mean_ad) for v in values]


def outlier_seeds(finals: dict[str, float], limit: float = OUTLIER_Z) -> set[str]:
    """The seeds (keys) whose final gold gain has |modified z| > limit among `finals` (a
    setting's seeds); none with fewer than 3 seeds."""
    if len(finals) < 3:
        return set()
    z = modified_z_scores(list(finals.values()))
    return {seed for seed, score in zip(finals, z, strict=True) if abs(score) > limit}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def split_seed(label: str) -> tuple[str, str | None]:
    """A job label "ppo.kl_coef=0.1,ppo.seed=2" → ("ppo.kl_coef=0.1", "2"): the setting without
    its seed part, and the seed (None when the label has none)."""
    parts = PART.split(label) if label else []
    seeds = [p for p in parts if SEED_KEY.match(p.partition("=")[0].lstrip("+~"))]
    rest = [p for p in parts if p not in seeds]
    return ",".join(rest) or "(all)", ",".join(p.partition("=")[2] for p in seeds) or None


@dataclass
class JobCurve:
    """One job's evaluations: d = √KL and the gold and proxy gains over its update-0 values."""

    job: int | None
    label: str
    status: str
    setting: str
    seed: str | None
    steps: list[int] = field(default_factory=list)
    d: list[float] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)
    proxy: list[float] = field(default_factory=list)


def job_curve(num: int | None, label: str, status: str, records: list[dict]) -> JobCurve | None:
    """The curve of a job from its ppo/metrics.jsonl records; None without a gold evaluation
    at update 0 (no judge, or the job has not evaluated yet)."""
    kl_at = {r["step"]: r[KL] for r in records if KL in r}
    evals = {r["step"]: r for r in records if GOLD in r and PROXY in r}
    if 0 not in evals:
        return None
    setting, seed = split_seed(label)
    curve = JobCurve(num, label, status, setting, seed)
    start = evals[0]
    for step in sorted(evals):
        kl = 0.0 if step == 0 else kl_at.get(step)
        if kl is None:
            continue
        curve.steps.append(step)
        curve.d.append(math.sqrt(max(kl, 0.0)))
        curve.gold.append(evals[step][GOLD] - start[GOLD])
        curve.proxy.append(evals[step][PROXY] - start[PROXY])
    return curve


def load_curves(jobs: list) -> list[JobCurve]:
    """JobCurve of each sweep job (rlhf.sweeps.compare.JobResult) that evaluated a judge."""
    curves = []
    for job in jobs:
        # the folder of the stage that logs the metrics: their namespace (`<stage>/...`)
        records = read_jsonl(Path(job.folder) / GOLD.split("/", 1)[0] / "metrics.jsonl")
        curve = job_curve(job.num, job.label, job.status, records)
        if curve is not None:
            curves.append(curve)
    return curves


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _plus_minus(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.4g} ± {std:.3g}"


def fit_of(curves: list[JobCurve]) -> GaoFit | None:
    """The Gao fit over every evaluation of every job."""
    return fit_gao([(d, g) for c in curves for d, g in zip(c.d, c.gold, strict=True)])


def fit_lines(fit: GaoFit | None) -> list[str]:
    if fit is None:
        return ["Gao fit gold(d) = d·(α − β·ln d): too few points at d > 0 to fit."]
    peak = (
        f"gold peaks at √KL d* = exp(α/β − 1) = {fit.peak:.4g} (gain {fit.peak_gold:.4g})"
        if fit.peak is not None
        else "β ≤ 0: the fitted curve has no peak (no over-optimisation turn to locate)"
    )
    return [
        f"Gao fit gold(d) = d·(α − β·ln d) over {fit.points} evaluations: "
        f"α = {fit.alpha:.4g}, β = {fit.beta:.4g}; {peak}."
    ]


def overopt_markdown(curves: list[JobCurve]) -> str:
    """The over-optimisation section of table.md: the fit, the settings (mean ± std over
    seeds of the final √KL, proxy gain and gold gain) and every job's final point, flagged."""
    fit = fit_of(curves)
    groups: dict[str, list[JobCurve]] = {}
    for curve in curves:
        groups.setdefault(curve.setting, []).append(curve)
    done = {s: [m for m in members if m.status == "complete"] for s, members in groups.items()}
    flagged = {
        id(c)
        for members in done.values()
        for c in members
        if str(id(c)) in outlier_seeds({str(id(m)): m.gold[-1] for m in members})
    }
    lines = ["", "## Over-optimisation: gold (eval.judge) and proxy (reward) against √KL", ""]
    lines += fit_lines(fit)
    lines += [
        "",
        "Gains over each job's update-0 evaluation, at its latest evaluation; a setting's "
        "mean ± sample std is over its complete seeds (running ones are counted apart). "
        f"Outlier seed: |modified z| of its final gold gain among the setting's complete seeds "
        f"> {OUTLIER_Z} (needs 3).",
        "",
        "| setting | seeds | running | √KL | proxy gain | gold gain | outlier seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting, members in groups.items():
        complete = done[setting]
        outliers = [str(m.seed) for m in complete if id(m) in flagged]
        numbers = [
            _plus_minus([getattr(m, series)[-1] for m in complete]) if complete else ""
            for series in ("d", "proxy", "gold")
        ]
        lines.append(
            f"| {setting} | {len(complete)} | {len(members) - len(complete)} | "
            f"{' | '.join(numbers)} | {', '.join(outliers)} |"
        )
    lines += [
        "",
        "| job | setting | seed | status | update | √KL | proxy gain | gold gain | fit | flag |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in curves:
        fitted = fit(c.d[-1]) if fit is not None else None
        flag = "outlier seed" if id(c) in flagged else ""
        lines.append(
            f"| {c.job} | {c.setting} | {c.seed or ''} | {c.status} | {c.steps[-1]} | "
            f"{c.d[-1]:.4g} | {c.proxy[-1]:.4g} | {c.gold[-1]:.4g} | {_number(fitted)} | {flag} |"
        )
    return "\n".join(lines) + "\n"
