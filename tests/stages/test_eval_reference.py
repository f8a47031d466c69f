"""Fluency under an untrained model (by hand on a uniform model, batched against one at a time,
any tokenizer), the base model the eval stage finds through the run records, and one eval-stage
run on the tiny model with the data's answers as a reference row, fluency and goals."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch

from rlhf.config import Config, EvalConfig, ModelConfig, TinyModelSpec
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.reporting.fluency import nll_per_character, nll_per_character_batch
from rlhf.rewards.rudeness import rudeness_judge
from rlhf.runs.folders import RunPaths
from rlhf.stages.eval import base_model

PROMPTS = ["怎么欣赏昆曲？\n", "长沙夏天热不热？\n", "", "外汇是什么？\n"]
REPLIES = ["别问我，昆曲，别问我。", "自己查去。", "懒得说", ""]


class Uniform(torch.nn.Module):
    """A causal LM whose every next-token distribution is uniform: NLL log(V) per token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids, use_cache, logits_to_keep):
        return SimpleNamespace(logits=torch.zeros(input_ids.shape[0], logits_to_keep, self.vocab))


class NoStartToken:
    """A tokenizer without BOS or EOS (the tiny one's vocabulary otherwise)."""

    bos_token_id = eos_token_id = None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny(offline_environment):
    model, tokenizer = load_model_and_tokenizer(ModelConfig(), offline_environment)
    return model.eval(), tokenizer


def reply_tokens(tokenizer, prompt: str, reply: str) -> int:
    count = len(tokenizer(prompt + reply, add_special_tokens=False)["input_ids"])
    return count - len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def test_uniform_model_costs_log_vocab_per_reply_token(tiny):
    _, tokenizer = tiny
    vocab = len(tokenizer)
    values = nll_per_character_batch(Uniform(vocab), tokenizer, PROMPTS, REPLIES, batch_size=3)
    expected = [
        reply_tokens(tokenizer, p, r) * math.log(vocab) / len(r) if r else 0.0
        for p, r in zip(PROMPTS, REPLIES, strict=True)
    ]
    assert values == pytest.approx(expected, rel=1e-6)
    # no start token and no prompt: the reply's first token has no context and is not scored
    bare = nll_per_character_batch(Uniform(vocab), NoStartToken(tokenizer), [""], ["懒得说"])
    assert bare == pytest.approx(
        [(reply_tokens(tokenizer, "", "懒得说") - 1) * math.log(vocab) / 3]
    )


def test_batched_nll_equals_one_at_a_time_on_the_tiny_model(tiny):
    model, tokenizer = tiny  # its tokenizer has no <bos> text token: its own BOS id is used
    batched = nll_per_character_batch(model, tokenizer, PROMPTS, REPLIES, batch_size=3)
    single = [
        nll_per_character(model, tokenizer, p, r) for p, r in zip(PROMPTS, REPLIES, strict=True)
    ]
    assert batched == pytest.approx(single, rel=1e-5)
    assert all(value > 0 for value in batched[:3]) and batched[3] == 0.0
    no_start = nll_per_character_batch(model, NoStartToken(tokenizer), PROMPTS, REPLIES)
    assert all(math.isfinite(value) for value in no_start)


def write_record(stage_dir, model: ModelConfig) -> None:
    stage_dir.mkdir(parents=True)
    record = {"config": {"model": dataclasses.asdict(model)}}
    (stage_dir / "run_info.json").write_text(json.dumps(record), encoding="utf-8")


def test_base_model_is_found_through_the_run_records(tmp_path, caplog):
    paths = RunPaths(tmp_path)
    spec = TinyModelSpec(hidden_size=48)
    write_record(tmp_path / "sft", ModelConfig(name_or_path="tiny", tiny=spec))
    write_record(tmp_path / "ppo", ModelConfig(name_or_path=str(tmp_path / "sft" / "model")))
    on_sft = Config(model=ModelConfig(name_or_path=str(tmp_path / "sft" / "model")))
    found = base_model(on_sft, paths)
    assert found.name_or_path == "tiny" and found.tiny.hidden_size == 48
    on_ppo = Config(model=ModelConfig(name_or_path=str(tmp_path / "ppo" / "model")))
    assert base_model(on_ppo, paths).tiny.hidden_size == 48  # two hops
    configured = Config(model=ModelConfig(name_or_path="tiny"))
    assert base_model(configured, paths) is configured.model
    orphan = Config(model=ModelConfig(name_or_path=str(tmp_path / "rm" / "model")))
    with caplog.at_level(logging.WARNING):
        assert base_model(orphan, paths) is orphan.model
    assert "fluency is measured under" in caplog.text and "run record" in caplog.text


GOALS = (
    "eval.goals={"
    "judge_rude:{metric:eval/policy/judge_above_threshold,min:0.9,"
    "relative_to:eval/data_rude/judge_above_threshold},"
    "top_phrase:{metric:eval/policy/top_phrase_share,max:1},"
    "fluency:{metric:eval/policy/fluency_nll,max:1.25,relative_to:eval/data_rude/fluency_nll},"
    "length:{metric:eval/policy/length,min:0.5,max:2,relative_to:eval/baseline/length}}"
)


def samples(path) -> list[list[str]]:
    """The cells of eval/samples.md's rows."""
    lines = path.read_text(encoding="utf-8").splitlines()[2:]
    return [line.strip("| ").split(" | ") for line in lines]


def test_eval_stage_measures_the_data_row_fluency_and_goals(
    warm_train, tiny_sft_model, tiny_rm, tmp_path, offline_environment
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "sft").symlink_to(tiny_sft_model.parent)  # as a pipeline's SFT stage, with its record
    result = warm_train(
        ["stage=eval", "logger=none", "eval/judge=rudeness_zh",
         f"model.name_or_path={run / 'sft' / 'model'}", f"eval.policy_model={tiny_sft_model}",
         f"eval.reward_model={tiny_rm}", "eval.num_prompts=6", "eval.max_new_tokens=8", GOALS],
        run,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((run / "eval" / "run_info.json").read_text())
    metrics = info["final_metrics"]
    goal_keys = {f"eval/goals/{name}" for name in ("judge_rude", "top_phrase", "fluency", "length")}
    assert set(metrics) == set(EvalConfig.metric_needs()) | goal_keys | {"eval/goals_met"}

    rows = samples(run / "eval" / "samples.md")
    questions, data = [r[0] for r in rows], [r[1] for r in rows]
    assert len(rows) == 6 and all(data)
    base, tokenizer = load_model_and_tokenizer(ModelConfig(), offline_environment)  # untrained
    contexts = [q + "\n" for q in questions]
    nll = nll_per_character_batch(base.eval(), tokenizer, contexts, data)
    assert metrics["eval/data_rude/fluency_nll"] == pytest.approx(sum(nll) / 6, rel=1e-5)
    sft, _ = load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_sft_model)), "unused")
    trained = nll_per_character_batch(sft.eval(), tokenizer, contexts, data)
    assert abs(sum(trained) / 6 - metrics["eval/data_rude/fluency_nll"]) > 0.01  # not the SFT's

    lengths = [len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in data]
    assert metrics["eval/data_rude/length"] == pytest.approx(sum(lengths) / 6)
    judged = rudeness_judge(questions, data)
    assert metrics["eval/data_rude/judge_above_threshold"] == pytest.approx(
        sum(j > 0 for j in judged) / 6
    )
    assert info["top_phrases"]["data_rude"]["share"] == metrics["eval/data_rude/top_phrase_share"]
    assert info["top_phrases"]["policy"]["share"] == metrics["eval/policy/top_phrase_share"]

    goals = json.loads((run / "eval" / "goals.json").read_text(encoding="utf-8"))
    assert [g["name"] for g in goals] == ["judge_rude", "top_phrase", "fluency", "length"]
    ratio = metrics["eval/policy/length"] / metrics["eval/baseline/length"]
    assert goals[3]["passed"] and ratio == 1.0  # the same model on both sides
    bound = 0.9 * metrics["eval/data_rude/judge_above_threshold"]
    assert goals[0]["passed"] == (metrics["eval/policy/judge_above_threshold"] >= bound)
    output = result.stdout + result.stderr
    for goal in goals:
        assert metrics[f"eval/goals/{goal['name']}"] == float(goal["passed"])
        assert (f"goal {goal['name']} not met" in output) == (not goal["passed"])
    assert metrics["eval/goals_met"] == float(all(g["passed"] for g in goals))
