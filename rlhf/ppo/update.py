"""Phase 6 of a PPO update: ppo_epochs × shuffled mini-batches of clipped policy loss
+ vf_coef × clipped value loss (with a critic) + β × KL (kl_in=loss) − entropy_coef × entropy.

Words: a *mini-batch* is what one optimiser step learns from; it is cut into *micro-batches*
of ppo.micro_batch_size sequences, one forward/backward each (gradient accumulation over
gradient_accumulation_steps of them). A mini-batch whose mean ratio passes ratio_threshold is
skipped; the epochs stop early once an epoch's mean approx-KL (k3) passes target_kl; the first
critic_warmup_updates train only the critic.

The losses' statistics stay tensors on the device through the epochs and reach the host in
one transfer at the end of the update (each `.item()` is a host sync on a GPU); the ratio
check and the gradient-norm guard read their one number where they decide.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from rlhf import algorithms
from rlhf.config import PPOConfig
from rlhf.errors import NumericError
from rlhf.ppo import core
from rlhf.ppo.actor_critic import ActorCritic
from rlhf.ppo.kl_control import FixedKLController
from rlhf.ppo.logprobs import sampled_keep, token_logprobs
from rlhf.ppo.numeric_guards import agree_on, check_finite, stop_or_skip
from rlhf.ppo.optimiser import optimizer_step
from rlhf.ppo.precision import MixedPrecision
from rlhf.ppo.rollout import Rollout
from rlhf.runtime import distributed
from rlhf.runtime.generation import EncodedPrompts, joined_inputs

Stats = dict[str, list[torch.Tensor | float]]
COUNTS = ("skipped", "nonfinite")  # summed over the update, not averaged


def as_numbers(values: list[torch.Tensor | float]) -> list[float]:
    """Statistics as Python numbers, the tensors among them moved to the host in one transfer
    (float64: a float32 value comes back as `.item()` gives it)."""
    tensors = [value for value in values if torch.is_tensor(value)]
    if not tensors:
        return list(values)
    host = iter(torch.stack([t.detach().double() for t in tensors]).tolist())
    return [next(host) if torch.is_tensor(value) else value for value in values]


def averaged(stats: Stats) -> dict[str, float]:
    """The update's statistics: each one's mean over the micro-batches (or optimiser steps)
    that logged it, the counts summed; one host transfer for all of them."""
    keys = [key for key, values in stats.items() for _ in values]
    flat = as_numbers([value for values in stats.values() for value in values])
    numbers: dict[str, list[float]] = defaultdict(list)
    for key, value in zip(keys, flat, strict=True):
        numbers[key].append(value)
    means = {k: sum(v) / len(v) for k, v in numbers.items() if k not in COUNTS and v}
    means["policy/skipped_minibatches"] = sum(numbers.get("skipped", []))
    means["policy/nonfinite_skipped"] = sum(numbers.get("nonfinite", []))
    return means


class UpdatePhase:
    """Phase 6 of PPOTrainer (a base class of it): reads the attributes below, which the
    trainer's __init__ builds."""

    config: PPOConfig
    model: ActorCritic
    precision: MixedPrecision
    kl_controller: FixedKLController
    optimizer: torch.optim.Optimizer
    policy_params: list[torch.nn.Parameter]
    critic_params: list[torch.nn.Parameter]
    torch_rng: torch.Generator
    stop_token_id: int
    sharded: bool
    update: int

    def optimise(self, rollout: Rollout) -> dict[str, float]:
        """Phase 6: epochs × mini-batches of PPO updates; returns averaged stats."""
        c = self.config
        total = rollout.responses.shape[0]
        mini_batch = c.micro_batch_size * c.gradient_accumulation_steps
        stats: Stats = defaultdict(list)
        critic_only = self.update <= c.critic_warmup_updates
        for epoch in range(c.ppo_epochs):
            order = torch.randperm(total, generator=self.torch_rng)
            first = len(stats["policy/approxkl_k3"])
            for start in range(0, total, mini_batch):
                rows = order[start : start + mini_batch]
                try:
                    self._mini_batch_step(rollout, rows, critic_only, stats)
                except NumericError as exc:  # raised on every process alike (global guards)
                    stop_or_skip(c.on_nonfinite, exc, "mini-batch")
                    self.optimizer.zero_grad(set_to_none=False)  # drop its partial gradients
                    stats["nonfinite"].append(1.0)
            if c.target_kl is not None:
                # k3: ≥ 0, low variance; over the mini-batches of every process
                epoch_kl = distributed.mean_of_all(as_numbers(stats["policy/approxkl_k3"][first:]))
                if epoch_kl is not None and epoch_kl > c.target_kl:
                    stats["policy/early_stop_epoch"].append(epoch + 1)
                    break
        means = averaged(stats)
        means["policy/epochs"] = epoch + 1
        return means

    def _mini_batch_step(
        self, rollout: Rollout, rows: torch.Tensor, critic_only: bool, stats: Stats
    ) -> None:
        """One optimiser step over the micro-batches of the mini-batch `rows` (gradient
        accumulation). Micro-batch weights are shares of the mini-batch's trained tokens
        (token_mean) or trained sequences over all processes (their gradients are summed); a
        micro-batch with nothing in the loss (dropped groups) is skipped, a mini-batch with
        nothing in it on any process takes no step."""
        trained = rollout.loss_mask[rows]
        counts = torch.stack([trained.sum(), trained.any(1).sum()])
        mini_batch_tokens, mini_batch_sequences = distributed.all_reduce_sum(counts).tolist()
        if mini_batch_sequences == 0:
            return
        size = self.config.micro_batch_size  # sequences per micro-batch
        micro_batches = rows.split(size)
        # every micro-batch's trained tokens and sequences, in one host transfer
        per_micro_batch = [torch.stack([t.sum(), t.any(1).sum()]) for t in trained.split(size)]
        micro_counts = torch.stack(per_micro_batch).tolist()
        per_sequence = algorithms.aggregation(self.config.loss_aggregation).per_sequence
        contributed, error = False, None
        for micro_batch, (tokens, sequences) in zip(micro_batches, micro_counts, strict=True):
            if not tokens:
                continue
            weight = (
                sequences / mini_batch_sequences if per_sequence else tokens / mini_batch_tokens
            )
            try:
                with self.precision.autocast():
                    micro_stats = self._micro_batch_step(rollout, micro_batch, weight, critic_only)
            except NumericError as exc:
                error = exc
                break
            for key, value in micro_stats.items():
                stats[key].append(value)
            contributed |= not micro_stats["skipped"]
        agree_on(self.update, error)
        # a step on zero gradients would still move AdamW's moments
        if distributed.any_process(contributed):
            for key, norm in self._optimizer_step(critic_only).items():
                stats[key].append(norm)

    def _micro_batch_step(
        self, rollout: Rollout, rows: torch.Tensor, weight: float, critic_only: bool
    ) -> dict[str, torch.Tensor | float]:
        """One forward/backward of the micro-batch `rows`, its loss scaled by `weight`;
        returns its statistics (0-d tensors, `skipped` a number)."""
        c = self.config
        mask = rollout.mask[rows]  # the real tokens: inputs and positions
        trained = rollout.loss_mask[rows]  # the tokens in the loss
        encoded = EncodedPrompts(
            rollout.encoded.input_ids[rows], rollout.encoded.attention_mask[rows]
        )
        responses = rollout.responses[rows]
        inputs = joined_inputs(encoded, responses, mask)
        widths = (encoded.input_ids.shape[1], responses.shape[1])
        # critic warm-up: the policy term is left out and the value loss reaches only what is
        # the critic's alone (a value head's input is detached from the policy's body)
        logits, values = self.model.policy_forward(
            inputs, *widths, values_train_body=not critic_only
        )
        # log-probs and entropy from one pass; at entropy_coef = 0 the entropy's gradient is
        # None in backward, which then costs what the log-probs' alone does
        keep = sampled_keep(responses, mask, logits.shape[-1], self.stop_token_id, c.min_new_tokens)
        logprobs, entropy = token_logprobs(
            logits, responses, c.temperature, keep=keep, with_entropy=True
        )
        pg_loss, pg_stats = core.policy_loss(
            logprobs,
            rollout.logprobs[rows],
            rollout.advantages[rows],
            trained,
            c.cliprange_low if c.cliprange_low is not None else c.cliprange,
            c.cliprange_high if c.cliprange_high is not None else c.cliprange,
            c.dual_clip,
            c.loss_aggregation,
            c.max_new_tokens,  # the constant length of seq_mean_token_sum_norm (Dr. GRPO)
            None if rollout.correction is None else rollout.correction[rows],
        )
        stats: dict[str, torch.Tensor | float] = {f"policy/{k}": v for k, v in pg_stats.items()}
        stats["policy/entropy"] = core.masked_mean(entropy.detach(), trained)
        stats["skipped"] = 0.0
        if pg_stats["ratio_mean"].item() > c.ratio_threshold:  # the one number read here
            stats["skipped"] = 1.0  # a stale or broken mini-batch: no gradient from it
            if not self.sharded:
                return stats
            # FSDP2 reduces gradients inside backward, so every process runs the same backward
            # passes: a skipped mini-batch contributes with weight 0
            weight = 0.0
        loss = 0.0
        if not critic_only:
            loss = pg_loss
            if c.entropy_coef != 0:  # else no entropy gradient, not even zeros, reaches backward
                bonus = core.entropy_bonus(entropy, trained, c.loss_aggregation, c.max_new_tokens)
                loss = loss - c.entropy_coef * bonus
            loss = loss + self._kl_loss(logprobs, rollout, rows, stats)
        stats["loss/policy"] = pg_loss.detach()
        if not self.model.has_critic:
            self._backward(loss, weight, "policy loss")
            return stats
        if values is None:  # separate or LoRA critic: its own pass and backward
            self._backward(loss, weight, "policy loss")
            del logits
            # the backward runs (and gradient checkpointing recomputes) under the critic adapter
            with self.model.critic_adapter():
                values = self.model.critic_forward(inputs, *widths)
                vf_loss, vf_stats = self._value_loss(values, rollout, rows, trained)
                self._backward(c.vf_coef * vf_loss, weight, "value loss")
        else:
            vf_loss, vf_stats = self._value_loss(values, rollout, rows, trained)
            self._backward(loss + c.vf_coef * vf_loss, weight, "policy + value loss")
        stats.update({f"val/{k}": v for k, v in vf_stats.items()})
        stats["loss/value"] = vf_loss.detach()
        return stats

    def _kl_loss(
        self, logprobs: torch.Tensor, rollout: Rollout, rows: torch.Tensor, stats: dict
    ) -> torch.Tensor | float:
        """kl_in=loss: β × the aggregated per-token KL(policy ‖ reference) of the current
        log-probs (k3 as in GRPO, or k2), logged unweighted as loss/kl; 0 with kl_in=reward."""
        c = self.config
        if c.kl_in != "loss":
            return 0.0
        kl = core.kl_penalty(logprobs, rollout.ref_logprobs[rows], c.kl_estimator)
        kl_loss = core.aggregate(kl, rollout.loss_mask[rows], c.loss_aggregation, c.max_new_tokens)
        stats["loss/kl"] = kl_loss.detach()
        return self.kl_controller.value * kl_loss

    def _value_loss(self, values, rollout, rows, trained):
        return core.value_loss(
            core.upcast(values),
            rollout.values[rows],
            rollout.returns[rows],
            trained,
            self.config.cliprange_value,
            self.config.loss_aggregation,
            self.config.max_new_tokens,
        )

    def _backward(self, loss: torch.Tensor | float, weight: float, what: str) -> None:
        if not torch.is_tensor(loss):
            return
        # sharded: a stop must be taken by all processes before the backward's collectives
        check_finite(self.update, "update", what, loss, everywhere=self.sharded)
        self.precision.scale(loss * weight).backward()

    def _optimizer_step(self, critic_only: bool = False) -> dict[str, float]:
        """Sum gradients over processes, clip policy and critic each to max_grad_norm on its
        own (a full critic's large gradient must not shrink the policy's step), step AdamW.
        In critic warm-up the policy's parameters have no gradient and take no step."""
        networks = {"critic": self.critic_params} if self.critic_params else {}
        if critic_only:
            for param in self.policy_params:
                param.grad = None  # no step, no moment update, no step count for the policy
        else:
            networks = {"policy": self.policy_params, **networks}
        norms = optimizer_step(
            self.optimizer, self.precision, networks, self.config.max_grad_norm, self.sharded,
            lambda name, norm: check_finite(self.update, "update", f"{name} gradient norm", norm),
        )  # fmt: skip
        return {
            "policy/grad_norm" if name == "policy" else "val/grad_norm": norm
            for name, norm in norms.items()
        }
