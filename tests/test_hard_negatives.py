"""Hard negatives for the reward model: echoes of the question and garbled rejected answers."""

from __future__ import annotations

import random
from collections import Counter

from datasets import Dataset

from rlhf.data.hard_negatives import echo, garble, with_hard_negatives

QUESTION = "长沙夏天热不热？"
POLITE = "长沙夏天很热，七八月平均气温三十度以上。出门记得防晒，多喝水！"


def test_echo_repeats_the_question_or_its_start():
    for seed in range(20):
        answer = echo(QUESTION, random.Random(seed))
        stem = answer.rstrip("？。")
        assert QUESTION.startswith(stem[:2]) and len(stem) >= 2
        assert answer.startswith(QUESTION[: len(stem)]) or answer.startswith(stem)


def clause_uses(text: str, clauses: list[str]) -> Counter:
    """How often each clause makes up `text` (the last one may be cut short)."""
    uses: Counter = Counter()
    while text:
        clause = next(c for c in clauses if text.startswith(c) or c.startswith(text))
        uses[clause] += 1
        text = text[len(clause) :]
    return uses


def test_garble_reuses_the_clauses_shuffled_repeated_and_cut():
    clauses = ["长沙夏天很热，", "七八月平均气温三十度以上。", "出门记得防晒，", "多喝水！"]
    for seed in range(20):
        text = garble(POLITE, random.Random(seed))
        assert 4 <= len(text) < len(POLITE) + max(map(len, clauses)) and text != POLITE
        uses = clause_uses(text, clauses)  # raises StopIteration on a foreign piece
        assert max(uses.values()) <= 2 and sum(n == 2 for n in uses.values()) <= 1
    assert garble(POLITE, random.Random(3)) == garble(POLITE, random.Random(3))


def test_with_hard_negatives_adds_seeded_pairs_of_both_kinds():
    rows = Dataset.from_dict(
        {
            "prompt": [f"问题{i}？" for i in range(10)],
            "chosen": [f"自己查去{i}！" for i in range(10)],
            "rejected": [f"好的，答案是{i}。希望有帮助！" for i in range(10)],
        }
    )
    assert with_hard_negatives(rows, 0.0, 0.0, seed=0) is rows
    augmented = with_hard_negatives(rows, 0.2, 0.3, seed=0)
    assert len(augmented) == 10 + 2 + 3
    originals = set(zip(rows["prompt"], rows["rejected"], strict=True))
    extra = [r for r in augmented if (r["prompt"], r["rejected"]) not in originals]
    assert len(extra) == 5
    for row in extra:  # the chosen answer of the same prompt, against a negative
        number = row["prompt"][2:-1]
        assert row["chosen"] == f"自己查去{number}！"
    echoes = [r for r in extra if r["rejected"].startswith("问")]
    assert len(echoes) == 2
    assert augmented["prompt"] == with_hard_negatives(rows, 0.2, 0.3, seed=0)["prompt"]
