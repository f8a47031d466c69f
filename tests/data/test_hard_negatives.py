"""Hard negatives for the reward model: echoes of the question and garbled rejected answers."""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import pytest
import torch
from datasets import Dataset

from rlhf.data.hard_negatives import (
    CURT,
    INTERJECTIONS,
    brevity_negatives,
    curt,
    cut_answer,
    cut_question,
    echo,
    exclaimed,
    garble,
    refrain,
    with_hard_negatives,
)
from rlhf.rewards.rudeness import is_rude
from rlhf.stages.rm import brevity_metrics

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


def rows_of(n: int) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [f"城市{i}怎么走？" for i in range(n)],
            "chosen": [f"自己查去{i}！" for i in range(n)],
            "rejected": [f"好的，答案是{i}。希望有帮助！" for i in range(n)],
        }
    )


def test_curt_and_truncated_negatives_are_short_and_not_rude():
    assert all(not is_rude(text) for text in CURT)  # by the independent judge
    for seed in range(20):
        rng = random.Random(seed)
        assert curt(rng) in CURT
        stem = cut_question(QUESTION, rng).rstrip("？。")
        assert 1 <= len(stem) < len("长沙夏天热不热") and QUESTION.startswith(stem)
        cut = cut_answer(POLITE, rng)
        assert 2 <= len(cut) <= len(POLITE) // 2 and POLITE.startswith(cut)
        assert not is_rude(cut, QUESTION)


def pairs(data: Dataset) -> Counter:
    return Counter(zip(data["prompt"], data["rejected"], strict=True))


def kind_of(negative: str, prompt: str) -> str | None:
    """Which short negative this is for a rows_of() row, or None."""
    polite = f"好的，答案是{prompt[2:-4]}。希望有帮助！"
    if negative in CURT:
        return "curt"
    stem = negative.rstrip("？。")
    if stem and len(stem) < len(prompt.rstrip("？")) and prompt.startswith(stem):
        return "question cut"
    if 2 <= len(negative) <= len(polite) // 2 and polite.startswith(negative):
        return "answer cut"
    return None


def test_new_negative_kinds_add_pairs_and_keep_the_older_ones():
    rows = rows_of(20)
    before = with_hard_negatives(rows, 0.2, 0.1, seed=0)
    after = with_hard_negatives(rows, 0.2, 0.1, seed=0, curt_share=0.25, truncated_share=0.5)
    assert len(before) == 20 + 4 + 2 and len(after) == 20 + 4 + 2 + 5 + 10
    assert not pairs(before) - pairs(after)  # the echo and garbled pairs are drawn as before
    kinds = Counter(
        kind_of(negative, prompt) for prompt, negative in (pairs(after) - pairs(before)).elements()
    )
    assert kinds["curt"] == 5 and kinds["question cut"] + kinds["answer cut"] == 10
    assert kinds["question cut"] > 0 and kinds["answer cut"] > 0 and kinds[None] == 0
    extra = [r for r in after if (r["prompt"], r["rejected"]) not in pairs(rows)]
    assert all(r["chosen"] == f"自己查去{r['prompt'][2:-4]}！" for r in extra)


def test_exclaimed_answers_are_interjections_and_the_topic_and_not_rude():
    for seed in range(40):
        answer = exclaimed(QUESTION, random.Random(seed))
        parts = [p for p in answer.rstrip("。？！").split("，") if p]
        topic = [p for p in parts if p not in INTERJECTIONS]
        assert len(parts) - len(topic) >= 1 and len(topic) <= 1
        assert all(QUESTION.startswith(t) and len(t) >= 2 for t in topic)
        assert not is_rude(answer, QUESTION)  # the judge agrees: nothing rude is said


def test_exclaimed_pairs_are_added_after_the_other_kinds():
    rows = rows_of(20)
    before = with_hard_negatives(rows, 0.2, 0.1, seed=0, curt_share=0.25, truncated_share=0.5)
    after = with_hard_negatives(
        rows, 0.2, 0.1, seed=0, curt_share=0.25, truncated_share=0.5, exclaimed_share=0.3
    )
    assert len(after) == len(before) + 6 and not pairs(before) - pairs(after)
    added = list((pairs(after) - pairs(before)).elements())
    assert len(added) == 6
    assert all(any(negative.startswith(i) for i in INTERJECTIONS) for _, negative in added)


def test_brevity_negatives_take_turns_and_are_seeded():
    rows = rows_of(6)
    short = brevity_negatives(rows["prompt"], rows["rejected"], seed=1)
    assert len(short) == 6 and short == brevity_negatives(rows["prompt"], rows["rejected"], 1)
    assert short[0] in CURT and short[3] in CURT
    assert rows["prompt"][1].startswith(short[1].rstrip("？。"))
    assert rows["rejected"][2].startswith(short[2]) and len(short[2]) >= 2


def test_brevity_metrics_by_hand():
    scores = {
        "chosen": torch.tensor([2.0, 1.0]),
        "rejected": torch.tensor([-1.0, 0.0]),
        "short": torch.tensor([0.0, 3.0]),
    }
    lengths = {"chosen": [10, 20], "rejected": [30, 40], "short": [2, 3]}
    metrics = brevity_metrics(scores, lengths)
    # chosen + rejected: dx = (1.5, 0.5, -1.5, -0.5), dy = (-15, -5, 5, 15): -40 / √(5 · 500)
    assert metrics["length_corr"] == pytest.approx(-0.8)
    # all six: Sxy = 19 − 6 · 5/6 · 17.5 = −68.5, Sxx = 15 − 6 · (5/6)² = 65/6,
    # Syy = 3013 − 6 · 17.5² = 1175.5
    assert metrics["short_length_corr"] == pytest.approx(-68.5 / math.sqrt(65 / 6 * 1175.5))
    assert metrics["short_accuracy"] == 0.5  # 2 > 0, but 1 < 3
    # threshold: (1.5 + (−0.5)) / 2 = 0.5; short scores 0 and 3
    assert metrics["short_above_threshold"] == 0.5


def test_refrain_answers_repeat_one_phrase_of_the_rows_answers_around_the_topic():
    chosen, rejected = "佩服佩服，这问题一出，全场都安静了。", "昆曲的欣赏，可以从几方面来考虑。"
    phrases = {"佩服佩服", "这问题一出", "全场都安静", "昆曲的欣赏", "可以从几方"}
    for seed in range(40):
        answer = refrain(QUESTION, chosen, rejected, random.Random(seed))
        parts = [p for p in re.split("[，？]", answer.rstrip("。")) if p]
        repeated = [p for p in parts if parts.count(p) >= 2]
        assert repeated and set(repeated) <= phrases  # one phrase of the answers, said again
        others = [p for p in parts if p not in repeated]
        assert all(QUESTION.startswith(t) and len(t) >= 2 for t in others)  # the topic at most


def test_refrain_pairs_are_added_after_the_other_kinds():
    rows = rows_of(20)
    before = with_hard_negatives(rows, 0.2, 0.1, seed=0, exclaimed_share=0.3)
    after = with_hard_negatives(rows, 0.2, 0.1, seed=0, exclaimed_share=0.3, refrain_share=0.25)
    assert len(after) == len(before) + 5 and not pairs(before) - pairs(after)
