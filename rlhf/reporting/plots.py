"""PNG plots of logged metrics, read back from a stage's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

PPO_PLOTS = {
    "scores": ["ppo/objective/scores", "ppo/eval/score"],
    "kl": ["ppo/objective/kl", "ppo/objective/kl_k3"],
    "losses": ["ppo/loss/policy", "ppo/loss/value"],
    "entropy": ["ppo/policy/entropy"],
}


def read_series(metrics_file: Path, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if key in record:
            steps.append(record["step"])
            values.append(record[key])
    return steps, values


def plot_keys(metrics_file: Path, keys: list[str], out: Path, title: str) -> Path | None:
    """One PNG with a line per key present; None when no key was logged."""
    series = {key: read_series(metrics_file, key) for key in keys}
    series = {key: s for key, s in series.items() if s[0]}
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for key, (steps, values) in series.items():
        axes.plot(steps, values, marker="o" if len(steps) < 30 else None, label=key)
    axes.set_xlabel("PPO update")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def plot_ppo_run(stage_dir: Path) -> list[Path]:
    """scores.png, kl.png, losses.png, entropy.png in `<stage_dir>/plots/`."""
    metrics_file = stage_dir / "metrics.jsonl"
    written = [
        plot_keys(metrics_file, keys, stage_dir / "plots" / f"{name}.png", name)
        for name, keys in PPO_PLOTS.items()
    ]
    return [path for path in written if path is not None]


def _save(figure: plt.Figure, out: Path) -> Path:
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def plot_curves(curves: dict[str, dict[str, tuple[list, list]]], out: Path) -> Path:
    """One panel per metric (score, KL) against the PPO update, a line per run."""
    names = sorted({name for panels in curves.values() for name in panels}, reverse=True) or [
        "score"
    ]
    figure, axes = plt.subplots(len(names), 1, figsize=(7, 3 * len(names)), squeeze=False)
    for axis, name in zip(axes[:, 0], names, strict=True):
        for label, panels in curves.items():
            steps, values = panels.get(name, ([], []))
            axis.plot(steps, values, marker="o" if len(steps) < 30 else None, label=label)
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("PPO update")
    if curves:
        axes[0, 0].legend(fontsize=7)
    return _save(figure, out)


def plot_frontier(
    points: dict[str, tuple[float, float]], front: list[tuple[float, float]], out: Path
) -> Path:
    """Final score against final KL per run (labelled), the reward–KL frontier as a line."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, (kl, score) in points.items():
        axis.scatter(kl, score, color="tab:blue")
        axis.annotate(label, (kl, score), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if front:
        axis.plot(*zip(*front, strict=True), color="tab:red", marker="x", label="frontier")
        axis.legend()
    axis.set_xlabel("final KL (policy ‖ reference)")
    axis.set_ylabel("final mean score")
    axis.grid(alpha=0.3)
    return _save(figure, out)


def plot_heatmap(kls: list[float], clips: list[float], grid: list[list[float]], out: Path) -> Path:
    """Final score per (kl_coef, cliprange) cell, values written in; empty cells say so."""
    figure, axis = plt.subplots(
        figsize=(1.6 * max(len(clips), 2) + 2, 1.0 * max(len(kls), 2) + 1.5)
    )
    if grid:
        image = axis.imshow(grid, cmap="viridis", aspect="auto")
        figure.colorbar(image, ax=axis, label="final mean score")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                text = "no score" if value != value else f"{value:.3g}"  # NaN: failed or missing
                axis.text(j, i, text, ha="center", va="center", color="white", fontsize=9)
    axis.set_xticks(range(len(clips)), [f"{c:g}" for c in clips])
    axis.set_yticks(range(len(kls)), [f"{k:g}" for k in kls])
    axis.set_xlabel("ppo.cliprange")
    axis.set_ylabel("ppo.kl_coef")
    axis.set_title("final mean score")
    return _save(figure, out)


def plot_overopt(curves: list, fit, out: Path) -> Path:
    """Gold (eval.judge) and proxy (reward) gains against √KL, one colour per setting: each job's
    evaluations as a thin line, its latest one as a large point; the Gao fit over the gold
    points, its peak d* marked. `curves`: rlhf.sweeps.overopt.JobCurve; `fit`: GaoFit or None."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    settings = sorted({c.setting for c in curves})
    colours = {s: plt.cm.viridis(i / max(len(settings) - 1, 1)) for i, s in enumerate(settings)}
    for axis, series, title in (
        (axes[0], "gold", "gold: eval.judge"),
        (axes[1], "proxy", "proxy: reward"),
    ):
        for setting in settings:
            for index, curve in enumerate(c for c in curves if c.setting == setting):
                values = getattr(curve, series)
                axis.plot(curve.d, values, color=colours[setting], alpha=0.35, linewidth=1)
                axis.scatter(
                    curve.d[-1], values[-1], color=colours[setting], s=40,
                    label=setting if index == 0 else None,
                )  # fmt: skip
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set_xlabel("√KL(policy ‖ reference)")
        axis.set_ylabel(f"{series} gain over update 0")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    if fit is not None:
        top = max((d for c in curves for d in c.d), default=1.0) or 1.0
        grid = [top * (i + 1) / 200 for i in range(200)]
        label = f"Gao fit α={fit.alpha:.3g}, β={fit.beta:.3g}"
        axes[0].plot(grid, [fit(d) for d in grid], color="tab:red", label=label)
        if fit.peak is not None and fit.peak <= top:
            axes[0].axvline(fit.peak, color="tab:red", linestyle=":", label=f"d* = {fit.peak:.3g}")
    axes[0].legend(fontsize=7)
    return _save(figure, out)
