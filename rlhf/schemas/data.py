"""`data`: where the preference rows come from, their columns, and the prompt and answer limits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from rlhf.schemas.fields import AT_LEAST_ONE, SEED, Range, check_fields, one_of, require, setting


@dataclass
class ColumnMap:
    prompt: str = setting("prompt", "source column holding the user question")
    chosen: str | None = setting(
        "chosen", "column of the preferred answer; null for prompt-only data"
    )
    rejected: str | None = setting("rejected", "column of the dispreferred answer; null if none")


@dataclass
class DataConfig:
    name: str = setting("custom", "short name, used in run names and reports")
    train_file: str | None = setting(
        None, "local json/jsonl/csv/parquet (relative to the project root)"
    )
    test_file: str | None = setting(None, "local held-out file; split off train when null")
    hub_id: str | None = setting(None, "hub data set id, used when train_file is null")
    hub_train_split: str = setting("train", "split of the hub data set used for training")
    hub_test_split: str | None = setting(None, "split used for testing; split off train when null")
    test_size: float = setting(
        0.1,
        "share of train split off for testing when there is no test file",
        Range(0, 1, low_open=True, high_open=True),
    )
    columns: ColumnMap = setting(ColumnMap, "source column names")
    system_prompt: str | None = setting(None, "optional system message before every prompt")
    max_prompt_length: int = setting(128, "tokens of the chat-formatted prompt", AT_LEAST_ONE)
    max_completion_length: int = setting(128, "tokens of an answer", AT_LEAST_ONE)
    overlong: str = setting("drop", "what to do with rows over a limit: drop or truncate")
    seed: int = setting(0, "seed for shuffling and splitting", SEED)

    section: ClassVar[str] = "data"

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self.train_file is not None or self.hub_id is not None,
            "data.train_file",
            "set a local file or data.hub_id",
        )
        one_of(self.overlong, ("drop", "truncate"), "data.overlong")
        columns = [c for c in dataclasses.astuple(self.columns) if c is not None]
        require(
            len(set(columns)) == len(columns),
            "data.columns",
            f"prompt, chosen and rejected must be different columns, got {columns}",
        )
