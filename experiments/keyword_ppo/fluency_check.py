"""An independent check of keyword_ppo's replies: are they fluent text with the words, or salad?

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/keyword_ppo/fluency_check.py outputs/<run>/ppo

For the first and the last update of a samples table (`tables/ppo_eval_samples.jsonl`: greedy
replies to the five prompts at every `ppo.eval_every`; `--table ppo_samples` for the sampled
ones), it prints each reply with its fluency — the mean negative log-likelihood per character
of the reply after the prompt under Gemma 3 270M, a model that never saw the run and writes
Chinese (lower is more fluent; two plain sentences written by hand are printed as a yardstick)
— and the keyword reward's own parts: keywords found and the share of Chinese characters.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rlhf.reporting.fluency import (  # noqa: E402
    first_and_last_samples,
    fluency_model,
    nll_per_character,
)
from rlhf.rewards.text_rules import keyword_reward  # noqa: E402

# the keywords the run was rewarded for, read from the reward itself so the two cannot drift
KEYWORDS = inspect.signature(keyword_reward).parameters["keywords"].default
YARDSTICK = [
    ("今天天气很好，", "我们一起去公园散步吧，阳光暖暖的，心情也变好了。"),
    ("学习新知识让我", "感到很充实，每天都有新的收获。"),
]


def chinese_share(text: str) -> float:
    return sum("\u4e00" <= c <= "\u9fff" for c in text) / max(1, len(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ppo_dir", type=Path, help="a keyword_ppo run's ppo/ folder")
    parser.add_argument("--table", default="ppo_eval_samples", help="tables/<name>.jsonl")
    args = parser.parse_args()
    samples = first_and_last_samples(args.ppo_dir, args.table)
    model, tokenizer = fluency_model()
    yardstick = [nll_per_character(model, tokenizer, *pair) for pair in YARDSTICK]
    print(
        "yardstick (hand-written sentences), NLL per character:", [round(x, 2) for x in yardstick]
    )
    for update, replies in samples.items():
        fluency = [nll_per_character(model, tokenizer, r["prompt"], r["response"]) for r in replies]
        keywords = [sum(k in r["response"] for k in KEYWORDS) for r in replies]
        print(
            f"update {update}: {len(replies)} replies, mean score {sum(r['score'] for r in replies) / len(replies):.3f}, "
            f"NLL/char {sum(fluency) / len(fluency):.2f}, keywords a reply {sum(keywords) / len(keywords):.2f}, "
            f"Chinese {sum(chinese_share(r['response']) for r in replies) / len(replies):.2f}"
        )
        for row, value in zip(replies, fluency, strict=True):
            reply = row["response"].replace("\n", " ")
            print(f"  {value:5.2f}  {row['prompt']} | {reply} | score {row['score']:.2f}")


if __name__ == "__main__":
    main()
