"""PPO correctness, round 2: what each fix changes, checked on the tiny model.

The LoRA critic really trains (every tensor the optimiser holds for it moves, the policy adapter
is untouched by the value loss, checkpointing recomputes under the critic adapter); the reward
model reads the tokens the policy produced; the critic starts from the reward model; new value
heads start at zero; policy and critic have their own learning rate and gradient clipping; the
KL controller sees a KL; sampling is seeded per answer and no checkpoint setting changes it; the
learning-rate schedule counts updates; half-precision weights are not trained without a master
copy; every trainable LoRA parameter reaches the optimiser.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch

from rlhf.app import typed_config
from rlhf.config import Config, ModelConfig, RewardConfig, TinyModelSpec
from rlhf.errors import ConfigError, ModelLoadError
from rlhf.models.loading import check_trainable_precision, load_model_and_tokenizer
from rlhf.models.scoring import conversation_token_batch, turn_suffix_ids
from rlhf.ppo import core
from rlhf.ppo.validation import stop_token_id
from rlhf.runtime.generation import (
    SamplingSettings,
    SeededSampling,
    encode_prompts,
    joined_inputs,
    row_seeds,
    sample_responses,
)
from rlhf.stages.ppo import critic_source
from tests.helpers.ppo import make_config, make_trainer, replace_ppo


def snapshot(parameters) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parameters]


def unchanged(before, parameters) -> list[int]:
    """Indices of the tensors that did not move."""
    return [i for i, (a, b) in enumerate(zip(before, parameters, strict=True)) if torch.equal(a, b)]


# --- the LoRA critic trains -------------------------------------------------------------------


def test_every_lora_critic_tensor_moves_in_one_update(tiny_sft_model, tmp_path):
    trainer = make_trainer(make_config(tiny_sft_model, lora=True, critic="lora"), tmp_path)
    critic = trainer.model.critic_parameters()
    policy = trainer.model.policy_parameters()
    assert len(critic) > 2 and len(policy) > 0  # adapter tensors and the head
    before_critic, before_policy = snapshot(critic), snapshot(policy)
    trainer.step()
    assert unchanged(before_critic, critic) == []  # every tensor, not just the head
    assert unchanged(before_policy, policy) == []


def test_the_value_loss_reaches_the_critic_adapter_and_never_the_policy_adapter(
    tiny_sft_model, tmp_path
):
    trainer = make_trainer(make_config(tiny_sft_model, lora=True, critic="lora"), tmp_path)
    model = trainer.model
    with torch.no_grad():  # a trained state: head and lora_B away from their zero start
        for param in model.critic_parameters():
            param.normal_(std=0.1)
    rollout = trainer.sample_and_score(*trainer.next_prompts())
    inputs = joined_inputs(rollout.encoded, rollout.responses, rollout.mask)
    widths = (rollout.encoded.input_ids.shape[1], rollout.responses.shape[1])
    with model.critic_adapter():
        with model.critic_adapter():  # nested, as the loop's critic_forward nests it
            values = model.critic_forward(inputs, *widths)
        assert model.policy.active_adapter == "critic"  # the inner exit restored the outer one
        core.masked_mean(values.square(), rollout.mask).backward()
    assert model.policy.active_adapter == "default"
    critic_grads = [p.grad for p in model.critic_parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in critic_grads)
    assert all(p.grad is None or not p.grad.any() for p in model.policy_parameters())


def test_gradient_checkpointing_recomputes_under_the_critic_adapter(tiny_sft_model, tmp_path):
    grads = []
    for checkpointing in (False, True):
        config = make_config(tiny_sft_model, lora=True, critic="lora")
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, gradient_checkpointing=checkpointing)
        )
        trainer = make_trainer(config, tmp_path / str(checkpointing))
        model = trainer.model
        torch.manual_seed(0)
        with torch.no_grad():  # away from the zero start, so every critic tensor has a gradient
            for param in model.critic_parameters():
                param.normal_(std=0.1)
        tokenizer = trainer.tokenizer
        encoded = encode_prompts(tokenizer, ["你好", "今天天气怎么样？"], None)
        responses = torch.tensor([[10, 11, 12], [13, 14, 15]])
        mask = torch.ones_like(responses, dtype=torch.bool)
        inputs = joined_inputs(encoded, responses, mask)
        from rlhf.ppo.precision import checkpointing_in_eval

        with checkpointing_in_eval(model), model.critic_adapter():
            values = model.critic_forward(inputs, encoded.input_ids.shape[1], 3)
            values.sum().backward()
        grads.append([p.grad.clone() for p in model.critic_parameters()])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, plain, rtol=1e-5, atol=1e-7)
    assert all(g.abs().sum() > 0 for g in grads[1])


# --- what the reward model and the critic see ------------------------------------------------


def tiny_tokenizer(tmp_path, pad_equals_eos=False):
    return load_model_and_tokenizer(
        ModelConfig(tiny=TinyModelSpec(pad_equals_eos=pad_equals_eos)), tmp_path
    )[1]


@pytest.mark.parametrize("pad_equals_eos", [False, True])
def test_a_finished_and_a_truncated_answer_reach_the_rm_as_different_tokens(
    tmp_path, pad_equals_eos
):
    tokenizer = tiny_tokenizer(tmp_path, pad_equals_eos)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = encode_prompts(tokenizer, ["吃了没？"] * 2, None)
    answer = tokenizer("关你什么事", add_special_tokens=False)["input_ids"]
    responses = torch.tensor([answer + [eos], answer + [pad]])
    mask = torch.tensor([[True] * (len(answer) + 1), [True] * len(answer) + [False]])
    ended = torch.tensor([True, False])
    suffix = turn_suffix_ids(tokenizer)
    assert tokenizer.decode(suffix) == "\n"  # ChatML: the newline after <|im_end|>
    ids, attention = conversation_token_batch(
        encoded.input_ids, encoded.attention_mask, responses, mask, ended, eos, suffix, pad
    )
    finished = ids[0][attention[0].bool()].tolist()
    truncated = ids[1][attention[1].bool()].tolist()
    assert finished != truncated and eos not in truncated[-len(answer) :]
    # the finished answer is exactly what the RM was trained on: the rendered conversation
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "吃了没？"}, {"role": "assistant", "content": "关你什么事"}],
        tokenize=False,
    )
    assert finished == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert truncated == finished[: -1 - len(suffix)]  # no end-of-turn, no suffix


def test_an_answer_stopped_at_another_token_gets_the_end_of_turn_added(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    comma = stop_token_id(tokenizer, "，")
    encoded = encode_prompts(tokenizer, ["吃了没？"], None)
    responses = torch.tensor([[comma, pad]])
    mask = torch.tensor([[True, False]])
    ids, attention = conversation_token_batch(
        encoded.input_ids, encoded.attention_mask, responses, mask, torch.tensor([True]),
        eos, [7], pad,
    )  # fmt: skip
    assert ids[0][attention[0].bool()].tolist()[-3:] == [comma, eos, 7]


def test_ppo_scores_the_tokens_it_sampled(tiny_sft_model, tmp_path):
    """A reward that reads tokens gets the rollout's own ids: the answers cut at the limit
    (not ended) carry no stop token."""
    seen = []

    def reward(prompts, completions, tokens=None):
        seen.append(tokens)
        return torch.zeros(len(completions))

    trainer = make_trainer(make_config(tiny_sft_model, max_new_tokens=3), tmp_path, reward=reward)
    rollout = trainer.sample_and_score(*trainer.next_prompts())
    (tokens,) = seen
    assert torch.equal(tokens.response_ids, rollout.responses)
    assert torch.equal(tokens.ended, rollout.ended) and not rollout.ended.all()
    for row in torch.nonzero(~rollout.ended).flatten().tolist():
        assert trainer.stop_token_id not in tokens.response_ids[row][tokens.response_mask[row]]


def test_critic_starts_from_the_reward_model_when_the_reward_is_one(compose_config):
    config = typed_config(compose_config(["stage=ppo", "reward=reward_model"]))
    assert critic_source(config, "runs/rm/model") == ("runs/rm/model", "the reward model")
    function = typed_config(compose_config(["stage=ppo", "reward=char_fraction"]))
    assert critic_source(function, None)[0] == function.model.name_or_path
    chosen = typed_config(compose_config(["stage=ppo", "ppo.critic_init=policy"]))
    assert critic_source(chosen, "rm")[0] == chosen.model.name_or_path
    named = typed_config(compose_config(["stage=ppo", "ppo.critic_model=elsewhere"]))
    assert critic_source(named, "rm")[0] == "elsewhere"
    with pytest.raises(ConfigError, match="ppo.critic_init"):
        typed_config(compose_config(["ppo.critic_init=reward_model", "reward=char_fraction"]))


def test_a_critic_from_a_folder_without_a_score_head_is_refused(tiny_sft_model, tmp_path):
    config = make_config(tiny_sft_model)
    config = dataclasses.replace(
        config,
        reward=RewardConfig(kind="reward_model", model_path=str(tiny_sft_model)),  # a causal LM
        ppo=dataclasses.replace(config.ppo, critic_init="reward_model"),
    )
    with pytest.raises(ModelLoadError, match="no trained score head"):
        make_trainer(config, tmp_path, reward=lambda p, c: torch.zeros(len(c)))


def test_a_critic_from_a_reward_model_keeps_its_trained_head(tiny_sft_model, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rm_dir = tmp_path / "rm"
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_sft_model, num_labels=1)
    with torch.no_grad():
        rm.score.weight.fill_(0.125)
    rm.save_pretrained(rm_dir)
    config = make_config(tiny_sft_model, critic_model=str(rm_dir))
    trainer = make_trainer(config, tmp_path / "run", reward=lambda p, c: torch.zeros(len(c)))
    assert torch.all(trainer.model.critic.score.weight == 0.125)


@pytest.mark.parametrize("critic", ["value_head", "lora"])
def test_new_value_heads_start_at_zero(tiny_sft_model, tmp_path, critic):
    trainer = make_trainer(
        make_config(tiny_sft_model, lora=critic == "lora", critic=critic), tmp_path
    )
    rollout = trainer.sample_and_score(*trainer.next_prompts())
    trainer.forward_passes(rollout)
    assert torch.all(rollout.values == 0)


def test_critic_learning_rate_and_separate_clipping(tiny_sft_model, tmp_path):
    """The policy's step does not depend on the critic's gradient: with vf_coef 1000 the
    critic's gradient norm is huge, and joint clipping would shrink the policy's update."""
    config = make_config(
        tiny_sft_model, ppo_epochs=1, micro_batch_size=8, critic_learning_rate=3e-4
    )
    trainer = make_trainer(config, tmp_path / "a")
    lrs = [group["lr"] for group in trainer.optimizer.param_groups]
    assert lrs == [1e-3, 3e-4]
    moved = []
    for vf_coef in (0.1, 1000.0):
        trainer = make_trainer(replace_ppo(config, vf_coef=vf_coef), tmp_path / str(vf_coef))
        before = snapshot(trainer.model.policy_parameters())
        metrics = trainer.step()
        moved.append(
            [p - b for p, b in zip(trainer.model.policy_parameters(), before, strict=True)]
        )
        assert metrics["ppo/policy/grad_norm"] > 0 and metrics["ppo/val/grad_norm"] > 0
    assert metrics["ppo/val/grad_norm"] > 100 * metrics["ppo/policy/grad_norm"]
    for small, large in zip(*moved, strict=True):
        torch.testing.assert_close(large, small, rtol=1e-4, atol=1e-8)


def test_critic_warmup_does_not_move_the_policy_of_a_shared_value_head(tiny_sft_model, tmp_path):
    trainer = make_trainer(
        make_config(tiny_sft_model, critic="value_head", critic_warmup_updates=2), tmp_path
    )
    prompts = trainer.tokenizer(["你好吗？今天"], return_tensors="pt")
    inputs = {**prompts, "position_ids": torch.arange(prompts["input_ids"].shape[1])[None]}
    width = prompts["input_ids"].shape[1]
    logits_before = trainer.model.policy_forward(inputs, 1, width - 1)[0].detach()
    head_before = snapshot(trainer.model.value_head.parameters())
    trainer.step()
    trainer.step()
    torch.testing.assert_close(
        trainer.model.policy_forward(inputs, 1, width - 1)[0], logits_before, rtol=0, atol=0
    )
    assert unchanged(head_before, list(trainer.model.value_head.parameters())) == []
    trainer.step()  # warm-up over: the policy trains
    assert not torch.equal(trainer.model.policy_forward(inputs, 1, width - 1)[0], logits_before)


# --- KL, sampling, schedule -----------------------------------------------------------------


def test_full_kl_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    ref = torch.log(torch.tensor([[[0.25, 0.5, 0.25]]]))
    # Σ p log p/q = 0.5 ln 2 + 0.25 ln 0.5 = 0.25 ln 2
    assert core.full_kl_from_logits(logits, ref).item() == pytest.approx(0.25 * math.log(2))
    # at temperature 2: p ∝ sqrt(p), q ∝ sqrt(q)
    p = torch.tensor([0.5, 0.25, 0.25]).sqrt()
    q = torch.tensor([0.25, 0.5, 0.25]).sqrt()
    p, q = p / p.sum(), q / q.sum()
    expected = (p * (p / q).log()).sum().item()
    assert core.full_kl_from_logits(logits, ref, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_kl_estimator_full_penalises_the_exact_kl(tiny_sft_model, tmp_path):
    trainer = make_trainer(make_config(tiny_sft_model, kl_estimator="full"), tmp_path)
    trainer.step()  # the policy moves away from the reference
    rollout = trainer.sample_and_score(*trainer.next_prompts())
    trainer.forward_passes(rollout)
    trainer.shape_rewards(rollout)
    inputs = joined_inputs(rollout.encoded, rollout.responses, rollout.mask)
    widths = (rollout.encoded.input_ids.shape[1], rollout.responses.shape[1])
    with torch.no_grad():
        expected = core.full_kl_from_logits(
            trainer.model.policy_forward(inputs, *widths)[0],
            trainer.model.reference_logits(inputs, *widths),
        )
    torch.testing.assert_close(rollout.kl, expected)
    assert (expected[rollout.mask] >= -1e-6).all() and expected[rollout.mask].max() > 0


@pytest.mark.parametrize(
    "estimator,metric", [("k1", "ppo/objective/kl"), ("k2", "ppo/objective/kl_k1"),
                         ("abs", "ppo/objective/kl_k1"), ("full", "ppo/objective/kl")],
)  # fmt: skip
def test_the_adaptive_controller_is_fed_a_kl(tiny_sft_model, tmp_path, estimator, metric):
    """k2 = ½(log p − log q)² and |log p − log q| are penalties, not KL estimates: the
    controller steers the k1 estimate then."""
    config = make_config(tiny_sft_model, adaptive_kl=True, kl_estimator=estimator)
    trainer = make_trainer(config, tmp_path)
    fed = []

    class Recording(type(trainer.kl_controller)):
        def update(self, current_kl, n_samples):
            fed.append(current_kl)
            super().update(current_kl, n_samples)

    trainer.kl_controller.__class__ = Recording
    trainer.step()
    metrics = trainer.step()
    assert fed[-1] == metrics[metric]
    if estimator in ("k2", "abs"):
        assert metrics["ppo/objective/kl"] != metrics["ppo/objective/kl_k1"]


@pytest.mark.parametrize("override", ["ppo.top_k=5", "ppo.top_p=0.9"])
def test_truncated_sampling_is_refused_for_training(compose_config, override):
    with pytest.raises(ConfigError, match="truncated sampling"):
        typed_config(compose_config([override]))


def test_gumbel_sampling_draws_from_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    settings = SamplingSettings(1, temperature=0.7)
    draws = torch.zeros(4)
    for seed in range(4000):
        perturbed = SeededSampling(settings, [seed])(None, logits.clone())
        draws[perturbed.argmax()] += 1
    expected = torch.softmax(logits[0] / 0.7, -1)
    # 4000 draws: standard error of a share ≤ sqrt(0.25 / 4000) = 0.008; allow 4 of them
    torch.testing.assert_close(draws / 4000, expected, atol=0.032, rtol=0)


def test_an_answer_depends_on_its_seed_not_on_its_batch(tiny_sft_model):
    policy, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_sft_model)), ".")
    prompts = ["你是谁？", "吃了没？", "几点了？"]
    seeds = row_seeds(0, "rollout", 1, range(3))
    settings = SamplingSettings(10)
    together = sample_responses(
        policy, encode_prompts(tokenizer, prompts, None), settings, tokenizer.eos_token_id,
        tokenizer.pad_token_id, seeds,
    )  # fmt: skip
    for row in range(3):
        alone = sample_responses(
            policy, encode_prompts(tokenizer, prompts[row : row + 1], None), settings,
            tokenizer.eos_token_id, tokenizer.pad_token_id, seeds[row : row + 1],
        )  # fmt: skip
        length = int(alone[1].sum())
        assert together[0][row, :length].tolist() == alone[0][0, :length].tolist()
    assert len({tuple(r.tolist()) for r in together[0]}) > 1


def test_a_checkpoint_generation_config_does_not_change_sampling(tiny_sft_model):
    policy, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_sft_model)), ".")
    encoded = encode_prompts(tokenizer, ["你是谁？", "吃了没？"], None)
    seeds = [1, 2]

    def sample(settings):
        return sample_responses(
            policy, encoded, settings, tokenizer.eos_token_id, tokenizer.pad_token_id, seeds
        )[0]

    plain = [sample(SamplingSettings(12)), sample(SamplingSettings(12, do_sample=False))]
    policy.generation_config.repetition_penalty = 50.0
    policy.generation_config.no_repeat_ngram_size = 1
    policy.generation_config.suppress_tokens = list(range(5, 400))
    policy.generation_config.top_k = 1
    assert torch.equal(sample(SamplingSettings(12)), plain[0])
    assert torch.equal(sample(SamplingSettings(12, do_sample=False)), plain[1])


def test_the_log_says_how_answers_are_sampled(tiny_sft_model, tmp_path, caplog):
    trainer = make_trainer(make_config(tiny_sft_model, total_updates=1, eval_every=0), tmp_path)
    with caplog.at_level(logging.INFO, logger="rlhf.ppo.trainer"):
        trainer.train()
    line = next(r.message for r in caplog.records if r.message.startswith("sampling:"))
    assert "temperature 1" in line and "no top-k" in line and "'<|im_end|>'" in line


def test_the_linear_schedule_counts_updates_not_optimiser_steps(tiny_sft_model, tmp_path):
    """target_kl stops the epochs early (one of four here), so the optimiser takes a quarter of
    the planned steps; the learning rate still reaches 0 with the last update."""
    # approx-KL (k3) is > 0 once the first mini-batch moved the weights: target_kl=0 stops each
    # update after its first epoch
    config = make_config(tiny_sft_model, lr_scheduler="linear", total_updates=4, target_kl=0.0)
    trainer = make_trainer(config, tmp_path)
    used = [trainer.step()["ppo/lr"] for _ in range(4)]
    assert used == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    assert trainer.scheduler.get_last_lr()[0] == 0.0


def test_the_overlong_penalty_uses_the_drawn_length_limit(tiny_sft_model, tmp_path):
    config = make_config(tiny_sft_model, max_new_tokens=10, length_sampler=[3, 3],
                         min_new_tokens=3, overlong_buffer=2)  # fmt: skip
    trainer = make_trainer(config, tmp_path)
    rollout = trainer.sample_and_score(*trainer.next_prompts())
    assert rollout.max_new_tokens == 3 and rollout.mask.sum(1).max() == 3
    full_length = rollout.mask.sum(1) == 3  # at the drawn limit of 3: the whole penalty
    penalty = (rollout.scores.cpu() - rollout.raw_scores)[full_length]
    torch.testing.assert_close(penalty, torch.full_like(penalty, -1.0))


def test_evaluation_sampling_uses_the_temperature(tiny_sft_model, tmp_path):
    trainer = make_trainer(
        make_config(tiny_sft_model, eval_do_sample=True, temperature=0.3), tmp_path
    )
    settings = trainer.sampling_settings(evaluation=True)
    assert settings.do_sample and settings.temperature == 0.3


@pytest.mark.parametrize(
    "override,key",
    [("ppo.cliprange_low=0", "ppo.cliprange_low"), ("ppo.cliprange_low=1.5", "ppo.cliprange_low"),
     ("ppo.cliprange_high=-0.1", "ppo.cliprange_high"),
     ("ppo.critic_learning_rate=0", "ppo.critic_learning_rate")],
)  # fmt: skip
def test_clip_ranges_and_critic_learning_rate_are_validated(compose_config, override, key):
    with pytest.raises(ConfigError, match=key):
        typed_config(compose_config([override]))


# --- weights that cannot move -----------------------------------------------------------------


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo", "pipeline"])
def test_training_bf16_stored_weights_without_lora_is_refused(compose_config, stage):
    with pytest.raises(ConfigError, match="model.dtype: bfloat16 weights have no float32 master"):
        typed_config(compose_config([f"stage={stage}", "model.dtype=bfloat16"]))
    lora = typed_config(compose_config([f"stage={stage}", "model.dtype=bfloat16",
                                        "model.lora.enabled=true"]))  # fmt: skip
    assert lora.model.dtype == "bfloat16"
    assert typed_config(compose_config(["stage=eval", "model.dtype=bfloat16"]))


def test_half_precision_trainable_weights_are_caught_at_load_time(tmp_path):
    model, _ = load_model_and_tokenizer(ModelConfig(dtype="bfloat16"), tmp_path)
    with pytest.raises(ConfigError, match="half-precision tensors"):
        check_trainable_precision(model, "the policy")
    check_trainable_precision(model.requires_grad_(False), "a frozen model")  # nothing to train


def test_qwen_config_keeps_float32_master_weights(compose_config):
    config = typed_config(compose_config(["model=qwen2_5_0_5b", "stage=ppo"]))
    assert config.model.dtype == "float32" and config.model.mixed_precision == "bf16"


@pytest.mark.parametrize(
    "lora_changes",
    [{"bias": "all"}, {"bias": "lora_only"}, {"modules_to_save": ["lm_head"]}],
    ids=["bias-all", "bias-lora-only", "modules-to-save"],
)
def test_every_trainable_lora_parameter_reaches_the_optimiser(
    tiny_sft_model, tmp_path, lora_changes
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with_biases = tmp_path / "with_biases"  # the tiny Llama has no biases: give it some
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_sft_model, attention_bias=True, mlp_bias=True)
    model.save_pretrained(with_biases)
    AutoTokenizer.from_pretrained(tiny_sft_model).save_pretrained(with_biases)
    config = make_config(with_biases, lora=True, critic="separate")
    lora = dataclasses.replace(config.model.lora, **lora_changes)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, lora=lora))
    trainer = make_trainer(config, tmp_path)
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    trainable = [n for n, p in trainer.model.policy.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainer.model.policy.named_parameters()
               if p.requires_grad and id(p) not in held]  # fmt: skip
    assert not missing and any("lora_" not in n for n in trainable)
    policy = trainer.model.policy_parameters()
    before = snapshot(policy)
    trainer.step()
    assert unchanged(before, policy) == []


def test_shared_biases_with_a_lora_critic_are_refused(compose_config):
    with pytest.raises(ConfigError, match="model.lora.bias"):
        typed_config(compose_config(["ppo.critic=lora", "model.lora.enabled=true",
                                     "model.lora.bias=all"]))  # fmt: skip


# --- small things -------------------------------------------------------------------------------


def test_prompt_only_data_without_a_test_file_says_it_split_one_off(caplog):
    from rlhf.config import ColumnMap, DataConfig
    from rlhf.data.loading import load_preference_data

    cfg = DataConfig(train_file="experiments/keyword_ppo/prompts.jsonl",
                     columns=ColumnMap(prompt="query", chosen=None, rejected=None))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="rlhf.data"):
        data = load_preference_data(cfg)
    assert f"{len(data.train)} train, {len(data.test)} test" in caplog.text
    assert "10 % of the 50 rows" in caplog.text


def test_checkpoint_every_zero_writes_no_checkpoint_and_still_saves_the_model(
    warm_train, tiny_sft_model, tmp_path
):
    result = warm_train(
        ["stage=ppo", f"model.name_or_path={tiny_sft_model}", "reward=char_fraction",
         "logger=none", "ppo.total_updates=2", "ppo.eval_every=1", "ppo.eval_prompts=4",
         "ppo.checkpoint.every=0", "ppo.checkpoint.hand_on=last"],  # best needs checkpoints
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "ppo" / "checkpoints").exists()
    assert not (tmp_path / "ppo" / "best_checkpoint.json").exists()
    assert (tmp_path / "ppo" / "model" / "model.safetensors").is_file()


def test_float64_is_a_model_dtype_for_exactness_tests():
    assert Config(model=ModelConfig(dtype="float64")).model.dtype == "float64"
