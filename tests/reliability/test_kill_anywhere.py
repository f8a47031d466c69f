"""Kill anywhere: a tiny `stage=pipeline` run (SFT, RM, PPO, eval) killed with SIGKILL in each of
its stages and started again each time with `resume=auto`, as a requeued cluster job is, ends
with the weights and evaluation of the straight run; a data-parallel PPO run killed in the middle
of an update, in one of its two processes or in both, resumes to the straight run's weights.

Kills: `RLHF_FAULT` at a stage's own fault point (rlhf/runs/faults.py: after a TRL checkpoint)
and `RLHF_TEST_KILL` at the n-th return of a named function (tests/helpers/kill_points.py: after an
optimiser step between two checkpoints, between the eval stage's models). Everything in float64,
so that a resumed run can differ from the straight one by summation order at most (~1e-16
relative a step; on the same machine and thread count it does not: measured bit-identical).
The pipeline runs are forked warm (tests/helpers/train_forks.py): the straight run, the five runs of
the one killed in every stage and the two of the one killed in PPO took 3 + 7 + 2.4 s on an
idle 2-core machine (1 or 2 torch threads); the two-process runs are fresh `accelerate
launch`es, 15–20 s a case, so those are marked slow.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.app import typed_config
from rlhf.paths import PROJECT_ROOT
from rlhf.pipeline import run
from rlhf.runs.resume import ppo_checkpoints
from rlhf.sweeps.cluster import AccelerateLaunch, accelerate_command, run_under_accelerate
from tests.helpers import free_port, read_jsonl, subprocess_environment

# 4 SFT and 4 RM optimiser steps (a TRL checkpoint every 2), 4 PPO updates of 8 optimiser steps
# (4 epochs × 2 mini-batches; a checkpoint every 2 updates), eval on 8 prompts
PIPELINE = [
    "stage=pipeline", "model=tiny", "logger=none", "model.dtype=float64",
    "sft.max_steps=4", "sft.save_steps=2", "sft.logging_steps=1", "sft.max_train_samples=64",
    "sft.max_eval_samples=16",
    "rm.max_steps=4", "rm.save_steps=2", "rm.logging_steps=1", "rm.max_train_samples=64",
    "rm.max_eval_samples=32",
    "reward.calibrate_samples=8", "ppo.total_updates=4", "ppo.batch_size=8",
    "ppo.micro_batch_size=4", "ppo.max_new_tokens=12", "ppo.learning_rate=1e-3",
    "ppo.eval_every=2", "ppo.eval_prompts=4", "ppo.checkpoint.every=2",
    "eval.num_prompts=8", "eval.max_new_tokens=16",
]  # fmt: skip
STEPS_PER_UPDATE = 8  # ppo_epochs 4 × (batch 8 / mini-batch 4)
# killed as the 3rd optimiser step of update 3 returns: after checkpoint 2, mid-update
MID_PPO_UPDATE = f"rlhf.ppo.trainer:PPOTrainer._optimizer_step:{2 * STEPS_PER_UPDATE + 3}"
# each stage of a requeued job's life, killed in turn: SFT after its 3rd optimiser step (its
# checkpoint 2 is whole, step 3 is lost), RM right after its checkpoint 2, PPO in the middle of
# update 3, eval once it has the first model's answers
KILLS = {
    "sft": {"RLHF_TEST_KILL": "transformers.trainer_callback:CallbackHandler.on_step_end:3"},
    "rm": {"RLHF_FAULT": "rm:after_checkpoint:2"},
    "ppo": {"RLHF_TEST_KILL": MID_PPO_UPDATE},
    "eval": {"RLHF_TEST_KILL": "rlhf.stages.eval:answer:1"},
}
STAGES = ("sft", "rm", "ppo", "eval")
# the weights each stage leaves: (stage, folder under it)
WEIGHTS = [("sft", "model"), ("rm", "model"), ("ppo", "model"), ("ppo", "critic")]


def killed(warm_train, args: list[str], run_dir: Path, kill: dict[str, str]):
    """train.py forked warm with the kill in its environment: it must die by SIGKILL."""
    result = warm_train(args, run_dir, env=kill)
    assert result.returncode == -signal.SIGKILL, (kill, result.stderr[-3000:])
    return result


def assert_same_weights(run_dir: Path, straight: Path) -> None:
    """Every tensor of every stage's saved model equal to the straight run's. float64 on the
    same machine and thread count: the resumed run repeats the straight run's operations in
    the same order, so the only tolerance needed is for summation order, ~1e-16 of a
    weight's magnitude a step; 1e-12 of the largest magnitude is far above that and far below
    one AdamW step (lr 1e-3 or more)."""
    for stage, folder in WEIGHTS:
        ours = load_file(run_dir / stage / folder / "model.safetensors")
        theirs = load_file(straight / stage / folder / "model.safetensors")
        assert ours.keys() == theirs.keys(), (stage, folder)
        for name, expected in theirs.items():
            assert expected.dtype == torch.float64
            scale = expected.abs().max().item()
            torch.testing.assert_close(
                ours[name], expected, rtol=1e-12, atol=1e-12 * scale, msg=f"{stage}/{name}"
            )


def assert_same_evaluation(run_dir: Path, straight: Path) -> None:
    """The eval stage's final metrics (greedy answers of the same weights) and PPO's logged
    scores: equal to float64 rounding."""
    ours, theirs = (
        json.loads((d / "eval" / "run_info.json").read_text())["final_metrics"]
        for d in (run_dir, straight)
    )
    assert ours.keys() == theirs.keys()
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    assert theirs["eval/num_prompts"] == 8
    logged = [read_jsonl(d / "ppo" / "metrics.jsonl") for d in (run_dir, straight)]
    scores = [[r["ppo/objective/scores"] for r in records if "ppo/objective/scores" in r]
              for records in logged]  # fmt: skip
    assert len(scores[1]) == 4 and scores[0] == pytest.approx(scores[1], rel=1e-9, abs=1e-12)


@pytest.fixture(scope="module")
def straight_pipeline(warm_train, tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, stage cache) of the pipeline run without a kill."""
    root = tmp_path_factory.mktemp("straight_pipeline")
    cache = root / "cache"
    result = warm_train([*PIPELINE, f"pipeline.stage_cache_dir={cache}"], root / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in STAGES:
        assert (root / "run" / stage / "COMPLETE").is_file(), stage
    return root / "run", cache


def test_a_pipeline_killed_in_the_middle_of_a_ppo_update_resumes_to_the_straight_run(
    warm_train, straight_pipeline, tmp_path
):
    """The requeued job's command both times (`resume=auto`); the stage cache of the straight
    run, so SFT and RM are reused (as a sweep's jobs share them) and the kill falls in PPO."""
    straight, cache = straight_pipeline
    args = [*PIPELINE, f"pipeline.stage_cache_dir={cache}", "resume=auto"]
    run_dir = tmp_path / "run"
    first = killed(warm_train, args, run_dir, {"RLHF_TEST_KILL": MID_PPO_UPDATE})
    assert "resume=auto: nothing to resume, starting fresh" in first.stdout + first.stderr
    stage = run_dir / "ppo"
    assert [p.name for p in ppo_checkpoints(stage)] == ["update-000002"]
    assert [r["step"] for r in read_jsonl(stage / "metrics.jsonl")] == [0, 1, 2]
    assert not (stage / "COMPLETE").exists() and not (run_dir / "eval").exists()

    result = warm_train(args, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resume=auto: continuing the run in {run_dir}" in result.stdout + result.stderr
    info = json.loads((stage / "run_info.json").read_text())
    assert info["status"] == "complete" and info["resumed_from"].endswith("update-000002")
    assert [r["step"] for r in read_jsonl(stage / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert_same_weights(run_dir, straight)
    assert_same_evaluation(run_dir, straight)


def test_a_pipeline_killed_in_every_stage_in_turn_resumes_to_the_straight_run(
    warm_train, straight_pipeline, tmp_path
):
    """One requeued job's life: started, killed in SFT; started again (`resume=auto`), killed
    in RM; again, killed in PPO; again, killed in eval; again, done. Its own stage cache, so
    that SFT and RM are trained (and killed) here."""
    straight, _ = straight_pipeline
    run_dir = tmp_path / "run"
    args = [*PIPELINE, f"pipeline.stage_cache_dir={tmp_path / 'cache'}", "resume=auto"]
    for index, stage in enumerate(STAGES):
        killed(warm_train, args, run_dir, KILLS[stage])
        for earlier in STAGES[:index]:
            assert (run_dir / earlier / "COMPLETE").is_file(), (stage, earlier)
        assert not (run_dir / stage / "COMPLETE").exists(), stage
    result = warm_train(args, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]

    resumed = {
        stage: json.loads((run_dir / stage / "run_info.json").read_text()).get("resumed_from")
        for stage in STAGES
    }
    assert resumed["sft"].endswith("checkpoint-2") and resumed["rm"].endswith("checkpoint-2")
    assert resumed["ppo"].endswith("update-000002")
    assert_same_weights(run_dir, straight)
    assert_same_evaluation(run_dir, straight)


# --- two processes -----------------------------------------------------------------------------

# as tests/distributed/test_distributed.py: the same 8 answers as one process of batch 8, float64
DDP_PPO = [
    "stage=ppo", "logger=none", "model.dtype=float64", "reward=char_fraction",
    "reward.function.chars='你我的是了'", "reward.normalize=true", "ppo.whiten_rewards=true",
    "ppo.max_new_tokens=12", "ppo.ppo_epochs=2", "ppo.learning_rate=1e-3",
    "ppo.total_updates=3", "ppo.eval_every=0", "ppo.log_samples_every=1",
    "ppo.checkpoint.every=1",
]  # fmt: skip
# 2 epochs × 1 mini-batch a process: optimiser steps 5 and 6 make update 3
DDP_KILL = "rlhf.ppo.trainer:PPOTrainer._optimizer_step:5"


def launch_killed(overrides: list[str], run_dir: Path, kill: str) -> subprocess.CompletedProcess:
    """`accelerate launch` of two processes running train.py under tests/helpers/kill_points.py."""
    launch = AccelerateLaunch("accelerate/ddp.yaml", 2, main_process_port=free_port())
    command = accelerate_command(launch, overrides, run_dir)
    command[command.index(str(PROJECT_ROOT / "train.py"))] = str(
        PROJECT_ROOT / "tests" / "helpers" / "kill_points.py"
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**subprocess_environment(), "RLHF_TEST_KILL": kill}
    return subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # two launches of two processes each (15–20 s): make test-all
@pytest.mark.parametrize("ranks", ["1", "both"], ids=["one-process", "both-processes"])
def test_two_processes_killed_in_the_middle_of_an_update_resume_to_the_straight_run(
    tiny_sft_model, compose_config, tmp_path, ranks
):
    """Killed as the first optimiser step of update 3 returns (after checkpoint 2): in rank 1
    only (its partner is stopped by the launcher, or fails at the next all-reduce) or in both.
    `resume=auto` under two processes again ends with the weights of the straight run, which
    is one process of batch 8 (tests/distributed/test_distributed.py: the same update to ~1e-12)."""
    model = f"model.name_or_path={tiny_sft_model}"
    straight = tmp_path / "straight"
    config = compose_config([*DDP_PPO, model, "ppo.batch_size=8", "ppo.micro_batch_size=8"])
    run(typed_config(config), straight)
    double = [*DDP_PPO, model, "ppo.batch_size=4", "ppo.micro_batch_size=4"]
    run_dir = tmp_path / "double"
    kill = DDP_KILL if ranks == "both" else f"{DDP_KILL}:{ranks}"
    done = launch_killed([*double, "resume=auto"], run_dir, kill)
    assert done.returncode != 0, done.stderr[-3000:]
    stage = run_dir / "ppo"
    assert [p.name for p in ppo_checkpoints(stage)] == ["update-000001", "update-000002"]
    assert not (stage / "COMPLETE").exists()

    launch = AccelerateLaunch("accelerate/ddp.yaml", 2, main_process_port=free_port())
    run_under_accelerate(launch, [*double, "resume=auto"], run_dir)
    info = json.loads((stage / "run_info.json").read_text())
    assert info["status"] == "complete" and info["resumed_from"].endswith("update-000002")
    assert [r["step"] for r in read_jsonl(stage / "metrics.jsonl")] == [1, 2, 3]
    start = load_file(tiny_sft_model / "model.safetensors")
    for part in ("model", "critic"):
        ours = load_file(stage / part / "model.safetensors")
        theirs = load_file(straight / "ppo" / part / "model.safetensors")
        assert ours.keys() == theirs.keys()
        for name, expected in theirs.items():
            torch.testing.assert_close(ours[name], expected, atol=1e-12, rtol=1e-10, msg=name)
    trained = load_file(straight / "ppo" / "model" / "model.safetensors")
    assert any(not torch.equal(start[n], trained[n]) for n in start)  # not trivially equal
