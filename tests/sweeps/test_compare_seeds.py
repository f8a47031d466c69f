"""The seed summary of `python -m rlhf.compare`, from hand-written job folders: mean ± std and the
worst seed per setting, the seeds that fail the experiment's goals, the judge's share and the
hacking flag beside the RM's score, seeds.csv, and the W&B summary run read back from its
offline files."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from rlhf.reporting.wandb_files import read_run, run_files
from rlhf.sweeps import compare
from rlhf.sweeps.seeds import lower_is_better
from tests.helpers import compose_with_hydra

NO_TRACKER = {"backend": "none"}


def eval_metrics(score: float, judge: float, hacking: float, goals: dict[str, float] | None):
    """An eval stage's final metrics; with `goals`, `eval/goals_met` and one key per goal."""
    final = {
        "eval/policy/score": score,
        "eval/policy/judge_above_threshold": judge,
        "eval/hacking_suspected": hacking,
        "eval/kl": 0.5,
        "eval/policy/top_phrase_share": 0.1,
        "eval/policy/fluency_nll": 3.0,
    }
    if goals is not None:
        final["eval/goals_met"] = float(all(v >= 1.0 for v in goals.values()))
        final.update({f"eval/goals/{name}": value for name, value in goals.items()})
    return final


def write_job(
    sweep: Path,
    num: int,
    params: dict[str, object],
    final: dict[str, float] | None = None,
    status: str = "complete",
    logger: dict | None = None,
) -> Path:
    """A job folder as a sweep job writes it: job.json, .hydra/config.yaml, ppo/metrics.jsonl,
    ppo/run_info.json and (with `final`) eval/run_info.json holding the eval's final metrics."""
    label = ",".join(f"{key}={value}" for key, value in sorted(params.items()))
    folder = sweep / f"{num}_{label}"
    (folder / ".hydra").mkdir(parents=True)
    ppo = {key.split(".", 1)[1]: value for key, value in params.items()}
    (folder / ".hydra" / "config.yaml").write_text(json.dumps({"ppo": {"cliprange": 0.2, **ppo}}))
    (folder / "job.json").write_text(json.dumps({"job": num, "label": label, "status": status}))
    (folder / "ppo").mkdir()
    update = {"step": 1, "ppo/objective/scores": 0.1 * num, "ppo/objective/kl": 0.2}
    (folder / "ppo" / "metrics.jsonl").write_text(json.dumps(update) + "\n")
    record = {"config": {"logger": logger or NO_TRACKER}, "sweep": {"job": num, "label": label}}
    if status == "complete":
        ppo_final = {"ppo/objective/scores": 0.1 * num, "ppo/objective/kl": 0.2}
        (folder / "ppo" / "run_info.json").write_text(
            json.dumps({**record, "status": "complete", "final_metrics": ppo_final})
        )
    if final is not None:
        (folder / "eval").mkdir()
        info = {**record, "status": "complete", "final_metrics": final}
        (folder / "eval" / "run_info.json").write_text(json.dumps(info))
    return folder


SCORES = [0.6, 0.7, 0.5, 0.1, 0.65]  # seed 3 is the bad one: lowest score, hacking, fails
JUDGE = [0.8, 0.9, 0.7, 0.2, 0.85]


def five_seeds(sweep: Path, logger: dict | None = None) -> None:
    for seed, (score, judge) in enumerate(zip(SCORES, JUDGE, strict=True)):
        goals = {"judge_rude": float(judge >= 0.5), "fluent": 1.0}
        final = eval_metrics(score, judge, float(seed == 3), goals)
        write_job(sweep, seed, {"ppo.seed": seed}, final, logger=logger)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_seed_preset_sweeps_five_ppo_seeds():
    params = compose_with_hydra(["experiment=insult_ppo", "sweep=seeds"]).hydra.sweeper.params
    assert params == {"ppo.seed": "0,1,2,3,4"}


def test_the_direction_rule():
    lower = ["ppo/loss/policy", "sft/test/loss", "eval/kl", "ppo/objective/kl", "ppo/policy/approxkl",
             "eval/policy/fluency_nll", "eval/policy/top_phrase_share", "eval/hacking_suspected",
             "eval/policy/collapsed", "rm/test/ece", "eval/policy/rm_judge_gap"]  # fmt: skip
    higher = ["eval/policy/score", "eval/policy/judge_above_threshold", "ppo/kl_coef",
              "eval/goals_met", "eval/goals/judge_rude", "rm/test/accuracy", "eval/win_rate"]  # fmt: skip
    assert [m for m in lower if not lower_is_better(m)] == []
    assert [m for m in higher if lower_is_better(m)] == []


def test_five_seeds_mean_std_worst_and_the_seed_that_fails_its_goals(tmp_path, capsys):
    five_seeds(tmp_path)
    assert compare.main([str(tmp_path)]) == 0
    out = tmp_path / "compare"
    table = (out / "table.md").read_text(encoding="utf-8")
    assert table in capsys.readouterr().out
    # the job table: the judge's share and the hacking flag beside the RM's score, the goals
    header = table.splitlines()[0]
    assert "| eval score | judge share | hacking | eval KL | win rate | goals |" in header
    assert "| 0.1 | 0.2 | yes | 0.5 |  | failed: judge_rude |" in table  # seed 3
    assert "| 0.6 | 0.8 | no | 0.5 |  | met |" in table  # seed 0
    rows = read_csv(out / "table.csv")
    assert [(r["judge_share"], r["hacking"], r["goals"]) for r in rows][3] == (
        "0.2", "1.0", "failed: judge_rude",
    )  # fmt: skip
    # the seed section: one setting (only seeds vary), mean ± sample std, worst seed
    section = table.split("## Seeds")[1]
    mean, std = statistics.mean(SCORES), statistics.stdev(SCORES)
    score_cell = f"{mean:.4g} ± {std:.3g}, worst 0.1 (seed 3)"
    judge_cell = f"{statistics.mean(JUDGE):.4g} ± {statistics.stdev(JUDGE):.3g}, worst 0.2 (seed 3)"
    hacking_cell = f"0.2 ± {statistics.stdev([0, 0, 0, 1, 0]):.3g}, worst 1 (seed 3)"  # max
    assert f"| (all) | 5 | 0 | {score_cell} | {judge_cell} | {hacking_cell} |" in section
    assert "| 4 of 5 met; failing: 3 |" in section
    assert (
        "Seeds that fail the experiment's goals:\n\n- (all), seed 3 (job 3): judge_rude\n"
        in section
    )
    by_metric = {r["metric"]: r for r in read_csv(out / "seeds.csv")}
    score = by_metric["eval/policy/score"]
    assert (score["better"], score["seeds"], score["worst"], score["worst_seed"]) == (
        "higher", "5", "0.1", "3",
    )  # fmt: skip
    assert float(score["mean"]) == pytest.approx(mean) and float(score["std"]) == pytest.approx(std)
    nll = by_metric["eval/policy/fluency_nll"]
    assert (nll["better"], nll["worst"], nll["worst_seed"]) == ("lower", "3.0", "0")  # ties: first
    assert by_metric["eval/hacking_suspected"]["worst"] == "1.0"
    assert by_metric["eval/goals/judge_rude"]["worst_seed"] == "3"
    assert by_metric["ppo/objective/scores"]["worst_seed"] == "0"  # from ppo/run_info.json


def test_a_job_without_goals_says_nothing_about_goals(tmp_path):
    for seed in range(2):
        write_job(tmp_path, seed, {"ppo.seed": seed}, eval_metrics(0.5 + seed, 0.8, 0.0, None))
    compare.compare(tmp_path, tmp_path / "out")
    table = (tmp_path / "out" / "table.md").read_text(encoding="utf-8")
    section = table.split("## Seeds")[1]
    assert "| goals |" not in section and "Seeds that fail" not in section
    assert "| met |" not in table and "failed:" not in table  # the job rows' goal cells: empty
    assert "| 0.5 | 0.8 | no |" in table  # judge share and hacking still beside the score


def test_a_kl_by_seed_sweep_shows_the_worst_seed_beside_the_mean_per_kl(tmp_path):
    num = 0
    values = {0.02: [0.9, 0.3, 0.8], 0.1: [0.5, 0.55, 0.45]}
    for kl_coef, scores in values.items():
        for seed, score in enumerate(scores):
            running = (kl_coef, seed) == (0.1, 2)
            final = None if running else eval_metrics(score, 0.7, float(score < 0.4), None)
            status = "running" if running else "complete"
            write_job(tmp_path, num, {"ppo.kl_coef": kl_coef, "ppo.seed": seed}, final, status)
            num += 1
    compare.compare(tmp_path, tmp_path / "out")
    section = (tmp_path / "out" / "table.md").read_text(encoding="utf-8").split("## Seeds")[1]
    low = f"{statistics.mean(values[0.02]):.4g} ± {statistics.stdev(values[0.02]):.3g}, worst 0.3 (seed 1)"
    high = f"0.525 ± {statistics.stdev([0.5, 0.55]):.3g}, worst 0.5 (seed 0)"  # running: apart
    assert f"| ppo.kl_coef=0.02 | 3 | 0 | {low} |" in section
    assert f"| ppo.kl_coef=0.1 | 2 | 1 | {high} |" in section
    rows = read_csv(tmp_path / "out" / "seeds.csv")
    worst = {(r["setting"], r["metric"]): r["worst_seed"] for r in rows}
    assert worst[("ppo.kl_coef=0.02", "eval/hacking_suspected")] == "1"
    assert worst[("ppo.kl_coef=0.1", "eval/policy/score")] == "0"


def test_the_wandb_group_gets_the_seed_summary(tmp_path):
    logger = {"backend": "wandb", "mode": "offline", "project": "rlhf-test", "entity": None,
              "group": "insult_ppo-sweep1", "tags": ["insult_ppo"]}  # fmt: skip
    five_seeds(tmp_path, logger)
    write_job(tmp_path, 5, {"ppo.kl_coef": 0.5, "ppo.seed": 0}, eval_metrics(0.4, 0.6, 0.0, None),
              logger=logger)  # fmt: skip
    assert compare.main([str(tmp_path)]) == 0
    runs = [read_run(path) for path in run_files(tmp_path / "wandb")]
    assert sorted(run["name"] for run in runs) == ["ppo.kl_coef=0.5-summary", "summary"]
    assert {(run["group"], run["job_type"], run["project"]) for run in runs} == {
        ("insult_ppo-sweep1", "summary", "rlhf-test")
    }
    seeds_run = next(run for run in runs if run["name"] == "summary")
    summary = seeds_run["summary"]
    assert summary["eval/policy/score/mean"] == pytest.approx(statistics.mean(SCORES))
    assert summary["eval/policy/score/std"] == pytest.approx(statistics.stdev(SCORES))
    assert summary["eval/policy/score/worst"] == pytest.approx(0.1)
    assert summary["eval/hacking_suspected/worst"] == 1
    assert summary["eval/policy/judge_above_threshold/worst_seed"] == "3"
    assert summary["goals/failing_seeds"] == ["3"]
    assert summary["goals/failing/3"] == ["judge_rude"]
    assert seeds_run["config"]["sweep"]["seeds"] == ["0", "1", "2", "3", "4"]
    kl_run = next(run for run in runs if run["name"] != "summary")
    assert kl_run["config"]["ppo"] == {"kl_coef": 0.5}
    assert "goals/failing_seeds" not in kl_run["summary"]  # no goals: nothing said
    # comparing again updates the same runs (the same ids), and --no-wandb writes none
    first = {run["run_id"] for run in runs}
    assert compare.main([str(tmp_path)]) == 0
    files = run_files(tmp_path / "wandb")  # offline-run-<time>-<id>/run-<id>.wandb
    assert len(files) == 4 and {p.stem.removeprefix("run-") for p in files} == first
    count = len(run_files(tmp_path / "wandb"))
    assert compare.main([str(tmp_path), "--no-wandb"]) == 0
    assert len(run_files(tmp_path / "wandb")) == count
