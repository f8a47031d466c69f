"""Label noise for the reward model: a seeded share of the preference pairs with chosen and
rejected swapped (`rm.label_noise`).

A deliberately weaker proxy RM for an over-optimisation study (experiments/overopt/): trained on
few pairs, some of them mislabelled, from the same data a gold RM is trained on whole. Exactly
round(share · N) pairs are swapped, drawn without replacement by `random.Random(seed)`.
"""

from __future__ import annotations

import random

from datasets import Dataset


def flipped_indices(num_rows: int, share: float, seed: int) -> list[int]:
    """The sorted indices of the round(share · num_rows) pairs to swap (seeded)."""
    count = round(share * num_rows)
    return sorted(random.Random(seed).sample(range(num_rows), count))


def with_label_noise(rows: Dataset, share: float, seed: int) -> tuple[Dataset, int]:
    """`rows` (prompt, chosen, rejected, ...) with the pairs of `flipped_indices` swapped, and
    how many were swapped; `rows` itself when the share rounds to no pair."""
    flips = set(flipped_indices(len(rows), share, seed))
    if not flips:
        return rows, 0

    def swap(row: dict, index: int) -> dict:
        if index in flips:
            return {"chosen": row["rejected"], "rejected": row["chosen"]}
        return {"chosen": row["chosen"], "rejected": row["rejected"]}

    return rows.map(swap, with_indices=True), len(flips)
