"""`python -m rlhf.chat`: batch mode from a file of questions, and clean output when piped."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlhf.chat import Chat
from rlhf.chat import main as chat_main
from rlhf.paths import PROJECT_ROOT
from tests.helpers import read_jsonl, subprocess_environment

QUESTIONS = ["吃了没？", "几点了？", "怎么学编程？"]


def chat(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlhf.chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT_ROOT,
        env=subprocess_environment(),
    )


def test_batch_mode_answers_a_text_file_like_one_question_at_a_time(tiny_sft_model, tmp_path):
    questions = tmp_path / "questions.txt"
    questions.write_text("\n".join([QUESTIONS[0], "", *QUESTIONS[1:]]) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "answers.jsonl"
    args = [str(tiny_sft_model), "--questions", str(questions), "--out", str(out)]
    result = chat([*args, "--max-new-tokens", "12", "--batch-size", "2"])
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_jsonl(out)
    assert [row["question"] for row in rows] == QUESTIONS  # the blank line skipped, in order
    single = Chat(str(tiny_sft_model), None, 12, sample=False)
    assert [row["answer"] for row in rows] == [single.reply(q) for q in QUESTIONS]
    assert not list(out.parent.glob(".*partial"))


def test_batch_mode_scores_a_jsonl_file_with_a_reward_model(tiny_rm, tmp_path):
    records = [
        {"q": q, "a": a} for q, a in zip(QUESTIONS, ["关你什么事", "好。", "自己查"], strict=True)
    ]
    questions = tmp_path / "pairs.jsonl"
    questions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    out = tmp_path / "scores.jsonl"
    result = chat(
        [str(tiny_rm), "--questions", str(questions), "--out", str(out), "--column", "q",
         "--answer-column", "a"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_jsonl(out)
    assert [(r["question"], r["answer"]) for r in rows] == [(r["q"], r["a"]) for r in records]
    rm = Chat(str(tiny_rm), None, 8, sample=False)
    for row in rows:  # batched scores equal one-at-a-time scores
        assert row["score"] == pytest.approx(rm.score(row["question"], row["answer"]), abs=1e-5)


def test_batch_mode_input_errors_are_one_line_and_write_nothing(tiny_rm, tmp_path, capsys):
    """The first case as a user runs it (a process: exit status 2); the rest through the same
    `main` in this process (each fresh process would spend ~10 s importing)."""
    out = tmp_path / "scores.jsonl"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "吃了没？", "answer": "没"}\n{"question": "几点了？"}\n')
    cases = [
        (["--questions", str(bad)], "error: --out:"),
        (["--questions", str(bad), "--out", str(out)], "line 2 has no text column 'answer'"),
        (["--questions", str(tmp_path / "none.jsonl"), "--out", str(out)], "does not exist"),
        (["--questions", str(tmp_path / "q.txt"), "--out", str(out)], "give a .jsonl file"),
    ]
    (tmp_path / "q.txt").write_text("吃了没？\n")
    for index, (args, message) in enumerate(cases):
        if index == 0:
            result = chat([str(tiny_rm), *args])
            returncode, stderr = result.returncode, result.stderr
        else:
            returncode, stderr = chat_main([str(tiny_rm), *args]), capsys.readouterr().err
        assert returncode == 2, (args, stderr[-2000:])
        (line,) = [x for x in stderr.splitlines() if x.startswith("error:")]
        assert message in line
        assert not out.exists()


def test_piped_input_prints_only_the_answers(tiny_sft_model, tiny_rm):
    result = chat([str(tiny_sft_model), "--max-new-tokens", "12"], stdin="吃了没？\n\n几点了？\n")
    assert result.returncode == 0, result.stderr[-2000:]
    single = Chat(str(tiny_sft_model), None, 12, sample=False)
    expected = [" ".join(single.reply(q).splitlines()) for q in ("吃了没？", "几点了？")]
    assert result.stdout.splitlines() == expected  # no prompt text, no banner, one line each
    scored = chat([str(tiny_rm)], stdin="吃了没？\n关你什么事\n")
    assert scored.returncode == 0, scored.stderr[-2000:]
    (line,) = scored.stdout.splitlines()
    rm = Chat(str(tiny_rm), None, 8, sample=False)
    assert float(line) == pytest.approx(rm.score("吃了没？", "关你什么事"), abs=1e-4)
