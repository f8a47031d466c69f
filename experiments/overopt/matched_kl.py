"""Gold reward of two over-optimisation sweeps at matched KL: the single proxy RM against the
ensemble (experiments/overopt/REPORT.md).

    PYTHONPATH=. python experiments/overopt/matched_kl.py <proxy sweep> <ensemble sweep>

Prints each sweep's Gao fit, then the gold gain at the same √KL values: from each fit, and as
the mean of the evaluations that fall in each √KL bin (every job, every evaluation after
update 0), within the range both sweeps reached.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rlhf.sweeps import compare, overopt


def binned(curves: list[overopt.JobCurve], edges: list[float]) -> list[tuple[float, int]]:
    """Mean gold gain and count of the evaluations in each [edges[i], edges[i+1]) bin."""
    points = [(d, g) for c in curves for d, g in zip(c.d[1:], c.gold[1:], strict=True)]
    rows = []
    for low, high in zip(edges, edges[1:], strict=False):
        inside = [g for d, g in points if low <= d < high]
        rows.append((sum(inside) / len(inside) if inside else float("nan"), len(inside)))
    return rows


def main(proxy_dir: str, ensemble_dir: str, bins: int = 5) -> None:
    sweeps = {"proxy": Path(proxy_dir), "ensemble": Path(ensemble_dir)}
    curves = {name: overopt.load_curves(compare.load_sweep(path)) for name, path in sweeps.items()}
    fits = {name: overopt.fit_of(found) for name, found in curves.items()}
    for name, fit in fits.items():
        print(f"{name}: " + overopt.fit_lines(fit)[0])
    top = min(max(d for c in found for d in c.d) for found in curves.values())
    edges = [top * i / bins for i in range(bins + 1)]
    edges[-1] += 1e-9
    table = {name: binned(found, edges) for name, found in curves.items()}
    print("\n| √KL bin | proxy RM: fit | proxy RM: mean (n) | ensemble: fit | ensemble: mean (n) |")
    print("|---|---|---|---|---|")
    for i in range(bins):
        middle = (edges[i] + edges[i + 1]) / 2
        cells = []
        for name in ("proxy", "ensemble"):
            fitted = fits[name](middle) if fits[name] is not None else float("nan")
            mean, count = table[name][i]
            cells += [f"{fitted:.3f}", f"{mean:.3f} ({count})"]
        print(f"| [{edges[i]:.2f}, {edges[i + 1]:.2f}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
