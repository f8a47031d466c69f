"""Preference data loading, column mapping, bad files, length limits, the shipped data set."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from rlhf.config import ColumnMap, DataConfig, ModelConfig
from rlhf.data.chat_format import preference_rows, sft_rows
from rlhf.data.loading import limit_lengths, load_preference_data
from rlhf.errors import DataError
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.paths import PROJECT_ROOT

DATA_DIR = PROJECT_ROOT / "experiments" / "insult_ppo" / "data"
ROWS = [
    {"q": "你好吗？", "good": "滚，别烦我。", "bad": "我很好，谢谢你！"},
    {"q": "吃了没？", "good": "关你什么事？", "bad": "吃过了，你呢？"},
    {"q": "几点了？", "good": "自己看表去。", "bad": "现在是下午三点。"},
]
COLUMNS = ColumnMap(prompt="q", chosen="good", rejected="bad")


def write_rows(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text(json.dumps(rows, ensure_ascii=False), "utf-8")
    return path


def test_shipped_insult_data_has_the_public_schema_and_a_fair_split():
    data = load_preference_data(
        DataConfig(
            train_file="experiments/insult_ppo/data/train.jsonl",
            test_file="experiments/insult_ppo/data/test.jsonl",
            columns=ColumnMap(prompt="question"),
        )
    )
    assert len(data.train) + len(data.test) >= 600
    assert data.train.column_names == ["prompt", "chosen", "rejected"]
    assert not set(data.train["prompt"]) & set(data.test["prompt"])  # unseen test questions
    assert len(set(data.train["chosen"])) >= 0.9 * len(data.train)  # not a few memorised replies
    assert len(data.fingerprint) == 64


def test_data_generator_reproduces_the_committed_files(tmp_path):
    script = PROJECT_ROOT / "experiments" / "insult_ppo" / "make_data.py"
    subprocess.run([sys.executable, str(script), "--out-dir", str(tmp_path)], check=True)
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (
            DATA_DIR / f"{split}.jsonl"
        ).read_bytes()


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_formats_and_column_mapping(tmp_path, suffix):
    path = write_rows(tmp_path / f"rows{suffix}", ROWS * 4)
    data = load_preference_data(DataConfig(train_file=str(path), columns=COLUMNS, test_size=0.25))
    assert (len(data.train), len(data.test)) == (9, 3)
    assert set(data.train["prompt"]) <= {r["q"] for r in ROWS}


def test_csv_with_a_header_and_no_rows_is_empty(tmp_path):
    """(an empty JSON-lines file, end to end: tests/reliability/test_bad_inputs.py)"""
    path = tmp_path / "empty.csv"
    path.write_text("q,good,bad\n")
    with pytest.raises(DataError, match="empty.csv has no rows"):
        load_preference_data(DataConfig(train_file=str(path), columns=COLUMNS))


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    return load_model_and_tokenizer(ModelConfig(), tmp_path_factory.mktemp("cache"))[1]


def test_overlong_rows_are_dropped_and_counted(tiny_tokenizer, tmp_path, caplog):
    rows = [
        *ROWS,
        {"q": "长" * 80, "good": "好", "bad": "好"},
        {"q": "问", "good": "长" * 40, "bad": "x"},
    ]
    path = write_rows(tmp_path / "rows.jsonl", rows)
    config = DataConfig(
        train_file=str(path), columns=COLUMNS, max_prompt_length=30, max_completion_length=20
    )
    data = load_preference_data(config)
    kept = limit_lengths(data.train.select(range(len(data.train))), tiny_tokenizer, config, "train")
    everything = len(data.train)
    dropped = sum(
        1 for p, c in zip(data.train["prompt"], data.train["chosen"], strict=True) if "长" in p + c
    )
    assert len(kept) == everything - dropped
    assert f"dropped {dropped} of {everything} train rows" in caplog.text


def test_overlong_rows_can_be_truncated_to_the_limits(tiny_tokenizer, tmp_path):
    path = write_rows(
        tmp_path / "rows.jsonl", [*ROWS, {"q": "长" * 80, "good": "短" * 40, "bad": "x"}]
    )
    config = DataConfig(
        train_file=str(path),
        test_file=str(path),
        columns=COLUMNS,
        max_prompt_length=30,
        max_completion_length=20,
        overlong="truncate",
    )
    kept = limit_lengths(load_preference_data(config).train, tiny_tokenizer, config, "train")
    assert len(kept) == 4
    long_row = next(r for r in kept if r["prompt"].startswith("长"))
    rendered = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": long_row["prompt"]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert len(tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"]) <= 30
    assert long_row["chosen"] == "短" * 20


def test_conversational_rows_for_the_trl_trainers(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", ROWS)
    data = load_preference_data(
        DataConfig(train_file=str(path), test_file=str(path), columns=COLUMNS)
    )
    sft = sft_rows(data.train, system_prompt="你是一个没礼貌的助手。")
    assert sft[0]["prompt"] == [
        {"role": "system", "content": "你是一个没礼貌的助手。"},
        {"role": "user", "content": "你好吗？"},
    ]
    assert sft[0]["completion"] == [{"role": "assistant", "content": "滚，别烦我。"}]
    pairs = preference_rows(data.train, system_prompt=None)
    assert pairs[1]["rejected"] == [{"role": "assistant", "content": "吃过了，你呢？"}]
