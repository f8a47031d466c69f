"""Broken reward functions for tests/test_bad_inputs.py, named by `reward.function._target_`."""

from __future__ import annotations


def raises(prompts: list[str], completions: list[str]) -> list[float]:
    raise ConnectionError("reward service unreachable")


def one_score(prompts: list[str], completions: list[str]) -> list[float]:
    return [1.0]  # one score for a whole batch


def nan_scores(prompts: list[str], completions: list[str]) -> list[float]:
    return [float("nan")] * len(completions)
