"""Preference data: local files or a hub data set → (prompt, chosen, rejected) rows, chat-formatted.

Every stage reads its data through `load_preference_data` (train and test splits with the
columns renamed to prompt / chosen / rejected, empty rows rejected) and `limit_lengths` (rows over
the token limits dropped or truncated, with a counted warning). Chat formatting is in
rlhf/data/chat_format.py.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, load_dataset
from transformers import PreTrainedTokenizerBase

from rlhf.config import DataConfig
from rlhf.data.chat_format import prompt_messages
from rlhf.errors import DataError
from rlhf.paths import resolve_path

log = logging.getLogger(__name__)

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class PreferenceData:
    train: Dataset  # columns prompt, chosen, rejected (str); only prompt for prompt-only data
    test: Dataset
    fingerprint: str  # sha256 of the source files (or the hub data set's fingerprint)


def _read_local(name: str, key: str) -> tuple[Dataset, str]:
    path = resolve_path(name)
    if path.is_dir():
        raise DataError(f"{key}: {path} is a folder, not a data file")
    if not path.is_file():
        raise DataError(f"{key}: file {path} does not exist")
    if path.suffix not in FORMATS:
        raise DataError(f"{key}: {path.name} is not one of {', '.join(FORMATS)}")
    if FORMATS[path.suffix] != "parquet":
        utf8_text(path, key)  # JSON and CSV are read as UTF-8
    try:
        dataset = load_dataset(FORMATS[path.suffix], data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for unreadable files
        if "no data" in str(exc) or path.stat().st_size == 0:
            raise DataError(f"{key}: {path} has no rows") from exc
        raise DataError(f"{key}: cannot read {path}: {' '.join(str(exc).split())[:200]}") from exc
    return dataset, hashlib.sha256(path.read_bytes()).hexdigest()


def utf8_text(path: Path, key: str) -> str:
    """The file's text as UTF-8 (data files, the CLIs' text files): a file in another encoding
    (GBK is common for Chinese text) is one line naming `key`, the byte and the line, instead of
    a UnicodeDecodeError from deep in a reader."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{key}: {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
            f"save it as UTF-8 (e.g. iconv -f GBK -t UTF-8 {path.name} > utf8_{path.name})"
        ) from exc


def _read_hub(cfg: DataConfig, split: str) -> tuple[Dataset, str]:
    try:
        dataset = load_dataset(cfg.hub_id, split=split)
    except Exception as exc:
        raise DataError(f"data.hub_id: cannot load {cfg.hub_id!r} split {split!r}: {exc}") from exc
    return dataset, dataset._fingerprint


def _standardise(dataset: Dataset, cfg: DataConfig, source: str) -> Dataset:
    """Rename the mapped columns to prompt / chosen / rejected; reject missing or empty values.
    A column mapped to null (prompt-only data for PPO) is left out."""
    fields = [field for field in FIELDS if getattr(cfg.columns, field) is not None]
    mapping = {getattr(cfg.columns, field): field for field in fields}
    for column, field in mapping.items():
        if column not in dataset.column_names:
            raise DataError(
                f"data.columns.{field}: column {column!r} not in {source} "
                f"(columns: {', '.join(dataset.column_names)})"
            )
    if len(dataset) == 0:
        raise DataError(f"{source} has no rows")
    dataset = dataset.select_columns(list(mapping)).rename_columns(mapping)
    columns = {field: column for column, field in mapping.items()}
    for field in fields:
        for index, value in enumerate(dataset[field]):
            if value is not None and not isinstance(value, str):
                raise DataError(
                    f"{source}: column {columns[field]!r} ({field}) holds "
                    f"{type(value).__name__} values, not text (row {index}: {value!r})"
                )
            if value is None or not value.strip():
                raise DataError(f"{source}: row {index} has an empty {field!r} ({value!r})")
    return dataset


def load_preference_data(cfg: DataConfig) -> PreferenceData:
    """Train and test splits with columns prompt, chosen, rejected."""
    if cfg.train_file is not None:
        train, train_hash = _read_local(cfg.train_file, "data.train_file")
        train = _standardise(train, cfg, cfg.train_file)
        if cfg.test_file is not None:
            test, test_hash = _read_local(cfg.test_file, "data.test_file")
            test = _standardise(test, cfg, cfg.test_file)
            return PreferenceData(train, test, _combine(train_hash, test_hash))
    else:
        train, train_hash = _read_hub(cfg, cfg.hub_train_split)
        train = _standardise(train, cfg, f"{cfg.hub_id}[{cfg.hub_train_split}]")
        if cfg.hub_test_split is not None:
            test, test_hash = _read_hub(cfg, cfg.hub_test_split)
            test = _standardise(test, cfg, f"{cfg.hub_id}[{cfg.hub_test_split}]")
            return PreferenceData(train, test, _combine(train_hash, test_hash))
    if len(train) < 2:
        raise DataError(f"data: cannot split a test set off {len(train)} row(s)")
    test_rows = math.ceil(cfg.test_size * len(train))  # as Dataset.train_test_split counts
    if test_rows >= len(train):
        raise DataError(
            f"data.test_size: {cfg.test_size} of {len(train)} rows is {test_rows} test rows, "
            "which leaves no train row; lower it or give data.test_file"
        )
    parts = train.train_test_split(test_size=cfg.test_size, seed=cfg.seed)
    log.info(
        "data: no test file or split, so %.0f %% of the %d rows were split off as the test set "
        "(data.test_size, data.seed): %d train, %d test",
        100 * cfg.test_size, len(train), len(parts["train"]), len(parts["test"]),
    )  # fmt: skip
    return PreferenceData(parts["train"], parts["test"], _combine(train_hash, f"split{cfg.seed}"))


def require_answers(data: PreferenceData, answers: tuple[str, ...], stage: str) -> None:
    """Stop early when a stage needs answer columns that the data config leaves out."""
    for answer in answers:
        if answer not in data.train.column_names:
            raise DataError(f"data.columns.{answer}: stage {stage} needs it, but it is null")


def _combine(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


def _token_count(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _truncate(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True)


def limit_lengths(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    cfg: DataConfig,
    split: str,
    answers: tuple[str, ...] = ("chosen", "rejected"),
) -> Dataset:
    """Drop (or truncate) rows whose chat-formatted prompt or answers pass the token limits."""

    def prompt_tokens(prompt: str) -> int:
        messages = prompt_messages(prompt, cfg.system_prompt)
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return _token_count(tokenizer, rendered)

    overhead = prompt_tokens("")  # template tokens around an empty question
    if cfg.overlong == "truncate" and cfg.max_prompt_length <= overhead:
        raise DataError(
            f"data.max_prompt_length: {cfg.max_prompt_length} tokens leave no room for a "
            f"question: the chat template and system prompt alone take {overhead}"
        )
    rows, over = [], 0
    for row in dataset:
        prompt_over = prompt_tokens(row["prompt"]) > cfg.max_prompt_length
        answer_over = any(
            _token_count(tokenizer, row[a]) > cfg.max_completion_length for a in answers
        )
        if prompt_over or answer_over:
            over += 1
            if cfg.overlong == "drop":
                continue
            row = dict(row)
            if prompt_over:
                row["prompt"] = _truncate(
                    tokenizer, row["prompt"], cfg.max_prompt_length - overhead
                )
            for a in answers:
                row[a] = _truncate(tokenizer, row[a], cfg.max_completion_length)
        rows.append(row)
    if over:
        verb = "dropped" if cfg.overlong == "drop" else "truncated"
        log.warning(
            "%s %d of %d %s rows over max_prompt_length=%d or max_completion_length=%d tokens",
            verb,
            over,
            len(dataset),
            split,
            cfg.max_prompt_length,
            cfg.max_completion_length,
        )
    if not rows:
        raise DataError(
            f"data: no {split} row fits max_prompt_length={cfg.max_prompt_length} and "
            f"max_completion_length={cfg.max_completion_length} tokens"
        )
    return Dataset.from_list(rows) if over else dataset


def seeded_subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """A seeded random subset of `limit` rows (all rows when limit is None)."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))
