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
