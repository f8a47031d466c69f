"""A learning result is a distribution over seeds: the seed summary of a sweep.

Jobs whose swept overrides differ only in seed keys (`seed`, or any key ending in `.seed`, such as
`ppo.seed`) are one *setting*. Over a setting's complete jobs, for each numeric final metric
(every stage's `final_metrics`, rlhf/sweeps/results.py): the mean, the sample standard deviation
(0 for one seed) and the worst seed's value: the lowest, or the highest for a metric where lower
is better (`lower_is_better`, the one place that decides). Running, failed and unreadable jobs
are counted apart, never in the statistics.

Goals: a job whose eval stage reports `eval/goals_met` has goals, one `eval/goals/<name>` each
(1 passed, 0 failed); a complete job with `eval/goals_met` < 1 is a failing seed, named with the
goals it failed. A job without `eval/goals_met` has no goals and is not mentioned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf.sweeps.overopt import mean_std
from rlhf.sweeps.results import EVAL_KL, EVAL_SCORE, HACKING, JUDGE_SHARE, KL, SCORE, JobResult

# Lower is better for these last parts of a metric's name (flags: 1 = the bad case) ...
LOWER_IS_BETTER_NAMES = frozenset(
    {"top_phrase_share", "hacking_suspected", "collapsed", "rm_judge_gap", "ece"}
)
# ... and for last parts ending so: losses, KL (kl, approxkl; not kl_coef), NLL (fluency_nll).
LOWER_IS_BETTER_ENDINGS = ("loss", "kl", "nll")
# The columns of table.md's seed section (every metric is in seeds.csv and the W&B summary).
HEADLINE = {
    EVAL_SCORE: "eval score",
    JUDGE_SHARE: "judge share",
    HACKING: "hacking",
    EVAL_KL: "eval KL",
    SCORE: "score",
    KL: "KL",
}
CSV_COLUMNS = ("setting", "metric", "better", "seeds", "mean", "std", "worst", "worst_seed")


def lower_is_better(metric: str) -> bool:
    """Whether a lower value of `metric` is better: a `loss` part anywhere in its slash-separated
    name, a last part ending in `loss`, `kl` or `nll`, or one of LOWER_IS_BETTER_NAMES (the
    top-phrase share, the hacking and collapse flags, the RM–judge gap, the calibration error).
    Everything else counts as higher is better."""
    parts = metric.split("/")
    return (
        "loss" in parts
        or parts[-1].endswith(LOWER_IS_BETTER_ENDINGS)
        or parts[-1] in LOWER_IS_BETTER_NAMES
    )


@dataclass(frozen=True)
class Spread:
    """One metric over a setting's complete seeds."""

    n: int
    mean: float
    std: float  # sample std, 0 for one seed
    worst: float
    worst_job: JobResult

    @property
    def worst_seed(self) -> str:
        job = self.worst_job
        return job.seed if job.seed is not None else f"job {job.num}"


def spread_of(metric: str, jobs: list[JobResult]) -> Spread | None:
    """The spread of `metric` over the jobs that report it (None: none does)."""
    having = [job for job in jobs if metric in job.final_metrics]
    if not having:
        return None
    values = [job.final_metrics[metric] for job in having]
    mean, std = mean_std(values)
    pick = max if lower_is_better(metric) else min
    worst_job = pick(having, key=lambda job: job.final_metrics[metric])  # ties: the first
    return Spread(len(values), mean, std, worst_job.final_metrics[metric], worst_job)


@dataclass
class Setting:
    """The jobs of one setting, in job order."""

    name: str
    jobs: list[JobResult]

    @property
    def complete(self) -> list[JobResult]:
        return [job for job in self.jobs if job.status == "complete"]

    def spreads(self) -> dict[str, Spread]:
        metrics = sorted({metric for job in self.complete for metric in job.final_metrics})
        found = {metric: spread_of(metric, self.complete) for metric in metrics}
        return {metric: spread for metric, spread in found.items() if spread is not None}

    def has_goals(self) -> bool:
        return any(job.goals() is not None for job in self.complete)

    def failing(self) -> list[tuple[JobResult, list[str]]]:
        """The complete jobs that fail their goals, with the goals they fail."""
        found = [(job, job.failed_goals()) for job in self.complete]
        return [(job, failed) for job, failed in found if failed]


def settings_of(jobs: list[JobResult]) -> list[Setting]:
    """The jobs grouped by setting, settings in the order of their first job."""
    groups: dict[str, list[JobResult]] = {}
    for job in jobs:
        groups.setdefault(job.setting, []).append(job)
    return [Setting(name, members) for name, members in groups.items()]


def _number(value: float) -> str:
    return f"{value:.4g}"


def spread_cell(spread: Spread | None) -> str:
    """`mean ± std, worst W (seed s)`; one seed: its value."""
    if spread is None:
        return ""
    if spread.n == 1:
        return _number(spread.mean)
    return (
        f"{_number(spread.mean)} ± {spread.std:.3g}, worst {_number(spread.worst)} "
        f"(seed {spread.worst_seed})"
    )


def _failing_name(job: JobResult) -> str:
    return job.seed if job.seed is not None else f"job {job.num}"


def goals_cell(setting: Setting) -> str:
    if not setting.has_goals():
        return ""
    with_goals = [job for job in setting.complete if job.goals() is not None]
    failing = [_failing_name(job) for job, _ in setting.failing()]
    met = f"{len(with_goals) - len(failing)} of {len(with_goals)} met"
    return f"{met}; failing: {', '.join(failing)}" if failing else met


def seeds_markdown(settings: list[Setting]) -> str:
    """table.md's seed section ("" when no complete job reported final metrics)."""
    spreads = {setting.name: setting.spreads() for setting in settings}
    shown = [m for m in HEADLINE if any(m in found for found in spreads.values())]
    if not any(spreads.values()):
        return ""
    goals = any(setting.has_goals() for setting in settings)
    header = ["setting", "seeds", "not complete", *(HEADLINE[m] for m in shown)]
    header += ["goals"] if goals else []
    lines = [
        "",
        "## Seeds",
        "",
        "Jobs whose overrides differ only in a seed key (`seed`, `*.seed`) are one setting. Over "
        "its complete seeds, each metric's final value as mean ± sample std, and the worst seed: "
        "the lowest value, the highest where lower is better (losses, KL, NLL, top-phrase share, "
        "the hacking flag). Every metric is in seeds.csv.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for setting in settings:
        found = spreads[setting.name]
        cells = [setting.name, str(len(setting.complete))]
        cells.append(str(len(setting.jobs) - len(setting.complete)))
        cells += [spread_cell(found.get(metric)) for metric in shown]
        cells += [goals_cell(setting)] if goals else []
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    failing = [(s, job, names) for s in settings for job, names in s.failing()]
    if failing:
        lines += ["", "Seeds that fail the experiment's goals:", ""]
        lines += [f"- {s.name}, {job.who}: {', '.join(names)}" for s, job, names in failing]
    return "\n".join(lines) + "\n"


def seeds_rows(settings: list[Setting]) -> list[dict[str, Any]]:
    """seeds.csv: one row per setting and metric."""
    return [
        {
            "setting": setting.name,
            "metric": metric,
            "better": "lower" if lower_is_better(metric) else "higher",
            "seeds": spread.n,
            "mean": spread.mean,
            "std": spread.std,
            "worst": spread.worst,
            "worst_seed": spread.worst_seed,
        }
        for setting in settings
        for metric, spread in setting.spreads().items()
    ]


def summary_of(setting: Setting) -> dict[str, Any]:
    """A setting's W&B summary: `<metric>/mean`, `/std`, `/worst`, `/worst_seed`, `seeds`,
    `not_complete` and, where the jobs have goals, `goals/failing_seeds` with
    `goals/failing/<seed>` (the goals that seed failed)."""
    summary: dict[str, Any] = {
        "seeds": len(setting.complete),
        "not_complete": len(setting.jobs) - len(setting.complete),
    }
    for metric, spread in setting.spreads().items():
        summary[f"{metric}/mean"] = spread.mean
        summary[f"{metric}/std"] = spread.std
        summary[f"{metric}/worst"] = spread.worst
        summary[f"{metric}/worst_seed"] = spread.worst_seed
    if setting.has_goals():
        failing = setting.failing()
        summary["goals/failing_seeds"] = [_failing_name(job) for job, _ in failing]
        for job, names in failing:
            summary[f"goals/failing/{_failing_name(job)}"] = names
    return summary
