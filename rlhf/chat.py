"""Talk to a trained model: `python -m rlhf.chat <model folder>`.

A policy folder (sft/model, ppo/model) answers each question typed at the prompt; a reward-model
folder (rm/model) asks for a question and an answer and prints the score. `--prompt` (and
`--answer` for a reward model) gives one result without the interactive loop. `--questions FILE
--out answers.jsonl` answers (or scores) a whole file in batches and writes one JSON line per
question. With input piped in (not a terminal) the loop prints no prompts: one answer (or score)
per line of output, so `printf '吃了没？\\n' | python -m rlhf.chat <folder>` prints just the answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from rlhf.config import ModelConfig
from rlhf.data.chat_format import conversations
from rlhf.errors import DataError, RlhfError
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
    def replies(self, questions: list[str]) -> list[str]:
        return sample_answers(self.model, self.tokenizer, questions, self.system, self.settings)[-1]

    def reply(self, question: str) -> str:
        return self.replies([question])[0]

    @torch.no_grad()
    def scores(self, questions: list[str], answers: list[str]) -> list[float]:
        rendered = conversations(questions, answers, self.system)
        return score_conversations(self.model, self.tokenizer, rendered).tolist()

    def score(self, question: str, answer: str) -> float:
        return self.scores([question], [answer])[0]


def interactive(chat: Chat) -> None:
    """Questions (and answers to score) from stdin until EOF or, at a terminal, an empty line.
    At a terminal it prompts; piped, it prints only results, one line each."""
    terminal = sys.stdin.isatty()

    def read(label: str) -> str:
        return input(label if terminal else "").strip()

    if terminal:
        print("Ctrl-D or an empty line ends the chat.")
    while True:
        try:
            question = read("问题 / question: ")
            if not question:
                if terminal:
                    return
                continue  # a blank line in piped input
            if chat.reward:
                score = chat.score(question, read("回答 / answer: "))
                print(f"score: {score:.4f}" if terminal else f"{score:.4f}")
            else:
                reply = chat.reply(question)
                print(f"--- {reply}" if terminal else " ".join(reply.splitlines()))
        except EOFError:
            return


def read_questions(path: Path, column: str, answer_column: str | None) -> list[dict[str, str]]:
    """{question[, answer]} rows: a .jsonl file's `column` (and `answer_column`), or one
    question per line of any other file (blank lines skipped)."""
    if not path.is_file():
        raise DataError(f"--questions: {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            rows.append({"question": line.strip()})
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"--questions: {path} line {number} is not JSON ({exc.msg})") from exc
        row = {}
        for key, name in (("question", column), ("answer", answer_column)):
            if name is None:
                continue
            if not isinstance(record, dict) or not isinstance(record.get(name), str):
                raise DataError(f"--questions: {path} line {number} has no text column {name!r}")
            row[key] = record[name]
        rows.append(row)
    if not rows:
        raise DataError(f"--questions: {path} holds no question")
    return rows


def answer_file(chat: Chat, rows: list[dict[str, str]], out: Path, batch_size: int) -> None:
    """Answer (policy) or score (reward model) every row in batches; write `out` as JSON lines,
    renamed into place when whole."""
    results = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        questions = [row["question"] for row in batch]
        if chat.reward:
            scores = chat.scores(questions, [row["answer"] for row in batch])
            results += [{**row, "score": score} for row, score in zip(batch, scores, strict=True)]
        else:
            answers = chat.replies(questions)
            results += [
                {"question": q, "answer": a} for q, a in zip(questions, answers, strict=True)
            ]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results), encoding="utf-8"
    )
    os.replace(partial, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf.chat", description=__doc__.splitlines()[0]
    )
    parser.add_argument("model", help="a model folder: sft/model, rm/model or ppo/model of a run")
    parser.add_argument("--prompt", help="one question; print the answer (or score) and exit")
    parser.add_argument("--answer", help="with a reward model and --prompt: the answer to score")
    parser.add_argument("--questions", type=Path, help="a file of questions: one a line, or .jsonl")
    parser.add_argument("--out", type=Path, help="with --questions: the JSON lines written")
    parser.add_argument("--column", default="question", help=".jsonl column of the question")
    parser.add_argument("--answer-column", default="answer", help=".jsonl column a RM scores")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per batch")
    parser.add_argument("--system", help="system message before every question")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    args = parser.parse_args(argv)
    try:
        if args.questions is not None and args.out is None:
            raise RlhfError("--out: --questions writes its answers to a file; name it")
        if args.questions is not None and args.prompt is not None:
            raise RlhfError("--prompt: give either --prompt or --questions, not both")
        if args.batch_size < 1:
            raise RlhfError(f"--batch-size: must be >= 1, got {args.batch_size}")
        chat = Chat(args.model, args.system, args.max_new_tokens, args.sample)
        if args.questions is not None:
            if chat.reward and args.questions.suffix != ".jsonl":
                raise RlhfError("--questions: a reward model scores answers: give a .jsonl file")
            answers = args.answer_column if chat.reward else None
            rows = read_questions(args.questions, args.column, answers)
            answer_file(chat, rows, args.out, args.batch_size)
        elif args.prompt is None:
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
