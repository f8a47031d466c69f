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
from rlhf.data.loading import utf8_text
from rlhf.errors import DataError, ModelLoadError, RlhfError
from rlhf.models.loading import load_model, load_tokenizer, resolve_model_dir
from rlhf.models.scoring import score_conversations
from rlhf.paths import folder_path_problem
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


def read_text(path: Path, option: str) -> str:
    """A text file given on the command line, as UTF-8; any other encoding (GBK is common for
    Chinese text) is one line naming the byte and the line, not a UnicodeDecodeError."""
    if path.is_dir():
        raise DataError(f"{option}: {path} is a folder, not a file")
    if not path.is_file():
        problem = folder_path_problem(path.parent)
        raise DataError(f"{option}: {path} does not exist" + (f" ({problem})" if problem else ""))
    return utf8_text(path, option)


def check_output_file(path: Path, option: str) -> None:
    """Before any model loads: the file can be written where it is named."""
    if path.is_dir():
        raise DataError(f"{option}: {path} is a folder; name a file to write")
    problem = folder_path_problem(path.parent)
    if problem is not None:
        raise DataError(f"{option}: {problem}")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{option}: {existing} is not writable: choose a folder you can write to")


def read_questions(path: Path, column: str, answer_column: str | None) -> list[dict[str, str]]:
    """{question[, answer]} rows: a .jsonl file's `column` (and `answer_column`), or one
    question per line of any other file (blank lines skipped)."""
    lines = read_text(path, "--questions").splitlines()
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
    parser.add_argument("--column", help=".jsonl column of the question (default: question)")
    parser.add_argument("--answer-column", help=".jsonl column a RM scores (default: answer)")
    parser.add_argument("--batch-size", type=int, help="with --questions: questions per batch (8)")
    parser.add_argument("--system", help="system message before every question")
    parser.add_argument("--max-new-tokens", type=int, help="a policy's answer length (64)")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    args = parser.parse_args(argv)
    try:
        reward = check_arguments(args)
        chat = Chat(args.model, args.system, args.max_new_tokens or 64, args.sample)
        if args.questions is not None:
            answers = (args.answer_column or "answer") if reward else None
            rows = read_questions(args.questions, args.column or "question", answers)
            answer_file(chat, rows, args.out, args.batch_size or 8)
        elif args.prompt is None:
            interactive(chat)
        elif chat.reward:
            print(f"{chat.score(args.prompt, args.answer):.4f}")
        else:
            print(chat.reply(args.prompt))
    except RlhfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def check_arguments(args: argparse.Namespace) -> bool:
    """Every option makes sense together, numbers in range, files readable and writable, before
    the model loads: an option the chosen mode would ignore is refused, not dropped silently.
    Returns whether the model is a reward model."""
    if args.questions is not None and args.out is None:
        raise RlhfError("--out: --questions writes its answers to a file; name it")
    if args.questions is not None and args.prompt is not None:
        raise RlhfError("--prompt: give either --prompt or --questions, not both")
    batch_only = {"--out": args.out, "--column": args.column, "--batch-size": args.batch_size,
                  "--answer-column": args.answer_column}  # fmt: skip
    for option, value in batch_only.items():
        if value is not None and args.questions is None:
            raise RlhfError(f"{option}: used only with --questions FILE")
    if args.answer is not None and args.prompt is None:
        raise RlhfError("--answer: goes with --prompt (the question whose answer is scored)")
    counts = {"--batch-size": args.batch_size, "--max-new-tokens": args.max_new_tokens}
    for option, value in counts.items():
        if value is not None and value < 1:
            raise RlhfError(f"{option}: must be >= 1, got {value}")
    problem = folder_path_problem(args.model)
    if problem is not None and " is a file, not a folder (" in problem:
        raise ModelLoadError(f"model: {problem}")  # a path through a file
    reward = is_reward_model(resolve_model_dir(ModelConfig(name_or_path=args.model), "."))
    kind = "a reward model" if reward else "a language model"
    if reward:
        ignored = {"--max-new-tokens": args.max_new_tokens, "--sample": args.sample or None}
        if args.prompt is not None and args.answer is None:
            raise RlhfError("--answer: a reward model scores an answer; give one")
    else:
        ignored = {"--answer": args.answer, "--answer-column": args.answer_column}
    for option, value in ignored.items():
        if value is not None:
            use = "scores answers, it does not write any" if reward else "writes the answers"
            raise RlhfError(f"{option}: {args.model} is {kind}, which {use}; leave {option} out")
    if args.questions is not None:
        if reward and args.questions.suffix != ".jsonl":
            raise RlhfError("--questions: a reward model scores answers: give a .jsonl file")
        if args.column is not None and args.questions.suffix != ".jsonl":
            raise RlhfError("--column: a plain text file has one question a line, no columns")
        read_text(args.questions, "--questions")
        check_output_file(args.out, "--out")
    return reward


if __name__ == "__main__":
    sys.exit(main())
