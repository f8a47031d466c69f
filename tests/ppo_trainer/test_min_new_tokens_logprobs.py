"""With ppo.min_new_tokens the sampler forbids the stop token at the first response positions;
the log-probs the loss and the KL see (old, new, reference, the entropy, kl_estimator=full) are
those of that restricted distribution, the one the answers were drawn from.

The sampler's own distribution is read from Hugging Face's `generate` (output_scores: the logits
after its processors, min_new_tokens then temperature). The model runs in float64; generate
hands its logits over in float32. Tolerances, derived (u = 2⁻⁵³, s = scaled logits, V = vocabulary):
- a log-softmax of V terms is within b = u·(3·max|s| + V + 2) of exact (tests/ppo_maths/test_ppo_logprobs.py);
- the policy's scaled logits on the two sides (generate's KV cache and float32 scores, the
  trainer's one float64 pass) differ by δ, measured and checked to be float32 rounding
  (≤ 2⁻²³·max|s|); log p_y = s_y − logsumexp(s) moves by at most 2δ: ε = 2δ + 2b per log-prob;
- KL and entropy sum V terms p·(log p − log q) and p·log p: ε·(1 + max|term's log|) plus
  (V + 1)·u of the sum of their absolute values.
Restricted and whole-vocabulary log-probs differ by −log(1 − p(stop)): up to ~7e-3 here, where
ε is ~1e-6 (the whole-vocabulary log-probs fail the comparison at every restricted position).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    MinNewTokensLengthLogitsProcessor,
    TemperatureLogitsWarper,
)

from rlhf.errors import ConfigError
from rlhf.ppo import core
from rlhf.ppo.logprobs import full_kl, stop_suppressed
from rlhf.ppo.rollout import Responses, Rollout
from rlhf.runtime.generation import encode_prompts, joined_inputs, neutral_generation_config
from rlhf.runtime.masks import truncate_after_stop
from tests.helpers.ppo import PROMPTS, make_config, make_trainer

U = 2.0**-53  # unit roundoff of float64
FIRST, TEMPERATURE, MAX_NEW = 3, 0.7, 8


def log_softmax_bound(scaled: torch.Tensor) -> float:
    finite = scaled[torch.isfinite(scaled)]
    return U * (3 * finite.abs().max().item() + scaled.shape[-1] + 2)


def processors(prompt_width: int, stop: int) -> LogitsProcessorList:
    """What generate applies with min_new_tokens and temperature (checked against its scores)."""
    return LogitsProcessorList(
        [
            MinNewTokensLengthLogitsProcessor(prompt_width, FIRST, stop),
            TemperatureLogitsWarper(TEMPERATURE),
        ]
    )


def processed(logits: torch.Tensor, sequences: torch.Tensor, prompt_width: int, stop: int):
    """(B, Tr, V) raw logits → the sampler's scores at each step, (B, Tr, V)."""
    steps = processors(prompt_width, stop)
    return torch.stack(
        [
            steps(sequences[:, : prompt_width + t], logits[:, t].clone())
            for t in range(logits.shape[1])
        ],
        dim=1,
    )


def masked_sum_bound(terms: torch.Tensor) -> torch.Tensor:
    """(V + 1)·u·Σ|terms| over the last dimension (recursive summation)."""
    return (terms.shape[-1] + 1) * U * terms.abs().sum(-1)


@pytest.fixture
def trainer_and_rollout(tiny_sft_model, tmp_path):
    """A float64 trainer with min_new_tokens, its policy moved off the reference (so the KL is
    not 0), and a rollout sampled by generate with the sampler's processors and scores."""
    config = make_config(
        tiny_sft_model, min_new_tokens=FIRST, max_new_tokens=MAX_NEW, temperature=TEMPERATURE,
        kl_estimator="full", batch_size=8, micro_batch_size=8, ppo_epochs=1,
    )  # fmt: skip
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype="float64"))
    trainer = make_trainer(config, tmp_path)
    trainer.begin_update()
    policy, tokenizer, stop = trainer.model.policy, trainer.tokenizer, trainer.stop_token_id
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.05)
    prompts = PROMPTS[:8]
    encoded = encode_prompts(tokenizer, prompts, trainer.system_prompt)
    torch.manual_seed(0)
    with torch.no_grad(), neutral_generation_config(policy, stop, tokenizer.pad_token_id):
        out = policy.generate(
            input_ids=encoded.input_ids, attention_mask=encoded.attention_mask,
            max_new_tokens=MAX_NEW, min_new_tokens=FIRST, do_sample=True,
            temperature=TEMPERATURE, top_k=0, top_p=1.0, output_scores=True,
            output_logits=True, return_dict_in_generate=True, use_cache=True,
        )  # fmt: skip
    width = encoded.input_ids.shape[1]
    responses = out.sequences[:, width:]
    scores, raw = torch.stack(out.scores, dim=1), torch.stack(out.logits, dim=1)
    # the processors named here are generate's, nothing more (no top-k or other truncation)
    assert torch.equal(processed(raw, out.sequences, width, stop), scores)
    mask, ended = truncate_after_stop(responses, stop)
    responses = responses.masked_fill(~mask, tokenizer.pad_token_id)
    batch = Responses(prompts, encoded, responses, mask, ended, [""] * 8, MAX_NEW)
    rollout = Rollout.of(batch, torch.zeros(8), torch.zeros(8))
    return trainer, rollout, scores, raw


def test_log_probs_kl_and_entropy_are_those_of_the_sampler(trainer_and_rollout):
    trainer, rollout, scores, _ = trainer_and_rollout
    mask, tokens, stop = rollout.mask, rollout.responses, trainer.stop_token_id
    width = rollout.encoded.input_ids.shape[1]
    assert (tokens[:, :FIRST] != stop).all() and mask[:, :FIRST].all()  # as generate forbids
    trainer.forward_passes(rollout)

    # the distribution each token was drawn from (generate's float32 scores, taken exactly)
    sampler = torch.log_softmax(scores.double(), dim=-1)
    expected = sampler.gather(-1, tokens[..., None]).squeeze(-1)
    inputs = joined_inputs(rollout.encoded, tokens, mask)
    with torch.no_grad():
        logits = trainer.model.policy_forward(inputs, width, tokens.shape[1])[0]
        ref_logits = trainer.model.reference_logits(inputs, width, tokens.shape[1])
    scaled, kept = logits / TEMPERATURE, torch.isfinite(sampler)
    # generate rounds the logits to float32, then divides: within 2⁻²³ of their size
    delta = (scaled - scores.double())[kept & mask[..., None]].abs().max().item()
    assert delta <= 2.0**-23 * scaled[mask].abs().max().item()
    epsilon = 2 * delta + 2 * log_softmax_bound(scores.double())
    torch.testing.assert_close(rollout.logprobs[mask], expected[mask], atol=epsilon, rtol=0)

    # the whole-vocabulary log-probs differ where the stop token is forbidden, only there
    whole = torch.log_softmax(scaled, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert (whole - expected)[:, :FIRST].abs().max() > 100 * epsilon
    later = mask.clone()
    later[:, :FIRST] = False
    torch.testing.assert_close(whole[later], expected[later], atol=epsilon, rtol=0)

    # the reference: the same restriction (the KL is between the sampling distributions)
    ref_sampler = torch.log_softmax(processed(ref_logits, inputs["input_ids"], width, stop), -1)
    assert torch.isinf(ref_sampler[:, :FIRST, stop]).all()
    ref_expected = ref_sampler.gather(-1, tokens[..., None]).squeeze(-1)
    b_ref = log_softmax_bound(ref_logits / TEMPERATURE)
    torch.testing.assert_close(
        rollout.ref_logprobs[mask], ref_expected[mask], atol=2 * b_ref, rtol=0
    )

    # kl_estimator=full: Σ p·(log p − log q) over the tokens the sampler could draw
    log_ratio = torch.where(kept, sampler - ref_sampler, 0.0)
    terms = torch.where(kept, sampler.exp() * log_ratio, 0.0)
    kl = terms.sum(-1)
    kl_bound = (epsilon + 2 * b_ref) * (1 + log_ratio.abs().amax(-1)) + masked_sum_bound(terms)
    assert (rollout.kl_full - kl)[mask].abs().le(kl_bound[mask]).all()
    assert kl[mask].min() > 0  # the policy was moved off the reference
    whole_kl = core.full_kl_from_logits(logits, ref_logits, TEMPERATURE)
    assert (whole_kl - kl)[:, :FIRST].abs().max() > 100 * kl_bound.max()

    # the entropy the loss and the logs see (one mini-batch, before any step: these weights)
    trainer.shape_rewards(rollout)
    trainer.estimate_advantages(rollout)
    stats = trainer.optimise(rollout)
    entropy_terms = torch.where(kept, sampler.exp() * sampler, 0.0)
    entropy = -entropy_terms.sum(-1)
    logged = core.masked_mean(entropy, rollout.loss_mask).item()
    entropy_bound = epsilon * (1 + sampler[kept].abs().max()) + masked_sum_bound(entropy_terms)
    assert stats["policy/entropy"] == pytest.approx(logged, abs=entropy_bound.max().item())


def test_an_answer_holding_the_stop_token_where_sampling_forbids_it_is_refused(
    trainer_and_rollout,
):
    """Answers given from outside (PPOSession.step) must be drawable by the configured sampler:
    a stop token among the first min_new_tokens has log-probability −inf there."""
    trainer, rollout, _, _ = trainer_and_rollout
    rollout.responses[0, 1] = trainer.stop_token_id
    rollout.mask[0, 2:] = False
    with pytest.raises(ConfigError, match=r"^ppo\.min_new_tokens=3: .*stop token") as error:
        trainer.forward_passes(rollout)
    assert "\n" not in str(error.value)


def test_the_kept_set_and_the_exact_kl_by_hand():
    mask = torch.tensor([[True, True, True], [True, False, False]])
    keep = stop_suppressed(mask, 4, stop_token_id=2, min_new_tokens=2)
    assert keep.shape == (2, 3, 4) and keep.sum() == 2 * 3 * 4 - 3  # padding keeps every token
    assert not keep[0, 0, 2] and not keep[0, 1, 2] and keep[0, 2, 2] and keep[1, 1, 2]
    assert stop_suppressed(mask, 4, 2, 0) is None
    # p = (0.5, 0.25, ·, 0.25), q = (0.25, 0.5, ·, 0.25) once token 2 is cut: 0.25·ln 2
    logits = torch.tensor([0.4, 0.2, 0.2, 0.2], dtype=torch.float64).log().expand(2, 3, 4)
    ref = torch.tensor([0.2, 0.4, 0.2, 0.2], dtype=torch.float64).log().expand(2, 3, 4)
    kl = full_kl(logits, ref, keep=keep, chunk_rows=4)
    assert kl[0, 0].item() == pytest.approx(0.25 * math.log(2), rel=1e-12)
    torch.testing.assert_close(kl[0, 2], core.full_kl_from_logits(logits, ref)[0, 2])
    torch.testing.assert_close(
        full_kl(logits, ref, 0.5), core.full_kl_from_logits(logits, ref, 0.5)
    )
