"""The comparison report of a sweep (`python -m rlhf.compare`, rlhf/sweeps/compare.py): a table,
the seed summary and plots over its jobs.

Reads only files (rlhf/sweeps/results.py), so it works on a sweep still running (a job's latest
update counts as its final one) and on sweeps with failed jobs (status and error in the table).
Writes into the output folder, each file whole or not at all:

  table.md, table.csv   one row per job: swept overrides, algorithm (ppo, grpo, rloo, ..., dpo:
                        rlhf.config.recorded_algorithm), status, PPO updates done, final mean
                        score, KL, score − β·KL, entropy, response length, eval score (the RM's),
                        the judge's share above its threshold beside it, the hacking flag, eval
                        KL to the starting model, eval win rate, the goals, wall time; a DPO job
                        has no PPO updates, so its row compares on the eval columns. table.md adds
                        the seed section (rlhf/sweeps/seeds.py: per setting mean ± std and the
                        worst seed, and the seeds that fail the experiment's goals) and, with a
                        judge, the over-optimisation section (rlhf/sweeps/overopt.py)
  seeds.csv             per setting and metric: seeds, mean, std, worst and which seed
  curves.png            score and KL per PPO update, the jobs overlaid
  frontier.png          final score against final KL, the reward–KL frontier drawn
  heatmap.png           final score over ppo.kl_coef × ppo.cliprange
  overopt.png           with eval.judge (the gold reward): gold and proxy gains against √KL

and, when the jobs logged to W&B, one summary run per setting in the sweep's W&B group
(rlhf/sweeps/summary_run.py).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rlhf.sweeps import overopt, seeds, summary_run
from rlhf.sweeps.results import (
    BETA,
    ENTROPY,
    EVAL_KL,
    EVAL_SCORE,
    HACKING,
    JUDGE_SHARE,
    KL,
    LENGTH,
    SCORE,
    UNREADABLE,
    WIN_RATE,
    JobResult,
    load_sweep,
)

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
    "judge_share": "judge share",
    "hacking": "hacking",
    "eval_kl": "eval KL",
    "win_rate": "win rate",
    "goals": "goals",
    "wall_seconds": "wall s",
    "error": "error",
}


def penalised_score(score: float, kl: float, beta: float) -> float:
    """score − β·KL: the per-sequence objective PPO maximises (without its entropy)."""
    return score - beta * kl


def goals_text(job: JobResult) -> str | None:
    """ "met", "failed: <goal>, ..." or None (the job has no goals)."""
    failed = job.failed_goals()
    if failed is None:
        return None
    return f"failed: {', '.join(failed)}" if failed else "met"


def final_row(job: JobResult) -> dict[str, Any]:
    """The table row of a job: the last PPO update's values and the stages' final ones; an
    unreadable job's row has its status and the files that could not be read, nothing else."""
    if job.status == UNREADABLE:
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        error = "; ".join(job.unreadable_lines())
        return {**row, "job": job.num, "overrides": job.label, "status": job.status, "error": error}
    last = job.history[-1] if job.history else {}
    score, kl = last.get(SCORE), last.get(KL)
    beta = last.get(BETA, job.kl_coef)
    penalised = None
    if score is not None and kl is not None and beta is not None:
        penalised = penalised_score(score, kl, beta)
    final = job.final_metrics
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
        "eval_score": final.get(EVAL_SCORE),
        "judge_share": final.get(JUDGE_SHARE),
        "hacking": final.get(HACKING),
        "eval_kl": final.get(EVAL_KL),
        "win_rate": final.get(WIN_RATE),
        "goals": goals_text(job),
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


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column == "hacking":
        return "yes" if value >= 1.0 else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]], jobs: list[JobResult]) -> str:
    columns = [c for c in COLUMNS if c != "error"]
    lines = [
        "| " + " | ".join(COLUMNS[c] for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row, job in zip(rows, jobs, strict=True):
        cells = {c: _cell(c, row[c]) for c in columns}
        if job.unreadable:  # the file in the row; the reason in the list below
            files = ", ".join(os.path.relpath(path, job.folder) for path, _ in job.unreadable)
            cells["status"] = f"{UNREADABLE}: {files}"
        lines.append("| " + " | ".join(cells.values()) + " |")
    failed = [row for row in rows if row["status"] == "failed"]
    if failed:
        lines += ["", "Failed jobs:", ""]
        lines += [f"- job {row['job']} ({row['overrides']}): {row['error']}" for row in failed]
    unreadable = [row for row in rows if row["status"] == UNREADABLE]
    if unreadable:
        lines += ["", "Unreadable jobs (left out of every statistic):", ""]
        lines += [f"- job {row['job']} ({row['overrides']}): {row['error']}" for row in unreadable]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


@contextlib.contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A scratch folder inside `out_dir` for the outputs, moved into `out_dir` when all are
    written; on any error they are dropped (and `out_dir` too if it was made here)."""
    made = next((p for p in [*reversed(out_dir.parents), out_dir] if not p.exists()), None)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".compare-", dir=out_dir))
    try:
        yield scratch
        for name in sorted(p.name for p in scratch.iterdir()):
            if (out_dir / name).is_dir():
                raise IsADirectoryError(21, "a folder is in the way of a file", out_dir / name)
        for name in sorted(p.name for p in scratch.iterdir()):
            os.replace(scratch / name, out_dir / name)
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def compare(sweep_dir: Path, out_dir: Path, wandb: bool = True) -> list[dict[str, Any]]:
    """Write table.md, table.csv, seeds.csv and the plots (and the W&B summary runs when
    `wandb` and the jobs logged to W&B); return the table rows."""
    from rlhf.reporting.plots import (  # matplotlib only here
        plot_curves,
        plot_frontier,
        plot_heatmap,
        plot_overopt,
    )

    jobs = load_sweep(sweep_dir)
    readable = [job for job in jobs if job.status != UNREADABLE]
    rows = [final_row(job) for job in jobs]
    settings = seeds.settings_of(jobs)
    curves = overopt.load_curves(readable)  # jobs that evaluated a judge (the gold reward)
    with staged(out_dir) as scratch:
        table = markdown_table(rows, jobs) + seeds.seeds_markdown(settings)
        table += overopt.overopt_markdown(curves) if curves else ""
        (scratch / "table.md").write_text(table, encoding="utf-8")
        write_csv(rows, COLUMNS, scratch / "table.csv")
        write_csv(seeds.seeds_rows(settings), seeds.CSV_COLUMNS, scratch / "seeds.csv")
        per_update = {
            f"{job.num}: {job.label}": {
                name: ([r["step"] for r in job.history], [r.get(k, math.nan) for r in job.history])
                for name, k in (("score", SCORE), ("KL", KL))
            }
            for job in readable
            if job.history
        }
        plot_curves(per_update, scratch / "curves.png")
        scored = [row for row in rows if row["score"] is not None and row["kl"] is not None]
        points = {str(row["job"]): (row["kl"], row["score"]) for row in scored}
        plot_frontier(points, pareto_front(list(points.values())), scratch / "frontier.png")
        cells = [
            (job.kl_coef, job.cliprange, row["score"])
            for job, row in zip(jobs, rows, strict=True)
            if job.kl_coef is not None and job.cliprange is not None
        ]
        plot_heatmap(*heat_grid(cells), scratch / "heatmap.png")
        if curves:
            plot_overopt(curves, overopt.fit_of(curves), scratch / "overopt.png")
    logger = summary_run.sweep_logger(readable)
    if wandb and logger is not None:
        for problem in summary_run.write_summary_runs(sweep_dir, settings, logger):
            print(f"warning: the W&B summary run was not written: {problem}", file=sys.stderr)
    return rows
