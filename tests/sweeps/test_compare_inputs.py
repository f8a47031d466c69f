"""Bad inputs of `python -m rlhf.compare`: each bad argument is one `error: ...` line, exit code 2
and nothing written; a job whose files cannot be read is a row that says `unreadable` and names
the file, the other jobs are compared, and the exit code is 3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.paths import PROJECT_ROOT
from rlhf.sweeps import compare
from tests.sweeps.test_compare_seeds import eval_metrics, read_csv, write_job

OUTPUTS = {"table.md", "table.csv", "seeds.csv", "curves.png", "frontier.png", "heatmap.png"}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    folder = tmp_path / "sweep"
    for seed in range(2):
        write_job(folder, seed, {"ppo.seed": seed}, eval_metrics(0.5, 0.8, 0.0, None))
    return folder


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


def everything_under(path: Path) -> set[Path]:
    return set(path.rglob("*"))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "{p} is not a folder"),
        ("a file", "{p} is a file, not a folder: give the multirun folder"),
        ("inside a file", "{p}: a part of the path is a file, not a folder"),
        ("no jobs", "{p} holds no Hydra job folders (is it a multirun folder?)"),
        ("empty", "argument sweep_dir: an empty path"),
    ],
)
def test_a_bad_sweep_folder(tmp_path, capsys, case, expected):
    (tmp_path / "notes.txt").write_text("not a sweep\n")
    (tmp_path / "empty_dir").mkdir()
    path = {
        "missing": tmp_path / "missing",
        "a file": tmp_path / "notes.txt",
        "inside a file": tmp_path / "notes.txt" / "sweep",
        "no jobs": tmp_path / "empty_dir",
        "empty": "",
    }[case]
    before = everything_under(tmp_path)
    assert compare.main([str(path)]) == 2
    assert one_error_line(capsys) == "error: " + expected.format(p=path)
    assert everything_under(tmp_path) == before


def test_an_out_that_is_a_file_or_inside_one(sweep, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me\n")
    before = everything_under(tmp_path)
    assert compare.main([str(sweep), "--out", str(notes)]) == 2
    assert one_error_line(capsys) == f"error: --out {notes} is a file, not a folder"
    assert compare.main([str(sweep), "--out", str(notes / "deeper" / "out")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: --out {notes / 'deeper' / 'out'}: a part of the path")
    assert everything_under(tmp_path) == before and notes.read_text() == "keep me\n"


def test_an_out_that_cannot_be_written(sweep, tmp_path, capsys):
    if os.geteuid() == 0:  # root writes anywhere a permission is refused: a system folder
        out = Path("/sys/rlhf-compare-test/out")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        out = locked / "out"
    before = everything_under(sweep)
    assert compare.main([str(sweep), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert str(out.parent) in line
    assert not out.exists() and everything_under(sweep) == before


def test_a_folder_in_the_way_of_an_output_leaves_the_earlier_report_whole(sweep, capsys):
    assert compare.main([str(sweep), "--no-wandb"]) == 0
    out = sweep / "compare"
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(earlier) == OUTPUTS
    (out / "seeds.csv").unlink()
    (out / "seeds.csv").mkdir()  # a folder where a file goes
    capsys.readouterr()
    assert compare.main([str(sweep), "--no-wandb"]) == 2
    line = one_error_line(capsys)
    assert (
        line
        == f"error: cannot write the report: {out / 'seeds.csv'}: a folder is in the way of a file"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == {
        name: data for name, data in earlier.items() if name != "seeds.csv"
    }  # nothing replaced, no scratch folder left
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["seeds.csv"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "error: the following arguments are required: sweep_dir"),
        (["{s}", "--out"], "error: argument --out: expected one argument"),
        (["{s}", "--sort", "eval/policy/score"], "error: unrecognized arguments: --sort eval/policy/score"),
        (["{s}", "{s}"], "error: unrecognized arguments: {s}"),
        (["{s}", "--out", ""], "error: argument --out: an empty path"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line(sweep, capsys, args, expected):
    before = everything_under(sweep)
    assert compare.main([a.format(s=sweep) for a in args]) == 2
    assert one_error_line(capsys) == expected.format(s=sweep)
    assert everything_under(sweep) == before


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as done:
        compare.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m rlhf.compare")
    assert "exit codes:" in text and "  3  the report is written, but a job's job.json" in text


def test_unreadable_job_files_are_named_in_their_rows_and_exit_3(tmp_path, capsys):
    final = eval_metrics(0.5, 0.8, 0.0, {"judge_rude": 1.0})
    good = [write_job(tmp_path, n, {"ppo.seed": n}, final) for n in (0, 1)]
    broken = {  # job → the file that cannot be read, and what is in it
        2: ("job.json", b'{"job": 2, "status": "compl'),
        3: (".hydra/config.yaml", b"ppo: [kl: 0.1\n"),
        4: ("job.json", json.dumps({"job": 4, "status": "complete"}).encode("utf-16")),
        5: ("eval/run_info.json", b'{"final_metrics": {"eval/policy/score": 0.9'),
        6: ("ppo/metrics.jsonl", '{"step": 1, "note": "café"}\n'.encode("latin-1")),
        7: ("job.json", b"[1, 2]"),
    }
    for num, (name, data) in broken.items():
        folder = write_job(tmp_path, num, {"ppo.seed": num}, final)
        (folder / name).write_bytes(data)
    assert compare.main([str(tmp_path), "--no-wandb"]) == 3
    captured = capsys.readouterr()
    rows = read_csv(tmp_path / "compare" / "table.csv")
    assert [r["status"] for r in rows] == ["complete"] * 2 + ["unreadable"] * 6
    for row, (num, (name, _)) in zip(rows[2:], broken.items(), strict=True):
        path = tmp_path / f"{num}_ppo.seed={num}" / name
        assert row["error"].startswith(f"{path} cannot be read ("), row
        assert row["eval_score"] == row["goals"] == row["updates"] == ""  # never a normal row
    table = (tmp_path / "compare" / "table.md").read_text(encoding="utf-8")
    assert "| 3 | ppo.seed=3 |  | unreadable: .hydra/config.yaml |" in table
    assert "| 6 | ppo.seed=6 |  | unreadable: ppo/metrics.jsonl |" in table
    assert "running" not in table
    assert "| (all) | 2 | 6 |" in table  # the statistics: the two readable seeds only
    assert "8 jobs (2 complete, 0 running, 0 failed, 6 unreadable)" in captured.out
    errors = captured.err.splitlines()
    assert len(errors) == 6 and all(e.startswith("unreadable: job ") for e in errors)
    assert errors[0].startswith(f"unreadable: job 2 (ppo.seed=2): {tmp_path / '2_ppo.seed=2' / 'job.json'} cannot be read (JSONDecodeError")  # fmt: skip
    assert "UnicodeDecodeError" in errors[2] and "it holds list, not a mapping" in errors[5]
    assert all((folder / "job.json").is_file() for folder in good)


def test_the_command_line_gives_one_line_not_a_traceback(sweep, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("x\n")
    done = subprocess.run(
        [sys.executable, "-m", "rlhf.compare", str(sweep), "--out", str(notes)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: --out {notes} is a file, not a folder\n"
