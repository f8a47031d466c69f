"""Pipeline cache keys, tokenizer agreement, reward calibration, evaluation helpers, chat."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlhf.chat import main as chat_main
from rlhf.config import Config, DataConfig, ModelConfig, TinyModelSpec
from rlhf.errors import ConfigError
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.models.tokenizers import check_tokenizers_agree
from rlhf.pipeline import stage_key
from rlhf.rewards.processing import ScoreProcessor, calibration
from rlhf.stages.eval import Answers, distinct_2, model_metrics


def insult_config(**changes) -> Config:
    data = DataConfig(
        train_file="experiments/insult_ppo/data/train.jsonl",
        test_file="experiments/insult_ppo/data/test.jsonl",
    )
    return dataclasses.replace(Config(data=data), **changes)


def test_stage_keys_follow_what_each_stage_depends_on():
    base = insult_config()
    assert stage_key(base, "sft") == stage_key(insult_config(), "sft")  # stable
    ppo_changed = dataclasses.replace(base, ppo=dataclasses.replace(base.ppo, kl_coef=0.3))
    assert stage_key(ppo_changed, "sft") == stage_key(base, "sft")
    assert stage_key(ppo_changed, "rm") == stage_key(base, "rm")
    sft_changed = dataclasses.replace(base, sft=dataclasses.replace(base.sft, learning_rate=1.0))
    assert stage_key(sft_changed, "sft") != stage_key(base, "sft")
    assert stage_key(sft_changed, "rm") == stage_key(base, "rm")
    other_model = dataclasses.replace(base, model=ModelConfig(name_or_path="x/y"))
    assert stage_key(other_model, "rm") != stage_key(base, "rm")
    assert stage_key(dataclasses.replace(base, seed=1), "sft") != stage_key(base, "sft")


def test_tokenizers_that_disagree_are_named(tmp_path):
    _, plain = load_model_and_tokenizer(ModelConfig(), tmp_path)
    _, shared_pad = load_model_and_tokenizer(
        ModelConfig(tiny=TinyModelSpec(pad_equals_eos=True)), tmp_path
    )
    check_tokenizers_agree("policy", plain, {"same": plain})
    with pytest.raises(ConfigError, match="reward model and policy disagree: vocabulary differs"):
        check_tokenizers_agree("policy", plain, {"reward model": shared_pad})
    swapped = load_model_and_tokenizer(ModelConfig(), tmp_path)[1]
    swapped.pad_token = swapped.eos_token
    with pytest.raises(ConfigError, match="pad token differs"):
        check_tokenizers_agree("policy", plain, {"critic": swapped})


def test_ppo_stops_before_training_when_the_reward_model_reads_text_differently(
    warm_train, tmp_path
):
    _, shared_pad = load_model_and_tokenizer(
        ModelConfig(tiny=TinyModelSpec(pad_equals_eos=True)), tmp_path
    )
    model, _ = load_model_and_tokenizer(
        ModelConfig(tiny=TinyModelSpec(pad_equals_eos=True)), tmp_path, kind="reward", new_head=True
    )
    model.save_pretrained(tmp_path / "other_rm")
    shared_pad.save_pretrained(tmp_path / "other_rm")
    result = warm_train(
        ["stage=ppo", "logger=none", f"reward.model_path={tmp_path / 'other_rm'}"], tmp_path / "run"
    )
    assert result.returncode == 2
    assert "disagree: vocabulary differs" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "ppo" / "COMPLETE").exists()


def test_calibration_maps_scores_to_mean_zero_std_one():
    gain, bias = calibration(torch.tensor([1.0, 2.0, 3.0]))
    assert (gain, bias) == pytest.approx((1.0, -2.0))  # std of 1, 2, 3 is 1
    processor = ScoreProcessor(1.0, False, None, None, gain=gain, bias=bias)
    assert processor(torch.tensor([1.0, 3.0]), torch.ones(2, dtype=torch.bool)).tolist() == [
        -1.0,
        1.0,
    ]


def test_distinct_2_and_collapse():
    assert distinct_2(["滚开滚开", "好"]) == pytest.approx(2 / 3)  # 滚开 开滚 滚开: 2 distinct of 3
    answers = Answers(["同一句话"] * 3 + ["另一句"], [4, 4, 4, 3], [True] * 4, [])
    metrics = model_metrics("policy", answers, torch.tensor([1.0, 1.0, 1.0, -1.0]), 0.0, 0.6)
    assert metrics["eval/policy/distinct"] == 0.5 and metrics["eval/policy/collapsed"] == 1.0
    assert metrics["eval/policy/above_threshold"] == 0.75
    assert metrics["eval/policy/length"] == 3.75


def test_chat_answers_scores_and_reports_a_missing_folder(tiny_sft_model, tmp_path, capsys):
    assert chat_main([str(tiny_sft_model), "--prompt", "吃了没？", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()
    model, tokenizer = load_model_and_tokenizer(
        ModelConfig(), tmp_path, kind="reward", new_head=True
    )
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    assert chat_main([str(tmp_path / "rm"), "--prompt", "吃了没？", "--answer", "关你什么事"]) == 0
    float(capsys.readouterr().out)
    assert chat_main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_mixed_cold_start_answers_a_share_with_rejected():
    from datasets import Dataset

    from rlhf.stages.sft import mix_answers

    rows = Dataset.from_dict(
        {"prompt": [f"q{i}" for i in range(8)], "chosen": ["rude"] * 8, "rejected": ["polite"] * 8}
    )
    mixed = mix_answers(rows, rejected_share=0.75, seed=0)
    assert mixed["chosen"].count("polite") == 6 and mixed["prompt"] == rows["prompt"]
    assert mix_answers(rows, 0.75, seed=0)["chosen"] == mixed["chosen"]  # seeded
    assert mix_answers(rows, 0.0, seed=0)["chosen"] == ["rude"] * 8
