"""English sentiment scores from two independent hand-built lexicons, for when no sentiment
classifier can be downloaded (the classic TRL example's lvwerra/distilbert-imdb is on the hub).

- `vader_sentiment`: VADER's compound score in [−1, 1] (Hutto & Gilbert 2014, package
  `vaderSentiment`: ~7,500 crowd-rated words and emoticons plus rules for negation, degree
  adverbs, "but", capitals and "!"): the reward of `reward=sentiment_lexicon`.
- `afinn_sentiment`: the AFINN-165 valence (Nielsen 2011, package `afinn`: ~3,400 words rated
  −5..+5 by one author) summed over the text, with no rules: `eval/judge=sentiment_afinn`, a
  second measure a policy trained on VADER did not see.

Both are lexicons: they count words, not meaning, so a policy can win them with a list of
positive words. That is what the fluency check of experiments/sentiment_ppo looks for.
Each function takes (prompts, completions) and, as the TRL example does, scores the whole
review: prompt + completion (`include_prompt=False`: the completion alone).
"""

from __future__ import annotations

import functools


@functools.cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@functools.cache
def _afinn():
    from afinn import Afinn

    return Afinn(language="en")


def _texts(prompts: list[str], completions: list[str], include_prompt: bool) -> list[str]:
    if not include_prompt:
        return list(completions)
    return [prompt + completion for prompt, completion in zip(prompts, completions, strict=True)]


def vader_sentiment(
    prompts: list[str], completions: list[str], include_prompt: bool = True
) -> list[float]:
    """VADER's compound sentiment of each text: −1 most negative, 0 neutral, +1 most positive."""
    analyzer = _vader()
    return [
        analyzer.polarity_scores(text)["compound"]
        for text in _texts(prompts, completions, include_prompt)
    ]


def afinn_sentiment(
    prompts: list[str], completions: list[str], include_prompt: bool = True
) -> list[float]:
    """The sum of AFINN-165 word valences in each text (> 0: positive, 0: no rated word)."""
    afinn = _afinn()
    return [float(afinn.score(text)) for text in _texts(prompts, completions, include_prompt)]
