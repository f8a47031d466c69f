"""A reward and a judge made to disagree, for the hacking guard's end-to-end test: the reward
scores every answer above its threshold (0), the judge none."""

from __future__ import annotations


def answer_length(prompts: list[str], completions: list[str]) -> list[float]:
    """1 + a hundredth per character: always above 0, and longer answers score higher."""
    return [1.0 + len(text) / 100 for text in completions]


def against_length(prompts: list[str], completions: list[str]) -> list[float]:
    """The negated `answer_length`: never above 0."""
    return [-score for score in answer_length(prompts, completions)]
