"""Collapse onto a phrase: how much of a set of answers one phrase takes.

A policy can keep every answer distinct (the topic changes) while saying the same thing in each
("别问我，拉萨，别问我。", "别问我，昆曲，别问我。"). The share of distinct answers misses that; the
share of answers that contain the most frequent phrase does not.

A phrase is a run of `chars` consecutive characters inside one clause for text without spaces
(Chinese, Japanese: clauses split at punctuation and whitespace), or a whole clause shorter than
that but of at least two characters ("别问我" of "别问我，拉萨，别问我。" has no 4-character run);
for text written with spaces, `words` consecutive words. Each answer counts a phrase once, however
often it repeats it. On the insult data (experiments/insult_ppo/data) the most frequent phrase of
the rude answers is in 4-8 % of them, of the polite ones in 7-11 %.
"""

from __future__ import annotations

import collections
import re
import unicodedata
from dataclasses import dataclass

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


@dataclass(frozen=True)
class TopPhrase:
    phrase: str  # the most frequent phrase ("" when no answer has one)
    share: float  # share of all answers that contain it, in [0, 1]


def _clauses(text: str) -> list[str]:
    """Pieces of `text` between punctuation, symbols and whitespace."""
    pieces, current = [], []
    for ch in text:
        if ch.isspace() or unicodedata.category(ch)[0] in "PSZ":
            pieces.append("".join(current))
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current))
    return [p for p in pieces if p]


def phrases_of(text: str, chars: int = 4, words: int = 2) -> set[str]:
    """The distinct phrases of one answer: runs of `chars` characters inside a clause (a shorter
    clause of two or more characters whole) when the text has CJK characters, else runs of
    `words` lower-cased words (punctuation dropped)."""
    if _CJK.search(text):
        found = set()
        for clause in _clauses(text):
            if len(clause) >= chars:
                found.update(clause[i : i + chars] for i in range(len(clause) - chars + 1))
            elif len(clause) >= 2:
                found.add(clause)
        return found
    tokens = _clauses(text.lower())
    return {" ".join(tokens[i : i + words]) for i in range(len(tokens) - words + 1)}


def top_phrase(texts: list[str], chars: int = 4, words: int = 2) -> TopPhrase:
    """The phrase found in most answers and the share of answers that contain it; ties go to the
    phrase first in sorted order (deterministic). An empty list gives ("", 0.0)."""
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(phrases_of(text, chars, words))
    if not counts:
        return TopPhrase("", 0.0)
    phrase, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
    return TopPhrase(phrase, count / len(texts))


def distinct_share(texts: list[str]) -> float:
    """Distinct answers / answers (exact text, surrounding whitespace ignored); 0 when empty."""
    if not texts:
        return 0.0
    return len({t.strip() for t in texts}) / len(texts)
