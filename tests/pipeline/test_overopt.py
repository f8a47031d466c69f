"""The reward over-optimisation lab (issue 18) on hand-made numbers and files: label noise,
RM ensembles, the RM's calibration report, the Gao fit, the outlier-seed rule, and the
comparison's frontier figure and table from hand-written run folders (as real runs write them).
The real sweep is experiments/overopt/REPORT.md; the experiment files compose in
tests/config/test_first_hour.py."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from rlhf.app import typed_config
from rlhf.config import ModelConfig, RewardConfig, RMStageConfig
from rlhf.data.label_noise import flipped_indices, with_label_noise
from rlhf.errors import ConfigError
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.reporting.rm_report import (
    expected_calibration_error,
    reliability_table,
    score_spread,
    sigmoid,
)
from rlhf.rewards import build_reward
from rlhf.rewards.ensemble import aggregate, member_folders
from rlhf.rewards.reward_model import RewardModelScorer
from rlhf.stages.rm import RmStage
from rlhf.sweeps import compare, overopt
from tests.helpers import compose_with_hydra
from tests.helpers.ppo import make_config, make_trainer

# --- rm.label_noise -------------------------------------------------------------------------


def pairs(n: int) -> Dataset:
    return Dataset.from_dict({
        "prompt": [f"q{i}" for i in range(n)], "chosen": [f"good{i}" for i in range(n)],
        "rejected": [f"bad{i}" for i in range(n)],
    })  # fmt: skip


@pytest.mark.parametrize(("n", "share", "expected"), [(10, 0.3, 3), (7, 0.5, 4), (20, 0.0, 0)])
def test_label_noise_swaps_exactly_the_stated_share(n, share, expected):
    noisy, flipped = with_label_noise(pairs(n), share, seed=5)
    swapped = [i for i, row in enumerate(noisy) if row["chosen"].startswith("bad")]
    assert flipped == expected and len(swapped) == expected  # round(share · n), not about it
    assert swapped == flipped_indices(n, share, 5)  # the seeded draw, reproducible
    for i, row in enumerate(noisy):  # a swapped pair is the same two answers, the other way
        assert {row["chosen"], row["rejected"]} == {f"good{i}", f"bad{i}"}
        assert row["prompt"] == f"q{i}"
    assert flipped_indices(100, 0.25, 1) != flipped_indices(100, 0.25, 2)


def test_the_rm_stage_swaps_before_drawing_hard_negatives(compose_config):
    config = typed_config(compose_config(["rm.label_noise=0.5", "rm.echo_negatives=0.5"]))
    stage = RmStage()
    rows = stage.training_rows(config, pairs(10))
    assert stage.flipped_pairs == 5 and len(rows) == 15  # 10 pairs + 5 echo negatives
    assert sum(row["chosen"].startswith("bad") for row in rows) >= 5
    with pytest.raises(ConfigError, match=r"rm.label_noise: must be in \[0, 1\], got 1.5"):
        RMStageConfig(label_noise=1.5)


# --- reward.kind: ensemble ------------------------------------------------------------------


def test_ensemble_aggregates_by_hand():
    scores = torch.tensor([[1.0, 2.0, -1.0], [3.0, 0.0, -1.0]], dtype=torch.float64)  # (M=2, N=3)
    assert aggregate(scores, "mean", 1.0).tolist() == [2.0, 1.0, -1.0]
    assert aggregate(scores, "min", 1.0).tolist() == [1.0, 0.0, -1.0]
    # population std over the two members: [1, 1, 0]
    assert aggregate(scores, "mean_minus_std", 0.5).tolist() == [1.5, 0.5, -1.0]
    three = torch.tensor([[0.0], [3.0], [6.0]], dtype=torch.float64)  # std √6
    assert aggregate(three, "mean_minus_std", 1.0).item() == pytest.approx(3.0 - math.sqrt(6))


def tiny_rms(folders: list[Path], cache: Path) -> None:
    """Tiny RMs that differ only in their score heads, drawn from seeds 0, 1, ...: members that
    disagree."""
    model, tokenizer = load_model_and_tokenizer(ModelConfig(), cache, kind="reward", new_head=True)
    for seed, folder in enumerate(folders):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=generator))
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def test_an_ensemble_of_disagreeing_members_scores_min_below_mean(tmp_path, offline_environment):
    tiny_rms([tmp_path / "sweep" / f"{seed}_rm.seed={seed}" / "rm" / "model" for seed in (0, 1)], offline_environment)  # fmt: skip
    prompts, answers = ["怎样才能存下更多钱？"] * 4, ["滚。", "好。", "可以先做个预算。", "我。"]
    members = sorted((tmp_path / "sweep").glob("*/rm/model"))
    each = torch.stack(
        [RewardModelScorer(m, None, ModelConfig())(prompts, answers) for m in members]
    )
    assert (each.max(0).values - each.min(0).values > 1e-3).all()  # they disagree on every answer
    pattern = [str(tmp_path / "sweep" / "*" / "rm" / "model")]
    scored = {
        how: build_reward(
            RewardConfig(kind="ensemble", members=pattern, aggregate=how), None, None, ModelConfig()
        )(prompts, answers)  # fmt: skip
        for how in ("mean", "min")
    }
    # the members' float32 scores, halved and summed in one order: to float32 rounding
    assert scored["mean"].tolist() == pytest.approx(each.mean(0).tolist(), abs=1e-6)
    assert scored["min"].tolist() == each.min(0).values.tolist()
    assert (scored["min"] < scored["mean"]).all()


def test_ppo_trains_against_the_worst_case_of_an_ensemble(
    tmp_path, tiny_sft_model, offline_environment
):
    members = [tmp_path / f"rm_{seed}" for seed in (0, 1)]
    tiny_rms(members, offline_environment)
    config = make_config(tiny_sft_model, batch_size=4, micro_batch_size=4)
    config.reward = RewardConfig(
        kind="ensemble", members=[str(m) for m in members], aggregate="min"
    )
    trainer = make_trainer(config, tmp_path / "ppo")
    seen = {}  # what the trainer hands its reward: texts and the token ids (the RM's fast path)
    ensemble = trainer.reward_fn
    trainer.reward_fn = lambda *batch: seen.setdefault("batch", batch) and ensemble(*batch)
    rollout = trainer.sample_and_score(*trainer.next_prompts())
    scorers = [RewardModelScorer(m, None, ModelConfig()) for m in members]
    each = torch.stack([score(*seen["batch"]) for score in scorers])
    assert (each[0] != each[1]).all()  # the members disagree on every answer
    # the rollout's scores are the members' minimum on its own answers, answer by answer
    assert rollout.raw_scores.cpu().tolist() == each.min(0).values.tolist()
    trainer.reward_fn = ensemble
    before = [p.detach().clone() for p in trainer.model.policy_parameters()]
    metrics = trainer.step()
    after = list(trainer.model.policy_parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert math.isfinite(metrics["ppo/loss/policy"])


def test_ensemble_members_are_found_checked_and_counted_once(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name / "rm" / "model").mkdir(parents=True)
        (tmp_path / name / "rm" / "model" / "config.json").write_text("{}")
    os.symlink(tmp_path / "a" / "rm", tmp_path / "c_reused")  # a job that reused a cached RM
    (tmp_path / "c").mkdir()
    os.symlink(tmp_path / "a" / "rm", tmp_path / "c" / "rm")
    found = member_folders([str(tmp_path / "*" / "rm" / "model"), str(tmp_path / "a/rm/model")], "reward.members")  # fmt: skip
    assert found == [tmp_path / "a/rm/model", tmp_path / "b/rm/model"]
    (tmp_path / "empty" / "rm" / "model").mkdir(parents=True)
    cases = {
        r"reward.members\[0\]: folder .*/nowhere does not exist": [str(tmp_path / "nowhere")],
        r"reward.members\[1\]: pattern '.*x\*' matches no folder": [str(tmp_path / "a/rm/model"), str(tmp_path / "x*")],
        r"reward.members\[0\]: .*empty/rm/model is not a reward model folder": [str(tmp_path / "empty/rm/model")],
    }  # fmt: skip
    for message, members in cases.items():
        with pytest.raises(ConfigError, match=message):
            member_folders(members, "reward.members")
    with pytest.raises(ConfigError, match="reward.members: needs at least one reward-model folder"):
        RewardConfig(kind="ensemble")
    with pytest.raises(ConfigError, match="reward.aggregate: 'max' is not one of mean, min"):
        RewardConfig(kind="ensemble", members=["x"], aggregate="max")


# --- the RM report: calibration -------------------------------------------------------------


def test_reliability_table_and_ece_by_hand():
    # confidences sigmoid(|m|): m=0.2 → 0.5498, m=-0.4 → 0.5987 (wrong), m=3 → 0.9526, m=0 → 0.5
    margins = [0.2, -0.4, 3.0, 0.0]
    table = reliability_table(margins, num_bins=5)  # bins of width 0.1 over [0.5, 1]
    assert [row.count for row in table] == [3, 0, 0, 0, 1]
    low = table[0]
    assert low.confidence == pytest.approx((sigmoid(0.2) + sigmoid(0.4) + 0.5) / 3)
    assert low.accuracy == pytest.approx((1 + 0 + 0.5) / 3)  # the tie counts half
    assert (table[4].confidence, table[4].accuracy) == (pytest.approx(sigmoid(3.0)), 1.0)
    assert math.isnan(table[1].confidence)
    expected = 3 / 4 * abs(0.5 - (0.549834 + 0.598688 + 0.5) / 3) + 1 / 4 * abs(1 - 0.952574)
    assert expected_calibration_error(table) == pytest.approx(expected, abs=1e-6)
    assert expected_calibration_error(reliability_table([])) == 0.0
    assert sigmoid(-800.0) == 0.0 and sigmoid(800.0) == 1.0  # no overflow


# --- the Gao fit, the seed rule -------------------------------------------------------------


def test_score_spread_by_hand():
    spread = score_spread([4.0, 1.0, 3.0, 2.0, 10.0])
    # squared deviations from 4: 9 4 1 0 36, sum 50 over n − 1 = 4; p10 at rank 0.4, p90 at 3.6
    expected = {"n": 5, "mean": 4.0, "std": math.sqrt(12.5), "min": 1.0, "p10": 1.4,
                "median": 3.0, "p90": 4.0 + 0.6 * 6.0, "max": 10.0}  # fmt: skip
    assert spread == pytest.approx(expected, abs=1e-12)


def test_gao_fit_recovers_known_alpha_and_beta():
    alpha, beta = 1.2, 0.5
    truth = overopt.GaoFit(alpha, beta, 0)
    points = [(d, truth(d)) for d in (0.0, 0.3, 0.8, 1.5, 2.5, 4.0, 6.0)]
    fit = overopt.fit_gao(points)
    assert (fit.alpha, fit.beta) == (pytest.approx(alpha, abs=1e-9), pytest.approx(beta, abs=1e-9))
    assert fit.points == 6  # d = 0 carries nothing (d·ln d → 0)
    assert fit.peak == pytest.approx(math.exp(alpha / beta - 1))  # d* = e^1.4 = 4.055
    assert fit.peak_gold == pytest.approx(fit(fit.peak)) and fit(fit.peak) > fit(3.0)
    # noisy points: the fit stays close (noise ±0.02 alternating on 12 points)
    noisy = [(d, y + (0.02 if i % 2 else -0.02)) for i, (d, y) in enumerate(points * 2)]
    fit = overopt.fit_gao(noisy)
    assert abs(fit.alpha - alpha) < 0.05 and abs(fit.beta - beta) < 0.05
    rising = overopt.fit_gao([(d, 0.5 * d) for d in (1.0, 2.0, 3.0)])
    assert rising.beta == pytest.approx(0.0, abs=1e-9) or rising.peak is None
    assert overopt.fit_gao([(0.0, 0.0), (1.0, 2.0)]) is None  # one point at d > 0
    assert overopt.fit_gao([(2.0, 1.0), (2.0, 1.1)]) is None  # one d: d and d·ln d collinear


def test_outlier_seed_rule_on_hand_made_finals():
    # median 1.1, MAD 0.1: z(5.0) = 0.6745·3.9/0.1 = 26.3 > 3.5; z(1.0) = −0.67
    assert overopt.outlier_seeds({"0": 1.0, "1": 1.1, "2": 5.0}) == {"2"}
    assert overopt.modified_z_scores([1.0, 1.1, 5.0])[0] == pytest.approx(-0.6745)
    assert overopt.outlier_seeds({"0": 1.0, "1": 1.1, "2": 1.2}) == set()
    assert overopt.outlier_seeds({"0": 1.0, "1": 9.0}) == set()  # two seeds: no majority
    # MAD 0: mean absolute deviation (4/3) × 1.2533 scales it, z(5) = 4 / 1.671 = 2.39: kept
    assert overopt.modified_z_scores([1.0, 1.0, 5.0])[2] == pytest.approx(2.394, abs=1e-3)
    assert overopt.outlier_seeds({"0": 2.0, "1": 2.0, "2": 2.0, "3": 2.0}) == set()
    assert overopt.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert overopt.split_seed("ppo.kl_coef=0.1,ppo.seed=2") == ("ppo.kl_coef=0.1", "2")
    assert overopt.split_seed("seed=3,x=[1,2]") == ("x=[1,2]", "3")
    assert overopt.split_seed("ppo.kl_coef=0.1") == ("ppo.kl_coef=0.1", None)


# --- the comparison of a sweep, from hand-written run folders -------------------------------

ALPHA, BETA = 1.0, 0.6  # the gold curve the hand-written jobs follow (peak at d* = e^(2/3))


def write_overopt_job(sweep: Path, num: int, kl_coef: float, seed: int, kls: list[float], gold_shift=0.0, status="complete") -> Path:  # fmt: skip
    """A job folder as a real overopt job writes it: job.json, .hydra/config.yaml and
    ppo/metrics.jsonl with updates (KL) and evaluations (proxy, gold) every 2 updates."""
    label = f"ppo.kl_coef={kl_coef},ppo.seed={seed}"
    folder = sweep / f"{num}_{label}"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(json.dumps({"ppo": {"kl_coef": kl_coef, "cliprange": 0.2, "seed": seed}}))  # fmt: skip
    (folder / "job.json").write_text(json.dumps({"job": num, "label": label, "status": status}))
    records = [{"step": 0, "ppo/eval/score": -1.0, "ppo/eval/judge_score": 0.25}]
    for update, kl in enumerate(kls, start=1):
        records.append(
            {"step": update, "ppo/objective/scores": 0.1 * update, "ppo/objective/kl": kl}
        )
        if update % 2 == 0:
            d = math.sqrt(kl)
            gold = d * (ALPHA - BETA * math.log(d)) + (gold_shift if update == len(kls) else 0)
            records.append({"step": update, "ppo/eval/score": -1.0 + 2 * d, "ppo/eval/judge_score": 0.25 + gold})  # fmt: skip
    (folder / "ppo").mkdir()
    (folder / "ppo" / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    return folder


def test_compare_draws_the_frontier_and_fits_gold_from_run_files(tmp_path, capsys):
    kls = {0.0: [0.5, 1.0, 2.0, 4.0, 6.0, 9.0], 0.1: [0.2, 0.4, 0.6, 0.9, 1.2, 1.5]}
    num = 0
    for kl_coef, path in kls.items():
        for seed in (0, 1, 2):
            shift = 3.0 if (kl_coef, seed) == (0.0, 2) else 0.01 * seed  # seed 2 of β=0 is off
            status = "running" if (kl_coef, seed) == (0.1, 2) else "complete"
            run = path[:4] if status == "running" else path  # still going: 4 updates so far
            write_overopt_job(tmp_path, num, kl_coef, seed, run, gold_shift=shift, status=status)
            num += 1
    assert compare.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "compare" / "table.md").read_text()
    assert "## Over-optimisation" in printed and table in printed
    curves = overopt.load_curves(compare.load_sweep(tmp_path))
    assert len(curves) == 6 and curves[5].steps == [0, 2, 4] and curves[5].status == "running"
    assert curves[0].d == pytest.approx([0.0, 1.0, 2.0, 3.0])  # √KL of updates 2, 4, 6
    assert curves[0].proxy == pytest.approx([0.0, 2.0, 4.0, 6.0])  # gains over update 0
    fit = overopt.fit_of([c for c in curves if c.job != 2])  # without the off seed: close
    assert (fit.alpha, fit.beta) == (pytest.approx(ALPHA, abs=0.01), pytest.approx(BETA, abs=0.01))
    alpha = re.search(r"α = ([-\d.]+), β = ([-\d.]+); gold peaks at √KL d\* = exp\(α/β − 1\) = ([-\d.]+)", table)  # fmt: skip
    fitted = overopt.fit_of(curves)
    assert [float(x) for x in alpha.groups()] == pytest.approx([fitted.alpha, fitted.beta, fitted.peak], rel=1e-3)  # fmt: skip
    assert "| ppo.kl_coef=0.0 | 3 | 0 |" in table and "| 2 |\n" in table  # seed 2 flagged
    assert "| ppo.kl_coef=0.1 | 2 | 1 |" in table  # the running seed counted apart
    assert table.count("outlier seed |") == 1 and "| 2 | ppo.kl_coef=0.0 | 2 | complete |" in table
    assert "| 5 | ppo.kl_coef=0.1 | 2 | running | 4 |" in table
    assert (tmp_path / "compare" / "overopt.png").stat().st_size > 20000


def test_overopt_experiments_and_sweep_preset_compose(compose_config):
    quick = compose_with_hydra(["experiment=overopt", "scale=quick", "sweep=overopt"])
    sweep = quick.hydra.sweeper
    assert sweep.params == {"ppo.kl_coef": "0.0,0.02,0.1,0.5", "ppo.seed": "0,1,2"}
    proxy = typed_config(compose_config(["experiment=overopt"]))
    assert (proxy.rm.max_train_samples, proxy.rm.label_noise, proxy.rm.seed) == (48, 0.25, 0)
    assert proxy.eval.judge.kind == "reward_model"  # the gold reward = eval.judge
    assert proxy.eval.judge.model_path == "outputs/overopt_gold/rm/model"
    gold = typed_config(compose_config(["experiment=overopt_gold"]))
    assert gold.stage == "rm" and (gold.rm.max_train_samples, gold.rm.label_noise) == (None, 0.0)
    assert gold.model == proxy.model and gold.data == proxy.data
    ensemble = typed_config(compose_config(["experiment=overopt_ensemble", "scale=quick"]))
    assert ensemble.reward.kind == "ensemble" and ensemble.reward.aggregate == "min"
    assert ensemble.reward.members == ["outputs/overopt_proxies/*/rm/model"]
    assert ensemble.model.name_or_path == "tiny"
    proxies = compose_with_hydra(["experiment=overopt_proxies", "scale=quick"])
    assert proxies.hydra.sweeper.params == {"rm.seed": "0,1,2,3"} and proxies.stage == "rm"
    # quick runs are kept apart from full ones: the lab's fixed folders are named on the command
    # line for them (experiments/overopt/run.sh)
    assert proxies.hydra.sweep.dir.startswith("outputs/quick/overopt_proxies/")
