"""Every experiment file runs, shrunk to the tiny model and a few steps, through train.py."""

from __future__ import annotations

import json

from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf.config import TinyModelSpec
from rlhf.tiny import tiny_model_dir
from tests.conftest import error_lines, run_train

SHRINK = ["model=tiny", "logger=none", "ppo.total_updates=2", "ppo.eval_every=1"]


def final_metrics(stage_dir):
    return json.loads((stage_dir / "run_info.json").read_text())["final_metrics"]


def test_keyword_ppo_runs_and_plots(tmp_path):
    result = run_train(["experiment=keyword_ppo", *SHRINK], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in (tmp_path / "ppo" / "plots").iterdir()} >= {"scores.png", "losses.png"}
    # base 0.1 + length bonus 0.5 at least for most 10–50 character answers, plus keywords
    assert final_metrics(tmp_path / "ppo")["ppo/objective/scores"] >= 0.1


def test_sentiment_ppo_runs_with_a_local_classifier(tmp_path, offline_environment):
    base = tiny_model_dir(TinyModelSpec(), offline_environment)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}
    )
    tokenizer = AutoTokenizer.from_pretrained(base)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    classifier.save_pretrained(tmp_path / "classifier")
    tokenizer.save_pretrained(tmp_path / "classifier")
    result = run_train(
        ["experiment=sentiment_ppo", *SHRINK, f"reward.classifier={tmp_path / 'classifier'}"],
        tmp_path / "run",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ppo/objective/scores" in final_metrics(tmp_path / "run" / "ppo")


def test_insult_ppo_quick_runs_sft_rm_and_ppo_from_the_sft_model(tmp_path):
    result = run_train(
        ["experiment=insult_ppo_quick", "logger=none", "ppo.total_updates=2", "ppo.eval_every=0"],
        tmp_path,
    )
    for stage in ("sft", "rm", "ppo"):
        assert (tmp_path / stage / "COMPLETE").is_file(), result.stderr[-3000:]
    ppo_config = json.loads((tmp_path / "ppo" / "run_info.json").read_text())
    assert ppo_config["status"] == "complete"
    assert ppo_config["policy_start"] == str(tmp_path / "sft" / "model")
    # evaluation is the next stage to land; until then the pipeline says so and exits 2
    assert result.returncode == 2
    assert error_lines(result) == [
        "error: stage 'eval' is not implemented yet (evaluation lands with the pipeline issue)"
    ]
