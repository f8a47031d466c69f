"""Phases 1–2 of a PPO update: draw this update's prompts, sample answers to them (KV cache,
cut after the first stop token, one seed per answer), and score them: the reward source's raw
scores, then the missing-EOS penalty, scale, normalisation, clip and the soft overlong penalty.

Words: to *sample* is to draw answers from the policy (`sample`, with `SamplingSettings`); to
*score* is to ask the reward source about them (`score`, raw scores (B,)); `process_scores`
turns raw scores into the rollout's training scores; `sample_and_score` is phases 1–2 whole.
A *group* is the samples_per_prompt answers to one prompt.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from rlhf.config import PPOConfig
from rlhf.ppo import core
from rlhf.ppo.actor_critic import ActorCritic
from rlhf.ppo.numeric_guards import check_finite
from rlhf.ppo.precision import MixedPrecision
from rlhf.ppo.rollout import Responses, Rollout
from rlhf.rewards.processing import ScoreProcessor, calibration
from rlhf.rewards.tokens import ResponseTokens
from rlhf.runtime import distributed, sharding
from rlhf.runtime.generation import (
    EncodedPrompts,
    SamplingSettings,
    encode_prompts,
    pad_answers,
    row_seeds,
    sample_answers,
)

if TYPE_CHECKING:
    from rlhf.runtime.vllm_engine import VLLMEngine


class SamplingPhases:
    """Phases 1–2 of PPOTrainer (a base class of it): reads the attributes below, which the
    trainer's __init__ builds."""

    config: PPOConfig
    model: ActorCritic
    tokenizer: PreTrainedTokenizerBase
    reward_fn: Callable
    processor: ScoreProcessor
    precision: MixedPrecision
    prompts: list[str]
    system_prompt: str | None
    stop_token_id: int
    rng: random.Random
    update: int
    engine: VLLMEngine | None  # ppo.rollout.engine=vllm; None: the trained model samples
    _order: list[int]
    _timings: dict[str, float]

    def next_prompts(self) -> tuple[list[str], list[int]]:
        """This process's prompts for the next update, each repeated samples_per_prompt times
        (one group per prompt, kept whole on one process), and their rows in the global batch:
        batch_size × processes prompts drawn in a seeded order (the same on every process),
        reshuffled at each pass over the data."""
        batch = []
        while len(batch) < self.config.batch_size * distributed.world_size():
            if not self._order:
                self._order = list(range(len(self.prompts)))
                self.rng.shuffle(self._order)
            batch.append(self.prompts[self._order.pop()])
        group_size = self.config.samples_per_prompt
        mine = distributed.shard(range(len(batch)))
        prompts = [batch[index] for index in mine for _ in range(group_size)]
        rows = [index * group_size + k for index in mine for k in range(group_size)]
        return prompts, rows

    def sampling_settings(self, evaluation: bool) -> SamplingSettings:
        """How this update's answers are sampled (ppo.length_sampler draws the length limit),
        or the evaluation's (ppo.eval_do_sample)."""
        c = self.config
        if evaluation:
            return SamplingSettings(
                c.max_new_tokens, do_sample=c.eval_do_sample, temperature=c.temperature
            )
        max_new = c.max_new_tokens
        if c.length_sampler is not None:
            max_new = self.rng.randint(c.length_sampler[0], c.length_sampler[1])
        return SamplingSettings(max_new, c.min_new_tokens, True, c.temperature)

    def describe_sampling(self) -> str:
        """The log line saying how answers are drawn (no setting of a checkpoint's own
        generation_config.json takes part)."""
        c = self.config
        limits = f"[{c.length_sampler[0]}, {c.length_sampler[1]}]" if c.length_sampler else ""
        stop = self.tokenizer.convert_ids_to_tokens(self.stop_token_id)
        return (
            f"sampling: {self.sampling_settings(evaluation=False).describe()}"
            + (f" (max drawn per batch from {limits})" if limits else "")
            + f", stop at {stop!r} (id {self.stop_token_id}); one seed per answer from "
            f"ppo.seed={c.seed}; evaluation: {self.sampling_settings(evaluation=True).describe()}"
        )

    def sample(
        self,
        prompts: list[str],
        rows: list[int] | None = None,
        evaluation: bool = False,
        update: int | None = None,
        settings: SamplingSettings | None = None,
        stream: str | None = None,
    ) -> Responses:
        """Phase 1: sample answers to `prompts` (this update's sampling settings, or
        `settings`), cut after the stop token. `rows`: the prompts' rows in the global batch,
        `update` (this one by default) and `stream` (rollout or evaluation by default), which
        seed each answer."""
        rows = list(range(len(prompts))) if rows is None else rows
        settings = settings or self.sampling_settings(evaluation)
        stream = stream or ("evaluation" if evaluation else "rollout")
        update = self.update if update is None else update
        seeds = row_seeds(self.config.seed, stream, update, rows)
        if self.engine is not None and not evaluation:
            return self._sample_on_engine(prompts, settings, seeds, update)
        self.model.policy.eval()
        # FSDP2: whole weights for the rollout, gathered once (not at every token)
        with sharding.gathered(self.model.policy), self.precision.autocast():
            encoded, responses, mask, ended, texts = sample_answers(
                self.model.policy, self.tokenizer, prompts, self.system_prompt, settings,
                self.stop_token_id, seeds,
            )  # fmt: skip
        return Responses(
            prompts, encoded, responses, mask, ended, texts, settings.max_new_tokens
        )  # fmt: skip

    def _sample_on_engine(
        self, prompts: list[str], settings: SamplingSettings, seeds: list[int], update: int
    ) -> Responses:
        """Phase 1 on the rollout engine (vLLM): it first follows the policy as it is now,
        then answers the same encoded prompts; its log-probs come back with the answers.
        Held-out evaluations stay on the trained model, comparable across engines."""
        self.engine.follow(self.model.policy, update)
        encoded = encode_prompts(self.tokenizer, prompts, self.system_prompt)
        prompt_ids = [
            ids[keep.bool()].tolist()
            for ids, keep in zip(encoded.input_ids, encoded.attention_mask, strict=True)
        ]
        answers = self.engine.sample(prompt_ids, settings, self.stop_token_id, seeds)
        responses, mask, ended = pad_answers(
            [a.tokens for a in answers], self.stop_token_id, self.tokenizer.pad_token_id
        )
        logprobs = torch.zeros(responses.shape)
        for row, answer in enumerate(answers):
            logprobs[row, : len(answer.logprobs)] = torch.tensor(answer.logprobs)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        device = self.model.policy.device
        return Responses(
            prompts, EncodedPrompts(encoded.input_ids.to(device), encoded.attention_mask.to(device)),
            responses.to(device), mask.to(device), ended.to(device), texts,
            settings.max_new_tokens, engine_logprobs=logprobs.to(device),
        )  # fmt: skip

    def score(self, responses: Responses) -> torch.Tensor:
        """Phase 2, the reward source: raw scores (B,) of sampled answers, timed."""
        started = time.perf_counter()
        tokens = ResponseTokens(
            responses.encoded.input_ids, responses.encoded.attention_mask, responses.responses,
            responses.mask, responses.ended,
        )  # fmt: skip
        raw = self.reward_fn(responses.prompts, responses.texts, tokens)
        self._timings["score"] += time.perf_counter() - started
        return raw

    def process_scores(
        self, responses: Responses, raw: torch.Tensor, evaluation: bool = False
    ) -> Rollout:
        """Phase 2 after the reward source: missing-EOS penalty, scale, normalisation, clip and
        the soft overlong penalty on the raw scores (evaluation: left raw)."""
        if evaluation:
            return Rollout.of(responses, raw, raw.to(responses.responses.device))
        scores = self.processor(raw, responses.ended.cpu())
        check_finite(self.update, "score", "scores", scores, everywhere=True)
        if self.config.overlong_buffer is not None:
            scores = scores + core.overlong_penalty(
                responses.mask.sum(1).cpu(),
                responses.max_new_tokens,  # the limit these answers had (length_sampler)
                min(self.config.overlong_buffer, responses.max_new_tokens),
                self.config.overlong_penalty,
            )
        return Rollout.of(responses, raw, scores.to(responses.responses.device))

    def sample_and_score(
        self, prompts: list[str], rows: list[int] | None = None, evaluation: bool = False
    ) -> Rollout:
        """Phases 1–2: sample and score (evaluation: its own sampling, scores left raw)."""
        responses = self.sample(prompts, rows, evaluation)
        return self.process_scores(responses, self.score(responses), evaluation)

    @torch.no_grad()
    def calibrate_reward(self, prompts: list[str]) -> tuple[float, float, list[float]]:
        """Score sampled answers of the starting policy and set the processor's gain and bias so
        that they have mean 0 and standard deviation 1; returns (gain, bias, the raw scores of
        all processes' answers). Each process scores its share of the prompts; the moments are
        those of all of them."""
        raw = []
        mine = distributed.shard(list(enumerate(prompts)))
        settings = SamplingSettings(
            self.config.max_new_tokens, self.config.min_new_tokens, True, self.config.temperature
        )
        with sharding.gathered(self.model.policy):  # as in evaluate
            for start in range(0, len(mine), self.config.batch_size):
                rows, batch = zip(*mine[start : start + self.config.batch_size], strict=True)
                responses = self.sample(
                    list(batch), list(rows), update=0, settings=settings, stream="calibrate"
                )
                raw.append(self.score(responses))
        everyone = distributed.gather_1d(torch.cat(raw) if raw else torch.zeros(0))
        self.processor.gain, self.processor.bias = calibration(everyone)
        return self.processor.gain, self.processor.bias, everyone.tolist()
