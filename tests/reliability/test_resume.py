"""Checkpoints and resume: runs killed with SIGKILL (rlhf/runs/faults.py) continue from their newest
whole checkpoint and end where an uninterrupted run ends, in the same tracker run, with every
step logged once."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from rlhf import app
from rlhf.runs.resume import ppo_checkpoints
from tests.helpers import read_jsonl, run_train


def killed_at(fault: str, args: list[str], run_dir):
    """train.py with RLHF_FAULT set: the process must die by SIGKILL at that point."""
    os.environ["RLHF_FAULT"] = fault
    try:
        result = run_train(args, run_dir)
    finally:
        del os.environ["RLHF_FAULT"]
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    return result


def ppo_args(model_dir) -> list[str]:
    return [
        "stage=ppo", f"model.name_or_path={model_dir}", "reward=char_fraction",
        "model.dtype=float64",  # resume = straight run up to summation order, robust by float64
        "reward.function.chars='你我'", "ppo.total_updates=6", "ppo.batch_size=8",
        "ppo.micro_batch_size=4", "ppo.max_new_tokens=12", "ppo.learning_rate=1e-3",
        "ppo.eval_every=3", "ppo.eval_prompts=4", "ppo.log_samples_every=2",
        "ppo.checkpoint.every=1", "ppo.checkpoint.keep_last=2",
    ]  # fmt: skip


def test_ppo_killed_while_writing_a_checkpoint_resumes_like_a_straight_run(
    tiny_sft_model, compose_config, tmp_path
):
    args = ppo_args(tiny_sft_model)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    app.run(compose_config([*args, "logger=none", f"output_dir={straight}"]))

    # killed half-way through writing checkpoint 4, after update 4 was logged
    killed_at("ppo:during_checkpoint:4", args, broken)
    stage = broken / "ppo"
    assert (stage / "checkpoints" / ".tmp-update-000004" / "trainable.safetensors").is_file()
    assert [p.name for p in ppo_checkpoints(stage)] == ["update-000002", "update-000003"]
    assert [r["step"] for r in read_jsonl(stage / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert not (stage / "COMPLETE").exists()
    # resumed: loads checkpoint 3, the last whole one, and runs updates 4–6
    app.run(compose_config([*args, "resume=true", f"output_dir={broken}"]))
    info = json.loads((stage / "run_info.json").read_text())
    assert info["status"] == "complete" and info["resumed_from"].endswith("update-000003")
    assert not list((stage / "checkpoints").glob(".tmp-*"))

    final = [load_file(run / "ppo" / "checkpoints" / "update-000006" / "trainable.safetensors")
             for run in (straight, broken)]  # fmt: skip
    assert final[0].keys() == final[1].keys()
    for name in final[0]:
        torch.testing.assert_close(final[1][name], final[0][name], rtol=1e-10, atol=1e-12)
    models = [load_file(run / "ppo" / "model" / "model.safetensors") for run in (straight, broken)]
    for name in models[0]:
        torch.testing.assert_close(models[1][name], models[0][name], rtol=1e-10, atol=1e-12)

    logged = [read_jsonl(run / "ppo" / "metrics.jsonl") for run in (straight, broken)]
    assert [r["step"] for r in logged[1]] == [0, 1, 2, 3, 4, 5, 6]  # 4 again, but only once
    for key in ("ppo/objective/scores", "ppo/objective/kl", "ppo/loss/value"):
        expected = [r[key] for r in logged[0] if key in r]
        assert max(expected) > 0, key  # a run that learns something, not all zeros
        assert [r[key] for r in logged[1] if key in r] == pytest.approx(expected, rel=1e-4)
    samples = [
        read_jsonl(run / "ppo" / "tables" / "ppo_samples.jsonl") for run in (straight, broken)
    ]
    assert [r["update"] for r in samples[1]] == [r["update"] for r in samples[0]]
    # one W&B run, continued by each process (offline runs are named ...-<run id>)
    run_ids = {p.name.rsplit("-", 1)[1] for p in (broken / "wandb").glob("offline-run-*")}
    assert len(list((broken / "wandb").glob("offline-run-*"))) == 2
    assert run_ids == {info["tracker_run_id"]}
    best = json.loads((stage / "best_checkpoint.json").read_text())
    evals = [
        (r["ppo/eval/score"], -r["step"]) for r in logged[1] if r["step"] and "ppo/eval/score" in r
    ]
    value, earliest = max(evals)  # the first update that reached the highest held-out score
    assert (best["metric"], best["update"], best["value"]) == ("ppo/eval/score", -earliest, value)
    assert (stage / best["checkpoint"]).is_dir()  # kept beside the newest keep_last


def test_sft_resumes_through_trl_and_the_pipeline_cache(compose_config, tmp_path, caplog):
    cache = tmp_path / "cache"
    args = ["stage=pipeline", "pipeline.stages=[sft]", "logger=none", "sft.max_steps=4",
            "sft.save_steps=2", "sft.logging_steps=1", f"pipeline.stage_cache_dir={cache}"]  # fmt: skip
    first = tmp_path / "first"
    killed_at("sft:after_checkpoint:2", args, first)
    stage = (first / "sft").resolve()
    assert stage.parent == cache / "sft" and not (stage / "COMPLETE").exists()
    assert (stage / "trainer" / "checkpoint-2" / "trainer_state.json").is_file()

    caplog.set_level(logging.INFO)
    app.run(compose_config([*args, f"resume={first}", f"output_dir={tmp_path / 'unused'}"]))
    info = json.loads((stage / "run_info.json").read_text())
    assert info["status"] == "complete" and info["resumed_from"].endswith("checkpoint-2")
    state = json.loads((stage / "trainer" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    records = read_jsonl(stage / "metrics.jsonl")
    steps = [r["step"] for r in records if "sft/train/grad_norm" in r]
    assert steps == [1, 2, 3, 4]  # steps 1–2 from the first process, 3–4 after the resume
    assert (stage / "COMPLETE").is_file()

    app.run(compose_config([*args, f"output_dir={tmp_path / 'second'}"]))
    assert "sft: reusing" in caplog.text  # complete now, so the cache serves it

    third = tmp_path / "third"  # without the cache: resuming a finished stage skips it
    third.mkdir()
    (third / "sft").symlink_to(stage)
    uncached = [a for a in args if not a.startswith("pipeline.stage_cache_dir")]
    app.run(compose_config([*uncached, "pipeline.stage_cache_dir=null", f"resume={third}"]))
    assert f"sft: complete in {third / 'sft'}, skipped on resume" in caplog.text
    assert json.loads((stage / "run_info.json").read_text())["resumed_from"].endswith("-2")
