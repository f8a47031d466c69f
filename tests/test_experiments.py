"""Every experiment file runs, shrunk to the tiny model and a few steps, through train.py."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf.config import TinyModelSpec
from rlhf.models.tiny import tiny_model_dir

SHRINK = ["model=tiny", "logger=none", "ppo.total_updates=2", "ppo.eval_every=1"]


def final_metrics(stage_dir):
    return json.loads((stage_dir / "run_info.json").read_text())["final_metrics"]


def test_keyword_ppo_runs_and_plots(warm_train, tmp_path):
    result = warm_train(["experiment=keyword_ppo", *SHRINK], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in (tmp_path / "ppo" / "plots").iterdir()} >= {"scores.png", "losses.png"}
    # base 0.1 + length bonus 0.5 at least for most 10–50 character answers, plus keywords
    assert final_metrics(tmp_path / "ppo")["ppo/objective/scores"] >= 0.1


# keyword_ppo_quick's learning is asserted through its loop (tests/test_session.py): the loop
# runs this experiment's config on the trainer's own phases, which test_session shows make the
# same update as train.py's loop.


def test_sentiment_ppo_runs_with_a_local_classifier(warm_train, tmp_path, offline_environment):
    base = tiny_model_dir(TinyModelSpec(), offline_environment)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}
    )
    tokenizer = AutoTokenizer.from_pretrained(base)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    classifier.save_pretrained(tmp_path / "classifier")
    tokenizer.save_pretrained(tmp_path / "classifier")
    result = warm_train(
        ["experiment=sentiment_ppo", *SHRINK, f"reward.classifier={tmp_path / 'classifier'}"],
        tmp_path / "run",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ppo/objective/scores" in final_metrics(tmp_path / "run" / "ppo")


@pytest.fixture(scope="module")
def insult_stage_cache(tmp_path_factory):
    """One stage cache for the insult_* quick runs of this module: SFT and RM are trained by the
    first run that needs them and reused by the rest (as a user's runs share outputs/)."""
    return tmp_path_factory.mktemp("insult_stage_cache")


def test_insult_ppo_quick_runs_the_pipeline_and_reuses_sft_and_rm(
    warm_train, tmp_path, insult_stage_cache
):
    cache = insult_stage_cache
    quick = ["experiment=insult_ppo_quick", "logger=none", f"pipeline.stage_cache_dir={cache}"]
    first = warm_train(quick, tmp_path / "first")
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "first"
    for stage in ("sft", "rm", "ppo", "eval"):
        assert (run / stage / "COMPLETE").is_file(), stage
    assert (run / "sft").is_symlink() and (run / "sft").resolve().parent == cache / "sft"
    ppo_info = json.loads((run / "ppo" / "run_info.json").read_text())
    assert ppo_info["policy_start"] == str(cache / "sft" / (run / "sft").resolve().name / "model")
    # the record's config is the one PPO ran with: it names the SFT model it started from
    assert ppo_info["config"]["model"]["name_or_path"] == ppo_info["policy_start"]
    eval_info = json.loads((run / "eval" / "run_info.json").read_text())
    assert eval_info["config"]["model"]["name_or_path"] == ppo_info["policy_start"]
    assert "reward_calibration" in ppo_info  # on for insult_ppo
    # the RM's spread on the SFT policy's own samples, the very scores the calibration maps to
    # mean 0 and std 1: mean = −bias / gain, std = 1 / gain
    calibrated = json.loads((run / "ppo" / "reward_calibration.json").read_text())
    spread, gain = calibrated["start_scores"], calibrated["gain"]
    assert spread["n"] == 16  # reward.calibrate_samples of insult_ppo_quick
    assert spread["std"] == pytest.approx(1 / gain, rel=1e-5)
    assert spread["mean"] == pytest.approx(-calibrated["bias"] / gain, rel=1e-5, abs=1e-6)
    order = [spread[k] for k in ("min", "p10", "median", "p90", "max")]
    assert order == sorted(order) and order[0] < order[-1]
    start_logged = json.loads((run / "ppo" / "metrics.jsonl").read_text().splitlines()[0])
    assert start_logged["ppo/start/score_std"] == pytest.approx(spread["std"])
    metrics = final_metrics(run / "eval")
    assert 0 <= metrics["eval/win_rate"] <= 1 and metrics["eval/num_prompts"] == 100
    samples = (run / "eval" / "samples.md").read_text()
    assert (
        "| question | data's answer | baseline answer | score | judge |" in samples
    )  # the rudeness judge
    assert 0 <= metrics["eval/policy/judge_above_threshold"] <= 1
    suspected = metrics["eval/hacking_suspected"] == 1.0
    summary = "eval: reward hacking suspected" if suspected else "eval: no reward hacking"
    assert summary in first.stdout + first.stderr  # the pipeline's closing summary
    ppo_records = (run / "ppo" / "metrics.jsonl").read_text()
    assert '"ppo/eval/judge_score"' in ppo_records  # eval_every 2, judge_in_ppo on

    # a PPO setting changed: SFT and RM are reused (one PPO update is enough to show it)
    second = warm_train(
        [*quick, "ppo.kl_coef=0.2", "ppo.total_updates=1", "ppo.eval_every=0",
         "pipeline.stages=[sft,rm,ppo]"],
        tmp_path / "second",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "sft: reusing" in log and "rm: reusing" in log
    assert (tmp_path / "second" / "sft").resolve() == (run / "sft").resolve()

    third = warm_train(
        [*quick, "sft.learning_rate=1e-3", "pipeline.stages=[sft]"], tmp_path / "third"
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert "sft: reusing" not in third.stdout + third.stderr  # an SFT setting changed: retrained
    assert (tmp_path / "third" / "sft").resolve() != (run / "sft").resolve()


def test_insult_grpo_and_dpo_quick_reuse_sft_and_rm_and_are_evaluated_like_ppo(
    warm_train, tmp_path, insult_stage_cache
):
    cache = insult_stage_cache
    common = ["logger=none", f"pipeline.stage_cache_dir={cache}", "eval.num_prompts=20"]
    grpo = warm_train(["experiment=insult_grpo_quick", *common], tmp_path / "grpo")
    assert grpo.returncode == 0, grpo.stderr[-3000:]
    ppo_info = json.loads((tmp_path / "grpo" / "ppo" / "run_info.json").read_text())
    assert ppo_info["config"]["algorithm"] == "grpo"
    assert ppo_info["config"]["ppo"]["critic"] == "none"
    assert not (tmp_path / "grpo" / "ppo" / "critic").exists()
    records = (tmp_path / "grpo" / "ppo" / "metrics.jsonl").read_text().splitlines()
    assert any("ppo/loss/kl" in json.loads(line) for line in records)  # GRPO's KL term

    dpo = warm_train(["experiment=insult_dpo_quick", *common], tmp_path / "dpo")
    assert dpo.returncode == 0, dpo.stderr[-3000:]
    log = dpo.stdout + dpo.stderr
    assert "sft: reusing" in log and "rm: reusing" in log  # insult_ppo's, through the cache
    run = tmp_path / "dpo"
    assert not (run / "ppo").exists()
    for stage in ("sft", "rm", "dpo", "eval"):
        assert (run / stage / "COMPLETE").is_file(), stage
    dpo_info = json.loads((run / "dpo" / "run_info.json").read_text())
    sft_model = str((run / "sft").resolve() / "model")
    assert dpo_info["config"]["model"]["name_or_path"] == sft_model  # DPO starts from SFT
    assert dpo_info["config"]["algorithm"] == "dpo"
    eval_info = json.loads((run / "eval" / "run_info.json").read_text())
    assert eval_info["config"]["model"]["name_or_path"] == sft_model  # the baseline: SFT
    # the same evaluation as PPO's: the same metrics, DPO's policy against the SFT model
    assert final_metrics(run / "eval").keys() == final_metrics(tmp_path / "grpo" / "eval").keys()
    assert final_metrics(run / "eval")["eval/kl"] != 0
