"""A new stage is one runner and one declaration: a toy stage, both defined in this file only,
runs through the real pipeline after SFT, starting from SFT's model (the hand-off), cached by
its declared sections, killed half-way and resumed from its checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from rlhf import app
from rlhf.app import typed_config
from rlhf.errors import ConfigError
from rlhf.pipeline import stage_key
from rlhf.runs.resume import TRL_CHECKPOINTS
from rlhf.stages.context import stage_context
from rlhf.stages.table import STAGES, StageDeclaration

STEPS = 3
CRASH_AT: dict[str, int] = {}  # step at which the toy stage raises, as a crash would stop it


def run_toy(config, paths):
    """Counts to STEPS, one checkpoint per step in TRL's layout; records what it started from."""
    with stage_context(config, paths, "toy") as ctx:
        start = ctx.resume.step if ctx.resume else 0
        for step in range(start + 1, STEPS + 1):
            if CRASH_AT.get("step") == step:
                raise RuntimeError(f"toy: crashed at step {step}")
            checkpoint = ctx.stage_dir / "trainer" / f"checkpoint-{step}"
            checkpoint.mkdir(parents=True)
            # whole as TRL leaves one: weights, then trainer_state.json last
            save_file({"step": torch.tensor([step])}, str(checkpoint / "model.safetensors"))
            (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
            ctx.tracker.log({"toy/step": step}, step=step)
        ctx.final_metrics = {"toy/steps": float(STEPS), "toy/resumed_at": float(start)}
    return ctx.final_metrics


TOY = StageDeclaration(
    "toy",
    runner=f"{__name__}:run_toy",
    objective="toy/steps",
    starts_from="sft",
    cache_sections=("model", "data"),
    checkpoints=TRL_CHECKPOINTS,
)
SFT_TINY = ["sft.max_steps=2", "sft.max_train_samples=16", "sft.max_eval_samples=4"]


@pytest.fixture
def toy_stage(monkeypatch):
    """The toy's declaration in the table for one test (the table is a plain dict)."""
    monkeypatch.setitem(STAGES, "toy", TOY)
    CRASH_AT.clear()
    yield
    CRASH_AT.clear()


def read_info(stage_dir):
    return json.loads((stage_dir / "run_info.json").read_text())


def test_a_stage_must_be_declared(compose_config):
    with pytest.raises(ConfigError, match="pipeline.stages: 'toy' is not one of sft, rm, dpo, ppo"):
        typed_config(compose_config(["stage=pipeline", "pipeline.stages=[sft,toy]"]))


def test_a_toy_stage_runs_through_the_pipeline_with_the_cache_and_resume(
    toy_stage, compose_config, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    cache = tmp_path / "cache"
    args = ["stage=pipeline", "pipeline.stages=[sft,toy]", "logger=none", *SFT_TINY,
            f"pipeline.stage_cache_dir={cache}"]  # fmt: skip
    first = tmp_path / "first"
    CRASH_AT["step"] = 2
    with pytest.raises(RuntimeError, match="toy: crashed at step 2"):
        app.run(compose_config([*args, f"output_dir={first}"]))
    toy_dir, sft_dir = (first / "toy").resolve(), (first / "sft").resolve()
    assert toy_dir.parent == cache / "toy" and sft_dir.parent == cache / "sft"  # both cached
    assert not (toy_dir / "COMPLETE").exists() and read_info(toy_dir)["status"] == "failed"
    # the hand-off: the toy started from the SFT model, and its record says so
    assert read_info(toy_dir)["config"]["model"]["name_or_path"] == str(sft_dir / "model")

    CRASH_AT.clear()
    resumed = app.run(compose_config([*args, f"resume={first}", f"output_dir={tmp_path / 'x'}"]))
    assert resumed == STEPS  # the run's objective: the last stage's declared one
    assert "sft: reusing" in caplog.text
    info = read_info(toy_dir)
    assert info["status"] == "complete" and info["resumed_from"].endswith("checkpoint-1")
    assert info["final_metrics"] == {"toy/steps": STEPS, "toy/resumed_at": 1.0}
    logged = [json.loads(line)["step"] for line in (toy_dir / "metrics.jsonl").open()]
    assert logged == [1, 2, 3]  # step 1 before the crash, 2 and 3 after the resume

    caplog.clear()
    second = tmp_path / "second"
    assert app.run(compose_config([*args, f"output_dir={second}"])) == STEPS
    assert "sft: reusing" in caplog.text and "toy: reusing" in caplog.text
    assert (second / "toy").resolve() == toy_dir


def test_the_toy_cache_key_follows_its_sections_and_the_model_it_starts_from(
    toy_stage, compose_config
):
    config = typed_config(compose_config(["stage=pipeline", "pipeline.stages=[sft,toy]"]))

    def changed(section: str, **values) -> object:
        part = dataclasses.replace(getattr(config, section), **values)
        return dataclasses.replace(config, **{section: part})

    key = stage_key(config, "toy")
    assert key is not None and stage_key(changed("sft", learning_rate=1.0), "toy") != key
    assert stage_key(changed("data", max_prompt_length=7), "toy") != key
    assert stage_key(changed("ppo", kl_coef=0.3), "toy") == key  # not a section it depends on
    alone = changed("pipeline", stages=["toy"])  # no SFT before it: it starts from model.*
    assert stage_key(alone, "toy") not in (None, key)


def toy_summary(config, metrics):
    return [(logging.WARNING, f"toy: counted to {metrics['toy/steps']:g} (seed {config.seed})")]


def test_a_declared_summary_closes_the_pipeline_log(monkeypatch, compose_config, tmp_path, caplog):
    """A stage's `summary` adds its lines, at their level, to the pipeline's closing log (the
    eval stage's "reward hacking suspected" line comes this way)."""
    declaration = dataclasses.replace(
        TOY, starts_from=None, cache_sections=(), summary=f"{__name__}:toy_summary"
    )
    monkeypatch.setitem(STAGES, "toy", declaration)
    caplog.set_level(logging.INFO)
    args = ["stage=pipeline", "pipeline.stages=[toy]", "logger=none", "seed=7"]
    assert app.run(compose_config([*args, f"output_dir={tmp_path}"])) == STEPS
    lines = [
        (r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("toy:")
    ]
    assert lines == [(logging.WARNING, "toy: counted to 3 (seed 7)")]
    assert STAGES["eval"].load_summary() is not None and TOY.load_summary() is None


def test_the_eval_stage_declares_its_phrase_fluency_reference_and_goal_metrics():
    # so that objective=eval/goals_met (or any of these) is a metric the stage returns
    declaration = STAGES["eval"]
    for name in (
        "eval/goals_met", "eval/goals/judge_rude", "eval/data_rude/fluency_nll",
        "eval/policy/top_phrase_share", "eval/top_phrase_gap", "eval/policy/rm_judge_excess",
    ):  # fmt: skip
        assert declaration.returns_metric(name), name
    assert not declaration.returns_metric("eval/goals_mett")


def test_the_ppo_stage_declares_the_kept_checkpoint_and_guard_metrics():
    declaration = STAGES["ppo"]
    for name in (
        "ppo/kept_update", "ppo/kept/judge_above_threshold", "ppo/guard/stopped_at",
        "ppo/eval/top_phrase_share", "ppo/eval/above_threshold",
    ):  # fmt: skip
        assert declaration.returns_metric(name), name
