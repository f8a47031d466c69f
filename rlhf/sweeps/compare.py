"""`python -m rlhf.compare <multirun folder>`: a table and plots over the jobs of a sweep.

Reads only files (no W&B, no network), each job's `job.json` (rlhf/sweeps/jobs.py), `.hydra/config.yaml`
and `ppo/metrics.jsonl`, so it works on a sweep still running (a job's latest update counts as
its final one) and on sweeps with failed jobs (status and error in the table). Writes into
`<folder>/compare/` (or `--out`):

  table.md, table.csv   one row per job: swept overrides, algorithm (ppo, grpo, rloo, ..., dpo:
                        rlhf.config.recorded_algorithm), status, PPO updates done, final mean
                        score, KL, score − β·KL, entropy, response length, eval score, eval KL
                        to the starting model, eval win rate, wall time; a DPO job has no PPO
                        updates, so its row compares on the eval columns
  curves.png            score and KL per PPO update, the jobs overlaid
  frontier.png          final score against final KL, the reward–KL frontier drawn
  heatmap.png           final score over ppo.kl_coef × ppo.cliprange
  overopt.png           with eval.judge (the gold reward): gold and proxy gains against √KL per
                        job, the Gao et al. fit, and table.md's over-optimisation section (fit
                        α, β, peak d*; seeds as mean ± std, outlier seeds flagged):
                        rlhf/sweeps/overopt.py
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlhf.config import recorded_algorithm
from rlhf.runs.folders import RUN_INFO
from rlhf.runs.tracking import read_jsonl
from rlhf.sweeps import overopt
from rlhf.sweeps.jobs import JOB_FILE, job_dirs

SCORE = "ppo/objective/scores"
KL = "ppo/objective/kl"
ENTROPY = "ppo/objective/entropy"
LENGTH = "ppo/response_length"
BETA = "ppo/kl_coef"
EVAL_SCORE = "eval/policy/score"
EVAL_KL = "eval/kl"
WIN_RATE = "eval/win_rate"

COLUMNS = {  # column → header in table.md
    "job": "job",
    "overrides": "overrides",
    "algorithm": "algorithm",
    "status": "status",
    "updates": "updates",
    "score": "score",
    "kl": "KL",
    "score_minus_beta_kl": "score − β·KL",
    "entropy": "entropy",
    "response_length": "length",
    "eval_score": "eval score",
    "eval_kl": "eval KL",
    "win_rate": "win rate",
    "wall_seconds": "wall s",
    "error": "error",
}


@dataclass
class JobResult:
    """What one job folder holds; `history` is the PPO metrics records that carry a score."""

    num: int | None
    folder: Path
    label: str
    status: str  # complete, failed, running (no job.json yet, or not finished) or unknown
    algorithm: str | None = None  # what trains the job's policy (None: not in its config)
    error: str | None = None
    wall_seconds: float | None = None
    kl_coef: float | None = None  # ppo.kl_coef of the job's config
    cliprange: float | None = None  # ppo.cliprange of the job's config
    history: list[dict[str, float]] = field(default_factory=list)
    eval_metrics: dict[str, float] = field(default_factory=dict)  # the eval stage's final ones
    warnings: list[str] = field(default_factory=list)  # files of the job that could not be read


def penalised_score(score: float, kl: float, beta: float) -> float:
    """score − β·KL: the per-sequence objective PPO maximises (without its entropy)."""
    return score - beta * kl


def final_row(job: JobResult) -> dict[str, Any]:
    """The table row of a job: the last PPO update's values."""
    last = job.history[-1] if job.history else {}
    score, kl = last.get(SCORE), last.get(KL)
    beta = last.get(BETA, job.kl_coef)
    penalised = None
    if score is not None and kl is not None and beta is not None:
        penalised = penalised_score(score, kl, beta)
    return {
        "job": job.num,
        "overrides": job.label,
        "algorithm": job.algorithm,
        "status": job.status,
        "updates": len(job.history),
        "score": score,
        "kl": kl,
        "score_minus_beta_kl": penalised,
        "entropy": last.get(ENTROPY),
        "response_length": last.get(LENGTH),
        "eval_score": job.eval_metrics.get(EVAL_SCORE),
        "eval_kl": job.eval_metrics.get(EVAL_KL),
        "win_rate": job.eval_metrics.get(WIN_RATE),
        "wall_seconds": job.wall_seconds,
        "error": job.error,
    }


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (kl, score) points no other point beats on both (lower KL, higher score), by KL."""
    front: list[tuple[float, float]] = []
    for kl, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((kl, score))
    return front


def heat_grid(
    cells: Sequence[tuple[float, float, float | None]],
) -> tuple[list[float], list[float], list[list[float]]]:
    """(kl_coef, cliprange, score) → sorted kl_coefs (rows), clipranges (columns) and the mean
    score per cell (NaN where no job has a score, e.g. it failed)."""
    kls = sorted({kl for kl, _, _ in cells})
    clips = sorted({clip for _, clip, _ in cells})
    sums = [[0.0] * len(clips) for _ in kls]
    counts = [[0] * len(clips) for _ in kls]
    for kl, clip, score in cells:
        if score is not None:
            sums[kls.index(kl)][clips.index(clip)] += score
            counts[kls.index(kl)][clips.index(clip)] += 1
    grid = [
        [sums[i][j] / counts[i][j] if counts[i][j] else math.nan for j in range(len(clips))]
        for i in range(len(kls))
    ]
    return kls, clips, grid


def _config_value(config: dict, dotted: str) -> float | None:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def stage_of(metric: str) -> str:
    """The stage that logs `metric` (metrics are namespaced `<stage>/...`): its folder's name."""
    return metric.split("/", 1)[0]


def _read_mapping(path: Path, parse: Any, warnings: list[str]) -> dict | None:
    """The mapping in a JSON or YAML file; None when it does not exist (yet) and, with a
    warning naming the file, when it cannot be read."""
    if not path.is_file():
        return None
    try:
        found = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())[:120]
        warnings.append(f"{path} cannot be read ({type(exc).__name__}: {reason})")
        return None
    if not isinstance(found, dict):
        warnings.append(f"{path} holds {type(found).__name__}, not a mapping")
        return None
    return found


def _final_metrics(stage_dir: Path, warnings: list[str]) -> dict[str, float]:
    info = _read_mapping(stage_dir / RUN_INFO, json.loads, warnings) or {}
    metrics = info.get("final_metrics")
    return metrics if isinstance(metrics, dict) else {}


def load_job(folder: Path, now: float) -> JobResult:
    warnings: list[str] = []
    record = _read_mapping(folder / JOB_FILE, json.loads, warnings)
    # no job.json yet: the job is running; an unreadable one: nobody knows
    status = "running" if record is None else record.get("status", "running")
    if warnings:
        status, record = "unknown", {}
        warnings[-1] += "; the job's status is unknown (its other files are still read)"
    record = record or {}
    config = _read_mapping(folder / ".hydra" / "config.yaml", yaml.safe_load, warnings) or {}
    wall = record.get("wall_seconds")
    if wall is None and "started_unix" in record:
        wall = round(now - record["started_unix"], 2)  # still running: time so far
    head = folder.name.split("_", 1)[0]
    return JobResult(
        num=record.get("job", int(head) if head.isdigit() else None),
        folder=folder,
        label=record.get("label") or folder.name.split("_", 1)[-1],
        status=status,
        algorithm=recorded_algorithm(config or {}),
        error=record.get("error"),
        wall_seconds=wall,
        kl_coef=_config_value(config, "ppo.kl_coef"),
        cliprange=_config_value(config, "ppo.cliprange"),
        history=[r for r in read_jsonl(folder / stage_of(SCORE) / "metrics.jsonl") if SCORE in r],
        eval_metrics=_final_metrics(folder / stage_of(EVAL_SCORE), warnings),
        warnings=warnings,
    )


def load_sweep(sweep_dir: Path) -> list[JobResult]:
    now = time.time()
    return [load_job(folder, now) for folder in job_dirs(sweep_dir)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = [c for c in COLUMNS if c != "error"]
    lines = [
        "| " + " | ".join(COLUMNS[c] for c in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows),
    ]
    failed = [row for row in rows if row["status"] == "failed"]
    if failed:
        lines += ["", "Failed jobs:", ""]
        lines += [f"- job {row['job']} ({row['overrides']}): {row['error']}" for row in failed]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def compare(sweep_dir: Path, out_dir: Path) -> list[dict[str, Any]]:
    """Write table.md, table.csv and the plots; return the table rows."""
    from rlhf.reporting.plots import (  # matplotlib only here
        plot_curves,
        plot_frontier,
        plot_heatmap,
        plot_overopt,
    )

    jobs = load_sweep(sweep_dir)
    for job in jobs:  # a broken job folder is named, and the other jobs are compared
        for warning in job.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    rows = [final_row(job) for job in jobs]
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = overopt.load_curves(jobs)  # jobs that evaluated a judge (the gold reward)
    section = overopt.overopt_markdown(curves) if curves else ""
    (out_dir / "table.md").write_text(markdown_table(rows) + section, encoding="utf-8")
    write_csv(rows, out_dir / "table.csv")
    per_update = {
        f"{job.num}: {job.label}": {
            name: ([r["step"] for r in job.history], [r.get(key, math.nan) for r in job.history])
            for name, key in (("score", SCORE), ("KL", KL))
        }
        for job in jobs
        if job.history
    }
    plot_curves(per_update, out_dir / "curves.png")
    scored = [row for row in rows if row["score"] is not None and row["kl"] is not None]
    points = {str(row["job"]): (row["kl"], row["score"]) for row in scored}
    plot_frontier(points, pareto_front(list(points.values())), out_dir / "frontier.png")
    cells = [
        (job.kl_coef, job.cliprange, row["score"])
        for job, row in zip(jobs, rows, strict=True)
        if job.kl_coef is not None and job.cliprange is not None
    ]
    plot_heatmap(*heat_grid(cells), out_dir / "heatmap.png")
    if curves:
        plot_overopt(curves, overopt.fit_of(curves), out_dir / "overopt.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun folder")
    parser.add_argument("--out", type=Path, help="where to write (default: <sweep_dir>/compare)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a folder", file=sys.stderr)
        return 2
    if not job_dirs(args.sweep_dir):
        print(
            f"error: {args.sweep_dir} holds no Hydra job folders (is it a multirun folder?)",
            file=sys.stderr,
        )
        return 2
    out_dir = args.out or args.sweep_dir / "compare"
    rows = compare(args.sweep_dir, out_dir)
    print((out_dir / "table.md").read_text(encoding="utf-8"), end="")
    counts = {s: sum(row["status"] == s for row in rows) for s in ("complete", "running", "failed")}
    if any(row["status"] == "unknown" for row in rows):  # job.json unreadable (warned above)
        counts["unknown"] = sum(row["status"] == "unknown" for row in rows)
    print(
        f"\n{len(rows)} jobs ({', '.join(f'{n} {s}' for s, n in counts.items())}); table and plots in {out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
