"""Phases 3–5 of a PPO update, on a sampled and scored rollout: the forward passes (log-probs
of the sampled tokens under the policy and the reference, values), the per-token rewards
(−β·KL per token with kl_in=reward, the score on the last real token), and the advantages
(optional reward whitening, the estimator, advantage whitening over the global batch; with
drop_uniform_groups the groups whose scores are all equal leave the loss)."""

from __future__ import annotations

import torch

from rlhf import algorithms
from rlhf.config import PPOConfig
from rlhf.ppo import core, estimators, rollout_correction
from rlhf.ppo.actor_critic import ActorCritic
from rlhf.ppo.batch_stats import global_masked_whiten
from rlhf.ppo.kl_control import FixedKLController
from rlhf.ppo.logprobs import sampled_keep, token_logprobs
from rlhf.ppo.numeric_guards import check_finite
from rlhf.ppo.precision import MixedPrecision
from rlhf.ppo.rollout import Rollout
from rlhf.runtime import distributed
from rlhf.runtime.generation import joined_inputs


class AdvantagePhases:
    """Phases 3–5 of PPOTrainer (a base class of it): reads the attributes below, which the
    trainer's __init__ builds."""

    config: PPOConfig
    model: ActorCritic
    precision: MixedPrecision
    kl_controller: FixedKLController
    stop_token_id: int
    update: int

    @torch.no_grad()
    def forward_passes(self, rollout: Rollout) -> None:
        """Phase 3: log-probs under policy and reference, values (and the exact per-token KL
        when the penalty uses it)."""
        c = self.config
        inputs = joined_inputs(rollout.encoded, rollout.responses, rollout.mask)
        widths = (rollout.encoded.input_ids.shape[1], rollout.responses.shape[1])
        with self.precision.autocast():
            logits, values = self.model.policy_forward(inputs, *widths)
            ref_logits = self.model.reference_logits(inputs, *widths)
            # policy and reference over the same kept tokens: the KL of the sampling distributions
            keep = sampled_keep(
                rollout.responses, rollout.mask, logits.shape[-1], self.stop_token_id,
                c.min_new_tokens, check=True,
            )  # fmt: skip
            rollout.logprobs = token_logprobs(logits, rollout.responses, c.temperature, keep=keep)[
                0
            ]
            rollout.ref_logprobs = token_logprobs(
                ref_logits, rollout.responses, c.temperature, keep=keep
            )[0]
            if rollout.engine_logprobs is not None:
                self.engine_gap(rollout)
            penalty = algorithms.kl_estimator(c.kl_estimator)
            if penalty.from_logits:
                exact = penalty.load()
                rollout.kl_full = exact(logits, ref_logits, c.temperature, keep=keep)
            del logits, ref_logits, keep
            if values is None and self.model.has_critic:
                values = self.model.critic_forward(inputs, *widths)
        rollout.values = core.upcast(values) if values is not None else None

    def engine_gap(self, rollout: Rollout) -> None:
        """The rollout engine's log-probs beside the trainer's (the old log-probs PPO's ratio
        starts from): their gap, and with ppo.rollout.correction the importance weights."""
        settings = self.config.rollout
        rollout.engine_stats = rollout_correction.gap_stats(
            rollout.logprobs, rollout.engine_logprobs, rollout.mask
        )
        if settings.correction == "none":
            return
        rollout.correction, outside = rollout_correction.importance_weights(
            rollout.logprobs, rollout.engine_logprobs, rollout.mask, settings.correction,
            settings.correction_max, settings.correction_min,
        )  # fmt: skip
        rollout.engine_stats.update(
            rollout_correction.weight_stats(rollout.correction, outside, rollout.mask)
        )

    def shape_rewards(self, rollout: Rollout) -> None:
        """Phase 4: the per-token KL penalty and rewards (the KL in them when kl_in=reward)."""
        c = self.config
        if algorithms.kl_estimator(c.kl_estimator).from_logits:
            rollout.kl = rollout.kl_full
        else:
            rollout.kl = core.kl_penalty(rollout.logprobs, rollout.ref_logprobs, c.kl_estimator)
        beta_in_reward = self.kl_controller.value if c.kl_in == "reward" else 0.0
        rollout.rewards, rollout.non_score_rewards = core.per_token_rewards(
            rollout.scores, rollout.kl, beta_in_reward, rollout.mask
        )

    def estimate_advantages(self, rollout: Rollout) -> None:
        """Phase 5: the advantage estimator on the shaped rewards, whitening (moments of the
        global batch) and the tokens the loss trains on."""
        c = self.config
        rewards = rollout.rewards
        if c.whiten_rewards:
            rewards = global_masked_whiten(rewards, rollout.mask, shift_mean=False)
        # groups are whole on this process (next_prompts): their statistics are global
        advantages, rollout.returns = estimators.advantages(
            c.advantage_estimator, rewards, rollout.scores, rollout.values, rollout.mask,
            c.samples_per_prompt, c.gamma, c.lam,
        )  # fmt: skip
        rollout.loss_mask = self._loss_mask(rollout)
        # with every group dropped on every process nothing is trained, and nothing to whiten
        dropped_all = c.drop_uniform_groups and not distributed.any_process(
            bool(rollout.loss_mask.any())
        )
        if c.whiten_advantages and not dropped_all:
            advantages = global_masked_whiten(advantages, rollout.loss_mask)
        rollout.advantages = advantages
        check_finite(
            self.update, "advantages", "advantages", advantages[rollout.mask], everywhere=True
        )

    def _loss_mask(self, rollout: Rollout) -> torch.Tensor:
        """The response tokens the loss trains on: all of them, or with drop_uniform_groups
        those of the groups whose scores differ (DAPO's dynamic sampling, without refilling)."""
        group_size = self.config.samples_per_prompt
        if group_size < 2:
            return rollout.mask
        rollout.uniform = estimators.uniform_groups(rollout.scores, group_size).to(
            rollout.mask.device
        )
        if not self.config.drop_uniform_groups:
            return rollout.mask
        return rollout.mask & ~rollout.uniform[:, None]
