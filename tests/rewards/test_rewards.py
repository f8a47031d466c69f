"""Reward sources and score processing, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.config import ModelConfig, RewardConfig, TinyModelSpec
from rlhf.errors import ConfigError
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.models.scoring import score_token_batch
from rlhf.ppo.core import overlong_penalty
from rlhf.rewards import build_reward
from rlhf.rewards.classifier import ClassifierScorer
from rlhf.rewards.processing import RunningMoments, ScoreProcessor
from rlhf.rewards.reward_model import RewardModelScorer
from rlhf.rewards.sentiment_lexicon import afinn_sentiment, vader_sentiment
from rlhf.rewards.text_rules import char_fraction, keyword_reward
from rlhf.runtime import distributed
from rlhf.session import compose

FUNCTION = "rlhf.rewards.text_rules."


def test_keyword_reward_as_in_the_notebook():
    # 13 characters (+0.5), keywords 开心 学习 成长 (+0.9), base 0.1
    assert keyword_reward([""], ["我今天很开心，学习让我成长"]) == pytest.approx([1.5])
    # 7 characters, keyword 好 (+0.3), 4 words of which 1 distinct: repetition (−0.2)
    assert keyword_reward([""], ["好 好 好 好"]) == pytest.approx([0.2])


def test_sentiment_lexicons_by_hand():
    # VADER: one rated word x gives compound x / sqrt(x^2 + 15); "good" is rated 1.9
    good = 1.9 / math.sqrt(1.9**2 + 15)
    assert vader_sentiment(["This movie was"], [" good."]) == pytest.approx([good], abs=1e-4)
    assert vader_sentiment(["This movie was"], [" on at nine."]) == [0.0]
    # AFINN-165 sums word valences: good +3, terrible -3, loved +3; the prompt counts by default
    text = " good, not terrible, and I loved it."
    assert afinn_sentiment(["This movie was"], [text]) == [3.0]
    assert afinn_sentiment(["I hated"], [" nothing"]) == [-3.0]
    assert afinn_sentiment(["I hated"], [" nothing"], include_prompt=False) == [0.0]


def test_sentiment_ppo_offline_reward_and_judge_are_the_two_lexicons(tmp_path):
    config = compose(["experiment=sentiment_ppo", "reward=sentiment_lexicon"], output_dir=tmp_path)
    reward = build_reward(config.reward, None, None, config.model)
    judge = build_reward(config.eval.judge, None, None, config.model)
    prompts, replies = ["The plot"] * 2, [" was wonderful and fun.", " was dull and bad."]
    assert reward(prompts, replies).tolist() == pytest.approx(vader_sentiment(prompts, replies))
    assert judge(prompts, replies).tolist() == [8.0, -5.0]  # wonderful +4 fun +4; dull -2 bad -3


def test_char_fraction():
    assert char_fraction(["", "", ""], ["好好你", "", "abc"], chars="好") == [2 / 3, 0.0, 0.0]


def test_function_reward_binds_keyword_arguments():
    reward = build_reward(
        RewardConfig(
            kind="function", function={"_target_": FUNCTION + "char_fraction", "chars": "a"}
        ),
        None,
        None,
        ModelConfig(),
    )
    assert reward(["p"], ["aab"]).tolist() == pytest.approx([2 / 3])


def test_unimportable_function_is_a_config_error():
    config = RewardConfig(kind="function", function={"_target_": "no.such.module.fn"})
    with pytest.raises(ConfigError, match="no.such.module.fn"):
        build_reward(config, None, None, ModelConfig())


def test_weighted_sum_of_components():
    config = RewardConfig(
        kind="weighted",
        components=[
            {
                "weight": 2.0,
                "kind": "function",
                "function": {"_target_": FUNCTION + "char_fraction", "chars": "好"},
            },
            {
                "weight": -1.0,
                "kind": "function",
                "function": {"_target_": FUNCTION + "keyword_reward"},
            },
        ],
    )
    reward = build_reward(config, None, None, ModelConfig())
    # "好好" → 2·1.0 − (0.1 + 0.3) = 1.6
    assert reward([""], ["好好"]).tolist() == pytest.approx([1.6])


def test_reward_model_path_is_required():
    with pytest.raises(ConfigError, match="reward.model_path"):
        build_reward(RewardConfig(kind="reward_model"), None, None, ModelConfig())


def test_score_processor_penalty_scale_clip():
    processor = ScoreProcessor(scale=2.0, normalize=False, clip=3.0, missing_eos_penalty=1.0)
    scores = processor(torch.tensor([1.0, 1.0, 5.0]), torch.tensor([True, False, True]))
    assert scores.tolist() == [2.0, 0.0, 3.0]  # (1)·2, (1 − 1)·2, clip(10)


def test_running_normalisation_by_hand():
    processor = ScoreProcessor(1.0, normalize=True, clip=None, missing_eos_penalty=None)
    first = processor(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3, dtype=torch.bool))
    std = math.sqrt(2 / 3)
    assert first.tolist() == pytest.approx([-1 / std, 0.0, 1 / std])
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    moments.update(torch.tensor([5.0]))
    assert (moments.mean, moments.var, moments.count) == pytest.approx((2.75, 2.1875, 4))


def test_overlong_penalty_by_hand():
    penalty = overlong_penalty(torch.tensor([10, 28, 30, 32]), max_length=32, buffer=4, penalty=1.0)
    assert penalty.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0])


def test_reward_model_scores_the_last_real_token_when_pad_equals_eos(tmp_path):
    model, tokenizer = load_model_and_tokenizer(
        ModelConfig(tiny=TinyModelSpec(pad_equals_eos=True)), tmp_path, kind="reward", new_head=True
    )
    eos = tokenizer.eos_token_id
    short = [5, 6, 7, eos]  # a response that ends with EOS, which is also the pad id
    long = [5, 6, 7, 8, 9, eos]
    ids = torch.tensor([short + [eos, eos], long])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    batch = score_token_batch(model, ids, mask)
    alone = score_token_batch(model, torch.tensor([short]), torch.ones(1, 4, dtype=torch.long))
    assert batch[0].item() == pytest.approx(alone.item(), abs=1e-5)
    # transformers' own pooling (last non-pad id) would read position 2, not the EOS at 3
    pooled = model(input_ids=ids, attention_mask=mask).logits[0, 0]
    assert pooled.item() != pytest.approx(alone.item(), abs=1e-4)


def test_scorers_run_on_this_process_device(tmp_path):
    """The reward model and the classifier sit on this process's device (cuda:<local rank> under
    a multi-GPU launch), not on GPU 0 for every process."""
    model, tokenizer = load_model_and_tokenizer(
        ModelConfig(), tmp_path, kind="reward", new_head=True
    )
    model.config.id2label = {0: "NEGATIVE"}
    model.save_pretrained(tmp_path / "classifier")
    tokenizer.save_pretrained(tmp_path / "classifier")
    classifier = ClassifierScorer(str(tmp_path / "classifier"), "NEGATIVE", use_logit=True)
    assert classifier.pipe.device == distributed.device()
    scorer = RewardModelScorer(tmp_path / "classifier", None, ModelConfig())
    assert scorer.model.device == distributed.device()
    assert len(classifier(["q"], ["a"])) == 1 and scorer(["q"], ["a"]).shape == (1,)
