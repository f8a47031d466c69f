"""Talk to a trained model: `python -m rlhf.chat <model folder>`.

A policy folder (sft/model, ppo/model) answers each question typed at the prompt; a reward-model
folder (rm/model) asks for a question and an answer and prints the score. `--prompt` (and
`--answer` for a reward model) gives one result without the interactive loop.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from rlhf.config import ModelConfig
from rlhf.data.chat_format import conversations
from rlhf.errors import RlhfError
from rlhf.models.loading import load_model, load_tokenizer, resolve_model_dir
from rlhf.models.scoring import score_conversations
from rlhf.runtime.generation import SamplingSettings, sample_answers


def is_reward_model(folder: Path) -> bool:
    architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


class Chat:
    def __init__(self, folder: str, system: str | None, max_new_tokens: int, sample: bool):
        settings = ModelConfig(name_or_path=folder)
        path = resolve_model_dir(settings, cache_dir=".")
        self.reward = is_reward_model(path)
        self.tokenizer = load_tokenizer(path, settings)
        kind = "reward" if self.reward else "causal"
        self.model = load_model(path, settings, self.tokenizer, kind=kind).eval()
        self.system = system
        self.settings = SamplingSettings(max_new_tokens, do_sample=sample, top_k=0)

    @torch.no_grad()
    def reply(self, question: str) -> str:
        texts = sample_answers(self.model, self.tokenizer, [question], self.system, self.settings)[
            -1
        ]
        return texts[0]

    def score(self, question: str, answer: str) -> float:
        rendered = conversations([question], [answer], self.system)
        return score_conversations(self.model, self.tokenizer, rendered).item()


def interactive(chat: Chat) -> None:
    print("Ctrl-D or an empty line ends the chat.")
    while True:
        try:
            question = input("问题 / question: ").strip()
            if not question:
                return
            if chat.reward:
                answer = input("回答 / answer: ").strip()
                print(f"score: {chat.score(question, answer):.4f}")
            else:
                print(f"--- {chat.reply(question)}")
        except EOFError:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf.chat", description=__doc__.splitlines()[0]
    )
    parser.add_argument("model", help="a model folder: sft/model, rm/model or ppo/model of a run")
    parser.add_argument("--prompt", help="one question; print the answer (or score) and exit")
    parser.add_argument("--answer", help="with a reward model and --prompt: the answer to score")
    parser.add_argument("--system", help="system message before every question")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    args = parser.parse_args(argv)
    try:
        chat = Chat(args.model, args.system, args.max_new_tokens, args.sample)
        if args.prompt is None:
            interactive(chat)
        elif chat.reward:
            if args.answer is None:
                raise RlhfError("--answer: a reward model scores an answer; give one")
            print(f"{chat.score(args.prompt, args.answer):.4f}")
        else:
            print(chat.reply(args.prompt))
    except RlhfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
