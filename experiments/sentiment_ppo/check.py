"""An independent check of sentiment_ppo's reviews: positive by a second measure, and still text?

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/sentiment_ppo/check.py outputs/<run>/ppo

For the first and the last update of a samples table (`tables/ppo_eval_samples.jsonl`: greedy
continuations of the held-out openings at every `ppo.eval_every`; `--table ppo_samples` for the
sampled ones) it prints, per continuation and as means: the training reward (`score`: VADER
with reward=sentiment_lexicon), the AFINN judge (a second lexicon, `eval.judge`), fluency — the
mean negative log-likelihood per character under Gemma 3 270M, a model the run never used
(rlhf/reporting/fluency.py; two hand-written review sentences are printed as a yardstick) —,
the share of distinct words, which falls when a policy repeats rated words, and the commonest
two-word opening of the replies with its share, which rises when every reply becomes one formula.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rlhf.reporting.fluency import (  # noqa: E402
    first_and_last_samples,
    fluency_model,
    nll_per_character,
)
from rlhf.rewards.sentiment_lexicon import afinn_sentiment  # noqa: E402

YARDSTICK = [
    ("This movie was", " a pleasant surprise: the story is simple, but the actors make it work."),
    ("The acting in this picture", " is uneven, and the ending drags on far too long."),
]


def commonest_opening(texts: list[str], words: int = 2) -> tuple[str, float]:
    """The commonest first `words` words of the replies and the share of replies opening so."""
    openings = collections.Counter(" ".join(t.split()[:words]) for t in texts)
    opening, count = openings.most_common(1)[0]
    return opening, count / len(texts)


def distinct_word_share(text: str) -> float:
    words = text.lower().split()
    return len(set(words)) / len(words) if words else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ppo_dir", type=Path, help="a sentiment_ppo run's ppo/ folder")
    parser.add_argument("--table", default="ppo_eval_samples", help="tables/<name>.jsonl")
    args = parser.parse_args()
    samples = first_and_last_samples(args.ppo_dir, args.table)
    model, tokenizer = fluency_model()
    yardstick = [nll_per_character(model, tokenizer, *pair) for pair in YARDSTICK]
    print("yardstick (hand-written), NLL per character:", [round(x, 2) for x in yardstick])
    for update, replies in samples.items():
        prompts = [r["prompt"] for r in replies]
        texts = [r["response"] for r in replies]
        judge = afinn_sentiment(prompts, texts)
        fluency = [
            nll_per_character(model, tokenizer, p, t) for p, t in zip(prompts, texts, strict=True)
        ]
        distinct = [distinct_word_share(t) for t in texts]
        opening, opening_share = commonest_opening(texts)
        print(
            f"update {update}: {len(replies)} replies, reward (VADER) "
            f"{statistics.mean(r['score'] for r in replies):.3f}, judge (AFINN) "
            f"{statistics.mean(judge):.2f}, positive by the judge "
            f"{sum(j > 0 for j in judge) / len(judge):.0%}, NLL/char {statistics.mean(fluency):.2f}, "
            f"distinct words {statistics.mean(distinct):.2f}, commonest opening "
            f"{opening!r} in {opening_share:.0%}"
        )
        for row, j, f in zip(replies, judge, fluency, strict=True):
            reply = row["response"].replace("\n", " ")
            print(f"  {f:5.2f}  {row['score']:+.2f} {j:+3.0f}  {row['prompt']} | {reply}")


if __name__ == "__main__":
    main()
