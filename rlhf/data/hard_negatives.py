"""Hard negatives for the reward model: answers a weak policy writes that the data never shows.

A reward model trained only on (preferred, dispreferred) answers from the data learns the
easiest difference between them; for the insult data that is "fluent and polite = low". A
135M-parameter policy writes neither: it echoes the question or garbles a polite answer, and
such text scores between the two, above the decision threshold, so PPO learns to echo. Extra
pairs with the preferred answer against (a) the question echoed back and (b) the dispreferred
answer garbled teach the RM to rank those below the preferred behaviour too.
"""

from __future__ import annotations

import random
import re

from datasets import Dataset, concatenate_datasets

CLAUSE_END = re.compile(r"(?<=[，。！？；,.!?;])")


def echo(question: str, rng: random.Random) -> str:
    """The question repeated as the answer: whole, or its first part."""
    text = question.rstrip("？?。.！! ")
    if len(text) > 4 and rng.random() < 0.5:
        text = text[: rng.randint(2, len(text) - 1)]
    return text + rng.choice(["？", "。", "", "？" + question])


def garble(answer: str, rng: random.Random) -> str:
    """The answer's clauses shuffled, one repeated, and the result cut short."""
    clauses = [c for c in CLAUSE_END.split(answer) if c.strip()]
    rng.shuffle(clauses)
    clauses.insert(rng.randrange(len(clauses) + 1), rng.choice(clauses))
    text = "".join(clauses)
    return text[: max(4, round(len(text) * rng.uniform(0.4, 0.9)))]


def with_hard_negatives(
    rows: Dataset, echo_share: float, garbled_share: float, seed: int
) -> Dataset:
    """`rows` (prompt, chosen, rejected) plus extra pairs: for a seeded share of the rows the
    chosen answer against an echo of the prompt, for another share against the garbled
    rejected answer."""
    rng = random.Random(seed)
    extra: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    for share, make in ((echo_share, "echo"), (garbled_share, "garble")):
        count = round(share * len(rows))
        for index in rng.sample(range(len(rows)), count):
            row = rows[index]
            negative = echo(row["prompt"], rng) if make == "echo" else garble(row["rejected"], rng)
            extra["prompt"].append(row["prompt"])
            extra["chosen"].append(row["chosen"])
            extra["rejected"].append(negative)
    if not extra["prompt"]:
        return rows
    added = Dataset.from_dict(extra).cast(rows.select_columns(list(extra)).features)
    return concatenate_datasets([rows.select_columns(list(extra)), added]).shuffle(seed=seed)
