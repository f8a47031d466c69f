"""The tracker: metrics.jsonl always, and real W&B (offline) / TensorBoard files read back."""

from __future__ import annotations

import json

from rlhf.config import LoggerConfig
from rlhf.reporting.wandb_files import read_history, read_run, run_files
from rlhf.runs.tracking import open_tracker


def test_wandb_offline_run_holds_the_logged_metrics_config_and_names(tmp_path):
    config = LoggerConfig(backend="wandb", project="rlhf-test", group="g1", tags=["unit"])
    with open_tracker(
        config, tmp_path, tmp_path / "sft", "unit-sft", "sft", {"ppo": {"kl_coef": 0.07}}
    ) as tracker:
        for step in range(1, 4):
            tracker.log({"sft/train/loss": 1.0 / step, "sft/train/ignored": "text"}, step=step)
        tracker.summary({"sft/test/loss": 0.25})
    files = run_files(tmp_path / "wandb")
    assert len(files) == 1 and "offline-run" in str(files[0])  # no API key → offline
    run = read_run(files[0])
    assert run["state"] == "finished" and run["exit_code"] == 0
    assert run["name"] == "unit-sft" and run["tags"] == ["unit"]
    assert run["summary"]["sft/train/loss"] == 1.0 / 3
    assert run["summary"]["sft/test/loss"] == 0.25
    assert run["config"]["ppo"]["kl_coef"] == 0.07
    lines = (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["sft/train/loss"] for line in lines] == [1.0, 0.5, 1.0 / 3]
    assert all("sft/train/ignored" not in json.loads(line) for line in lines)


def test_a_table_does_not_push_the_metrics_of_its_step_out_of_wandb(tmp_path):
    # PPO logs an evaluation's sample table, then its scores at the same step; W&B once advanced
    # its step on the table and dropped every ppo/eval/* value as logged to an old step
    config = LoggerConfig(backend="wandb", project="rlhf-test")
    with open_tracker(config, tmp_path, tmp_path / "ppo", "unit-ppo", "ppo", {}) as tracker:
        for step, score in enumerate([0.5, 0.7, 0.9]):
            tracker.log_table("ppo/eval_samples", ["update", "text"], [[step, f"answer {step}"]])
            tracker.log({"ppo/eval/score": score}, step=step)
            tracker.log({"ppo/score": step / 10}, step=step + 1)
    history = read_history(run_files(tmp_path / "wandb")[0])
    scores = {row["_step"]: row["ppo/eval/score"] for row in history if "ppo/eval/score" in row}
    assert scores == {0: 0.5, 1: 0.7, 2: 0.9}
    tables = [row["ppo/eval_samples.nrows"] for row in history if "ppo/eval_samples.nrows" in row]
    assert tables == [1, 2, 3]  # every table kept, each with the rows so far


def test_failed_body_marks_the_wandb_run_failed(tmp_path):
    try:
        with open_tracker(LoggerConfig(), tmp_path, tmp_path / "rm", "x", "rm", {}) as tracker:
            tracker.log({"rm/train/loss": 1.0}, step=1)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    run = read_run(run_files(tmp_path / "wandb")[0])
    assert run["exit_code"] == 1


def test_tensorboard_backend_writes_event_files_and_tables(tmp_path):
    with open_tracker(
        LoggerConfig(backend="tensorboard"), tmp_path, tmp_path / "sft", "x", "sft", {}
    ) as tracker:
        tracker.log({"sft/train/loss": 2.0}, step=1)
        tracker.log_table("samples", ["prompt", "response"], [["你好", "滚"]])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "sft" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("sft/train/loss")] == [2.0]
    table = (tmp_path / "sft" / "tables" / "samples.jsonl").read_text(encoding="utf-8")
    assert json.loads(table) == {"prompt": "你好", "response": "滚"}


def test_none_backend_still_writes_metrics_jsonl(tmp_path):
    with open_tracker(LoggerConfig(backend="none"), tmp_path, tmp_path / "rm", "x", "rm", {}) as t:
        t.log({"rm/train/loss": 0.5}, step=7)
    record = json.loads((tmp_path / "rm" / "metrics.jsonl").read_text())
    assert record["step"] == 7 and record["rm/train/loss"] == 0.5
    assert not (tmp_path / "wandb").exists()
