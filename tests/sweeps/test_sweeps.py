"""Sweeps: a real 2 × 2 Hydra multirun (one SFT and RM for all jobs, one W&B group read back
from the run files, the comparison report), a sweep with a failing job, the presets, and the
comparison maths on hand-made files."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlhf.paths import PROJECT_ROOT
from rlhf.reporting.wandb_files import read_run
from rlhf.sweeps import compare, overopt
from rlhf.sweeps.jobs import job_label, job_params, safe_dirname
from tests.helpers import compose_with_hydra, read_jsonl

GRID = {(0.01, 0.1), (0.01, 0.3), (0.2, 0.1), (0.2, 0.3)}  # (kl_coef, cliprange)
# insult_ppo under scale=quick with SFT and RM cut to a few steps, 8 answers an update (2 questions
# × 4), three PPO updates (β acts from the second update on: at the first the policy is the
# reference and the KL is 0) and no eval stage.
QUICK = [
    "experiment=insult_ppo", "scale=quick", "sft.max_steps=12", "rm.max_steps=12",
    "ppo.batch_size=2", "ppo.micro_batch_size=4", "ppo.total_updates=3", "ppo.eval_every=3",
    "ppo.eval_prompts=8", "reward.calibrate_samples=8", "pipeline.stages=[sft,rm,ppo]",
]  # fmt: skip
OBJECTIVE = "ppo/objective/rlhf_reward"


def start_sweep(args: list[str], sweep_dir: Path) -> tuple[subprocess.Popen, Path]:
    """`python train.py -m <args>` with its sweep folder at `sweep_dir`, output in a file."""
    sweep_dir.mkdir(parents=True)
    log = sweep_dir.parent / f"{sweep_dir.name}.log"
    command = [
        sys.executable,
        str(PROJECT_ROOT / "train.py"),
        "-m",
        *args,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    with log.open("w") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, text=True, cwd=PROJECT_ROOT,
            env={**os.environ, "HYDRA_FULL_ERROR": ""},
        )  # fmt: skip
    return process, log


@dataclass
class Sweep:
    folder: Path
    returncode: int
    output: str  # stdout and stderr


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sweep]:
    """Two real sweeps sharing one stage cache, run at the same time (two cores, and the cache's
    file lock is part of what is tested): the 2 × 2 grid, and two jobs of which one fails."""
    root = tmp_path_factory.mktemp("sweeps")
    cache = f"pipeline.stage_cache_dir={root / 'stage_cache'}"
    grid = [
        *QUICK,
        "ppo.kl_coef=0.01,0.2",
        "ppo.cliprange=0.1,0.3",
        f"objective={OBJECTIVE}",
        cache,
    ]
    failing = [*QUICK, "ppo.total_updates=2", "reward.model_path=null,no_such_rm", cache]
    started = {"grid": start_sweep(grid, root / "grid")}
    started["with_failure"] = start_sweep(failing, root / "with_failure")
    done = {}
    try:
        for name, (process, log) in started.items():
            returncode = process.wait(timeout=600)
            done[name] = Sweep(root / name, returncode, log.read_text())
    finally:
        for process, _ in started.values():
            if process.poll() is None:  # timed out: leave no sweep running behind the tests
                process.kill()
                process.wait()
    return done


@pytest.fixture(scope="module")
def grid_sweep(sweeps: dict[str, Sweep]) -> Sweep:
    assert sweeps["grid"].returncode == 0, sweeps["grid"].output[-3000:]
    return sweeps["grid"]


def job_record(job_dir: Path) -> dict:
    return json.loads((job_dir / "job.json").read_text())


def stage_info(job_dir: Path, stage: str) -> dict:
    return json.loads((job_dir / stage / "run_info.json").read_text())


def test_grid_sweep_trains_sft_and_rm_once_and_returns_the_objective(sweeps, grid_sweep):
    jobs = compare.job_dirs(grid_sweep.folder)
    assert len(jobs) == 4
    # six jobs in two sweeps running at once; only one trains SFT and RM, the rest reuse them
    outputs = grid_sweep.output + sweeps["with_failure"].output
    assert outputs.count("sft: reusing") == 5 and outputs.count("rm: reusing") == 5
    cache = grid_sweep.folder.parent / "stage_cache"
    assert len(list((cache / "sft").glob("*/COMPLETE"))) == 1
    assert len(list((cache / "rm").glob("*/COMPLETE"))) == 1
    assert len({(job / "sft").resolve() for job in jobs}) == 1
    for job in jobs:
        record = job_record(job)
        assert record["status"] == "complete" and record["wall_seconds"] > 0
        # what train.py returned to the sweeper: the final value of `objective`
        assert record["objective"] == OBJECTIVE
        assert record["objective_value"] == stage_info(job, "ppo")["final_metrics"][OBJECTIVE]
    assert "sweep: 4 of 4 jobs complete" in grid_sweep.output


def test_grid_sweep_jobs_are_one_wandb_group_with_their_own_parameters(grid_sweep):
    sweep_dir = grid_sweep.folder
    assert not list(sweep_dir.glob("*/wandb"))  # every job's W&B files under the sweep folder
    seen = set()
    for job in compare.job_dirs(sweep_dir):
        info = stage_info(job, "ppo")
        run_id = info["tracker_run_id"]
        [run_file] = (sweep_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
        run = read_run(run_file)
        assert run["state"] == "finished" and run["exit_code"] == 0
        assert run["group"] == f"insult_ppo-{sweep_dir.name}" and run["job_type"] == "ppo"
        kl_coef, cliprange = run["config"]["ppo"]["kl_coef"], run["config"]["ppo"]["cliprange"]
        assert run["name"] == f"ppo.cliprange={cliprange},ppo.kl_coef={kl_coef}-ppo"
        assert run["config"]["sweep"]["params"] == {
            "ppo.kl_coef": kl_coef,
            "ppo.cliprange": cliprange,
        }
        assert run["tags"] == ["insult_ppo"]
        final = info["final_metrics"]
        for key in ("ppo/objective/scores", "ppo/objective/kl", "ppo/objective/rlhf_reward"):
            assert run["summary"][key] == pytest.approx(final[key])
        seen.add((kl_coef, cliprange))
    assert seen == GRID


def test_compare_tabulates_and_plots_the_grid(grid_sweep, capsys):
    sweep_dir = grid_sweep.folder
    assert compare.main([str(sweep_dir)]) == 0
    assert "4 jobs (4 complete, 0 running, 0 failed)" in capsys.readouterr().out
    out = sweep_dir / "compare"
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert len(rows) == 4 and {row["status"] for row in rows} == {"complete"}
    for row, job in zip(rows, compare.job_dirs(sweep_dir), strict=True):
        info = stage_info(job, "ppo")
        final, kl_coef = info["final_metrics"], info["config"]["ppo"]["kl_coef"]
        score, kl = float(row["score"]), float(row["kl"])
        assert score == pytest.approx(final["ppo/objective/scores"])
        assert kl == pytest.approx(final["ppo/objective/kl"])
        assert float(row["score_minus_beta_kl"]) == pytest.approx(score - kl_coef * kl)
        assert float(row["score_minus_beta_kl"]) == pytest.approx(
            final["ppo/objective/rlhf_reward"]
        )
        assert int(row["updates"]) == 3 and float(row["response_length"]) > 0
    assert (out / "table.md").read_text().split("## Over-")[0].count("| complete |") == 4
    for plot in ("curves.png", "frontier.png", "heatmap.png"):
        assert (out / plot).stat().st_size > 5000, plot
    jobs = compare.load_sweep(sweep_dir)
    kls, clips, grid = compare.heat_grid(
        [(j.kl_coef, j.cliprange, j.history[-1][compare.SCORE]) for j in jobs]
    )
    assert (kls, clips) == ([0.01, 0.2], [0.1, 0.3]) and not any(
        math.isnan(v) for r in grid for v in r
    )
    # insult_ppo's judge (the rule-based rudeness judge) is the gold reward: PPO's
    # evaluations at updates 0 and 3 carry it, so the over-optimisation report is drawn too
    curves = overopt.load_curves(jobs)
    assert len(curves) == 4 and all(c.steps == [0, 3] for c in curves)
    for curve, job in zip(curves, jobs, strict=True):
        records = read_jsonl(job.folder / "ppo" / "metrics.jsonl")
        evals = {r["step"]: r for r in records if "ppo/eval/judge_score" in r}
        kl = next(r["ppo/objective/kl"] for r in records if r["step"] == 3 and compare.KL in r)
        gain = evals[3]["ppo/eval/judge_score"] - evals[0]["ppo/eval/judge_score"]
        assert curve.gold == pytest.approx([0.0, gain])
        assert curve.d == pytest.approx([0.0, math.sqrt(max(kl, 0.0))])
    section = (out / "table.md").read_text().split("## Over-optimisation")[1]
    assert "Gao fit gold(d) = d·(α − β·ln d)" in section and section.count("| complete |") == 4
    assert (out / "overopt.png").stat().st_size > 5000


def test_a_failing_job_is_reported_and_the_others_keep_their_results(sweeps):
    sweep = sweeps["with_failure"]
    sweep_dir = sweep.folder
    assert sweep.returncode == 1, sweep.output[-3000:]
    failure = [line for line in sweep.output.splitlines() if line.startswith("failed:")]
    assert len(failure) == 1 and "job #1 (reward.model_path=no_such_rm)" in failure[0]
    assert "'no_such_rm' is neither a local folder" in failure[0]
    assert "sweep: 1 of 2 jobs complete" in sweep.output
    good, bad = compare.job_dirs(sweep_dir)
    assert (good / "ppo" / "COMPLETE").is_file() and (good / "ppo" / "model").is_dir()
    assert job_record(bad)["status"] == "failed" and "no_such_rm" in job_record(bad)["error"]
    assert stage_info(bad, "ppo")["status"] == "failed"

    rows = compare.compare(sweep_dir, sweep_dir / "compare")
    assert [row["status"] for row in rows] == ["complete", "failed"]
    assert rows[0]["score"] == pytest.approx(
        stage_info(good, "ppo")["final_metrics"]["ppo/objective/scores"]
    )
    assert rows[1]["score"] is None and "no_such_rm" in rows[1]["error"]
    table = (sweep_dir / "compare" / "table.md").read_text()
    assert "Failed jobs:" in table and "- job 1 (reward.model_path=no_such_rm): error:" in table


# --- presets --------------------------------------------------------------------------------


def test_sweep_and_launcher_presets_compose():
    grid = compose_with_hydra(["sweep=kl_clip_grid"]).hydra
    assert grid.sweeper.params == {"ppo.kl_coef": "0.01,0.05,0.2", "ppo.cliprange": "0.1,0.2"}
    optuna = compose_with_hydra(["sweep=kl_clip_optuna", "launcher=joblib"])
    assert optuna.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert optuna.hydra.sweeper.direction == "maximize" and optuna.objective == "eval/policy/score"
    assert set(optuna.hydra.sweeper.params) == {"ppo.kl_coef", "ppo.cliprange"}
    assert (
        optuna.hydra.launcher._target_.endswith("JoblibLauncher")
        and optuna.hydra.launcher.n_jobs == 2
    )
    slurm = compose_with_hydra(["launcher=slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.partition, slurm.nodes, slurm.gpus_per_node, slurm.timeout_min) == (
        "gpu",
        1,
        1,
        240,
    )


# --- pure helpers and the comparison maths on hand-made files -------------------------------


def test_job_labels_params_and_folder_names():
    overrides = (
        "experiment=insult_ppo",
        "ppo.kl_coef=0.2",
        "eval.num_prompts=8",
        "ppo.cliprange=0.1",
    )
    swept = frozenset({"ppo.kl_coef", "ppo.cliprange"})
    assert job_label(overrides, swept) == "ppo.cliprange=0.1,ppo.kl_coef=0.2"
    assert (
        job_label(overrides, frozenset()) == "eval.num_prompts=8,ppo.cliprange=0.1,ppo.kl_coef=0.2"
    )
    config = {"ppo": {"kl_coef": 0.2, "cliprange": 0.1}, "reward": {"model_path": None}}
    assert job_params((*overrides, "reward.model_path=null"), config) == {
        "ppo.kl_coef": 0.2, "eval.num_prompts": "8", "ppo.cliprange": 0.1, "reward.model_path": None,
    }  # fmt: skip
    assert (
        safe_dirname("pipeline.stage_cache_dir=/tmp/x,a=1") == "pipeline.stage_cache_dir=_tmp_x,a=1"
    )
    assert len(safe_dirname("k=" + "v" * 400)) == 150


def test_penalised_score_pareto_front_and_heat_grid():
    assert compare.penalised_score(1.0, 4.0, 0.05) == pytest.approx(0.8)
    points = [(1.0, 0.5), (2.0, 0.4), (2.0, 0.9), (0.5, 0.1), (3.0, 0.9)]
    assert compare.pareto_front(points) == [(0.5, 0.1), (1.0, 0.5), (2.0, 0.9)]
    kls, clips, grid = compare.heat_grid(
        [(0.2, 0.1, 1.0), (0.01, 0.1, 2.0), (0.01, 0.1, 4.0), (0.01, 0.3, None), (0.2, 0.3, -1.0)]
    )
    assert (kls, clips) == ([0.01, 0.2], [0.1, 0.3])
    assert grid[0][0] == 3.0 and math.isnan(grid[0][1]) and grid[1] == [1.0, -1.0]


def write_job(sweep: Path, name: str, job: dict | None, config: dict, metrics: list[str]) -> Path:
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    if job is not None:
        (folder / "job.json").write_text(json.dumps(job))
    if metrics:
        (folder / "ppo").mkdir()
        (folder / "ppo" / "metrics.jsonl").write_text("\n".join(metrics))
    return folder


def test_compare_reads_running_and_failed_jobs_from_hand_made_files(tmp_path):
    def update(step: int, score: float, kl: float, beta: float) -> str:
        return json.dumps({
            "step": step, "ppo/objective/scores": score, "ppo/objective/kl": kl, "ppo/kl_coef": beta,
            "ppo/objective/entropy": 10.0, "ppo/response_length": 12.0,
        })  # fmt: skip

    pipeline = {"stage": "pipeline", "pipeline": {"stages": ["sft", "rm", "ppo", "eval"]}}
    config = {**pipeline, "ppo": {"kl_coef": 0.1, "cliprange": 0.2, "advantage_estimator": "grpo"}}
    write_job(
        tmp_path, "0_ppo.kl_coef=0.1", {"job": 0, "label": "ppo.kl_coef=0.1", "status": "complete", "wall_seconds": 12.5},
        config, [update(1, 0.0, 0.0, 0.1), update(2, 1.0, 2.0, 0.1), json.dumps({"step": 2, "ppo/eval/score": 3})],
    )  # fmt: skip
    write_job(  # adaptive β: the logged coefficient counts, not the configured one
        tmp_path, "1_ppo.kl_coef=0.5", {"job": 1, "label": "ppo.kl_coef=0.5", "status": "running", "started_unix": 0},
        {"ppo": {"kl_coef": 0.5, "cliprange": 0.2}}, [update(1, 2.0, 1.0, 0.25), '{"step": 2, "ppo/obj'],
    )  # fmt: skip
    write_job(tmp_path, "2_ppo.kl_coef=-1", {"job": 2, "label": "ppo.kl_coef=-1", "status": "failed",
              "error": "error: ppo.kl_coef: must be >= 0, got -1.0", "wall_seconds": 0.1}, {}, [])  # fmt: skip
    write_job(tmp_path, "3_ppo.kl_coef=0.3", None, config, [])  # started, no job.json yet
    # DPO in the same comparison: no PPO updates, its eval stage's final metrics
    dpo = write_job(
        tmp_path, "4_algorithm=dpo", {"job": 4, "label": "algorithm=dpo", "status": "complete"},
        {**config, "pipeline": {"stages": ["sft", "rm", "dpo", "eval"]}}, [],
    )  # fmt: skip
    (dpo / "eval").mkdir()
    final = {"eval/policy/score": 1.5, "eval/kl": 0.25, "eval/win_rate": 0.75}
    (dpo / "eval" / "run_info.json").write_text(json.dumps({"final_metrics": final}))
    rows = compare.compare(tmp_path, tmp_path / "out")
    assert [(r["job"], r["status"], r["updates"], r["algorithm"]) for r in rows] == [
        (0, "complete", 2, "grpo"), (1, "running", 1, None), (2, "failed", 0, None),
        (3, "running", 0, "grpo"), (4, "complete", 0, "dpo"),
    ]  # fmt: skip
    assert (rows[4]["eval_score"], rows[4]["eval_kl"], rows[4]["win_rate"]) == (1.5, 0.25, 0.75)
    assert rows[0]["score_minus_beta_kl"] == pytest.approx(1.0 - 0.1 * 2.0)
    assert rows[1]["score_minus_beta_kl"] == pytest.approx(2.0 - 0.25 * 1.0)
    assert rows[0]["wall_seconds"] == 12.5 and rows[1]["wall_seconds"] > 1e9  # running: so far
    assert (rows[0]["entropy"], rows[0]["response_length"]) == (10.0, 12.0)
    assert rows[2]["error"].endswith("got -1.0") and rows[2]["score"] is None
    table = (tmp_path / "out" / "table.md").read_text()
    assert (
        "| 0 | ppo.kl_coef=0.1 | grpo | complete | 2 | 1 | 2 | 0.8 | 10 | 12 |  |  |  |  |  |  | 12.5 |"
        in table
    )
    assert "- job 2 (ppo.kl_coef=-1): error: ppo.kl_coef: must be >= 0" in table
    assert all(
        (tmp_path / "out" / p).is_file() for p in ("curves.png", "frontier.png", "heatmap.png")
    )


def test_compare_says_what_is_wrong_with_its_folder(tmp_path, capsys):
    assert compare.main([str(tmp_path / "missing")]) == 2
    assert compare.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: {tmp_path / 'missing'} is not a folder",
        f"error: {tmp_path} holds no Hydra job folders (is it a multirun folder?)",
    ]
