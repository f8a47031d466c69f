"""Reward functions for tests: ones that misbehave (raise, return the wrong count or NaN) and
one whose groups are uniform for half the prompts."""

from __future__ import annotations


def raises(prompts: list[str], completions: list[str]) -> list[float]:
    raise ConnectionError("reward service unreachable")


def one_score(prompts: list[str], completions: list[str]) -> list[float]:
    return [1.0]  # one score for a whole batch


def nan_scores(prompts: list[str], completions: list[str]) -> list[float]:
    return [float("nan")] * len(completions)


def chars_on_even_prompts(
    prompts: list[str], completions: list[str], chars: str = "你"
) -> list[float]:
    """Share of `chars` in the answer to a prompt of even length, 0 to one of odd length: the
    groups of odd prompts are uniform (DAPO drops them), the others are not (group tests)."""
    wanted = set(chars)
    return [
        sum(c in wanted for c in text) / max(len(text), 1) if len(prompt) % 2 == 0 else 0.0
        for prompt, text in zip(prompts, completions, strict=True)
    ]
