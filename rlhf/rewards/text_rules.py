"""Ready reward functions for `reward.kind: function` (each: prompts, completions → floats)."""

from __future__ import annotations


def char_fraction(prompts: list[str], completions: list[str], chars: str = "好") -> list[float]:
    """Share of a completion's characters that are in `chars` (0 for an empty completion)."""
    wanted = set(chars)
    return [sum(c in wanted for c in text) / len(text) if text else 0.0 for text in completions]


def keyword_reward(
    prompts: list[str],
    completions: list[str],
    keywords: tuple[str, ...] = ("好", "棒", "喜欢", "开心", "快乐", "有趣", "学习", "成长"),
    base: float = 0.1,
    length_bonus: float = 0.5,
    min_length: int = 10,
    max_length: int = 50,
    keyword_bonus: float = 0.3,
    repetition_penalty: float = 0.2,
    repetition_ratio: float = 1.5,
) -> list[float]:
    """The PPO primer notebook's reward: a base, a bonus for a 10–50 character reply, a bonus per
    keyword present, and a penalty when words repeat (more than `repetition_ratio` × distinct)."""
    scores = []
    for text in completions:
        score = base
        if min_length <= len(text) <= max_length:
            score += length_bonus
        score += keyword_bonus * sum(keyword in text for keyword in keywords)
        words = text.split()  # as in the notebook: whitespace words
        if len(words) > repetition_ratio * len(set(words)):
            score -= repetition_penalty
        scores.append(score)
    return scores
