"""The sft and rm stages end to end through train.py, as a user runs them (tiny model, offline)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config import ModelConfig
from rlhf.models.loading import resolve_model_dir
from rlhf.reporting.wandb_files import read_run, run_files
from tests.helpers import read_jsonl


@pytest.fixture(scope="module")
def sft_run(warm_train, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sft_run")
    result = warm_train(["stage=sft", "model=tiny", "data=insult_zh"], run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_sft_trains_saves_and_records(sft_run):
    stage = sft_run / "sft"
    assert (stage / "COMPLETE").is_file()
    assert (stage / "model" / "model.safetensors").is_file()
    assert (stage / "model" / "tokenizer.json").is_file()
    losses = [
        r["sft/train/loss"] for r in read_jsonl(stage / "metrics.jsonl") if "sft/train/loss" in r
    ]
    # it learns. One run, because the spread leaves a wide margin: the last logged loss below
    # the first, per sft.seed on a 2-core AMD EPYC, seeds 42 (this run),0,1,2: 0.337 0.347 0.345
    # 0.343 lower with 1 torch thread, the same with 2 (7.26–7.28 → 6.93 each)
    assert len(losses) >= 10 and losses[-1] < losses[0] - 0.2
    info = json.loads((stage / "run_info.json").read_text())
    assert info["status"] == "complete" and info["seed"] == 42
    assert info["overrides"] == ["stage=sft", "model=tiny", "data=insult_zh"]
    assert info["packages"]["trl"] and info["git"]["commit"]
    assert len(info["data_fingerprint"]) == 64
    assert info["config"]["data"]["name"] == "insult_zh"
    assert info["final_metrics"]["sft/train_rows"] == 600


def test_sft_run_is_in_an_offline_wandb_run(sft_run):
    (run_file,) = run_files(sft_run / "wandb")
    run = read_run(run_file)
    assert run["state"] == "finished"
    assert run["summary"]["sft/test/loss"] > 0
    assert run["config"]["stage"] == "sft" and run["config"]["run_info"]["seed"] == 42


def test_rm_reaches_pairwise_accuracy_on_the_test_split(warm_train, tmp_path):
    """One run, because the spread leaves wide margins. Per rm.seed on a 2-core AMD EPYC, seeds
    42 (this run),0,1,2, identical with 1 and 2 torch threads: accuracy 1.0 1.0 1.0 1.0,
    short_accuracy 0.45 0.50 0.45 0.47, short_above_threshold 0.98 0.98 0.95 0.98, length_corr
    −0.90 −0.91 −0.89 −0.89."""
    result = warm_train(["stage=rm", "model=tiny", "data=insult_zh"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "rm" / "run_info.json").read_text())
    metrics = info["final_metrics"]
    assert metrics["rm/test/accuracy"] >= 0.9
    assert metrics["rm/test/chosen_score"] > metrics["rm/test/rejected_score"]
    assert (tmp_path / "rm" / "model" / "model.safetensors").is_file()
    # trained on short rude against long polite answers only, it is won by brevity: most short,
    # not rude answers score above its threshold (measured 0.97; chosen beats them 0.45)
    assert metrics["rm/test/short_above_threshold"] > 0.8
    assert metrics["rm/test/short_accuracy"] < 0.7
    assert metrics["rm/test/length_corr"] < -0.5  # shorter answers score higher
    # the RM report: calibration of sigmoid(score difference) over the test pairs (119 of the
    # 120 fit the token limits)
    report = (tmp_path / "rm" / "report.md").read_text()
    bins = [line for line in report.splitlines() if line.startswith("| [")]
    assert len(bins) == 10 and sum(int(line.split(" | ")[1]) for line in bins) == 119
    assert (
        0 <= metrics["rm/test/ece"] <= 1 and f"rm/test/ece: {metrics['rm/test/ece']:.4g}" in report
    )
    assert metrics["rm/flipped_pairs"] == 0
    assert info["label_noise"] == {"share": 0.0, "flipped_pairs": 0}


def test_brevity_negatives_teach_the_rm_that_short_is_not_rude(warm_train, tmp_path):
    """One run, because the spread leaves wide margins. Per rm.seed on a 2-core AMD EPYC, seeds
    42 (this run),0,1,2, identical with 1 and 2 torch threads: accuracy 0.975 0.992 0.983 0.975,
    short_accuracy 0.98 0.98 0.99 0.98, short_above_threshold 0.20 0.19 0.16 0.14."""
    negatives = ["rm.curt_negatives=0.5", "rm.truncated_negatives=0.5", "rm.max_train_samples=300"]
    result = warm_train(["stage=rm", "model=tiny", "data=insult_zh", *negatives], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "rm" / "run_info.json").read_text())["final_metrics"]
    assert metrics["rm/train_rows"] == 300 + 150 + 150
    assert metrics["rm/test/accuracy"] >= 0.9
    assert metrics["rm/test/short_accuracy"] > 0.9  # chosen now beats the short answers
    assert metrics["rm/test/short_above_threshold"] < 0.35  # measured 0.20; without: 0.97


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_lora_sft_saves_merged_weights_that_moved(warm_train, tmp_path, precision):
    # bf16 on a CPU: transformers refused it ("Your setup doesn't support bf16/gpu") until the
    # stage told it the run is on the CPU
    overrides = ["model.lora.enabled=true", "model.lora.top_layers=1", "sft.max_eval_samples=5"]
    overrides.append(f"model.mixed_precision={precision}")
    result = warm_train(["stage=sft", *overrides, "sft.max_steps=3", "logger=none"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    tuned = load_file(tmp_path / "sft" / "model" / "model.safetensors")
    assert not any("lora" in name for name in tuned)  # adapters folded into the weights
    base_dir = resolve_model_dir(ModelConfig(), os.environ["RLHF_CACHE"])
    base = load_file(base_dir / "model.safetensors")
    info = json.loads((tmp_path / "sft" / "run_info.json").read_text())
    top, bottom = "model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[top], tuned[top])  # LoRA on the top layer's q_proj changed it
    assert torch.equal(base[bottom], tuned[bottom])  # below top_layers: untouched
    untouched = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(base[untouched], tuned[untouched])  # frozen base elsewhere
    assert info["final_metrics"]["sft/test_rows"] == 5
    assert info["config"]["model"]["lora"]["enabled"] is True
