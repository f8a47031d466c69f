"""The PPO loop for language models, in numbered phases per update.

1. generate: sample responses to a batch of prompts (KV cache), cut after the first stop token;
2. score: reward source on (prompt, response text); missing-EOS penalty, scale, normalise, clip,
   soft overlong penalty;
3. forward passes: log-probs of the sampled tokens under the policy and the reference, values
   (none without a critic);
4. rewards: −β·KL per token (kl_in=reward; Ziegler et al. 2019) + score on the last real token;
5. advantages: optional reward whitening, the estimator (GAE(γ, λ) on the critic's values, or a
   critic-free one from the rewards and the prompt groups, rlhf/ppo/estimators.py), advantage
   whitening; with drop_uniform_groups the groups whose scores are all equal leave the loss;
6. update: ppo_epochs × shuffled mini-batches of clipped policy loss + vf_coef × clipped value
   loss (with a critic) + β × KL (kl_in=loss) − entropy_coef × entropy, gradient accumulation,
   grad-norm clipping; a mini-batch whose
   mean ratio passes ratio_threshold is skipped, the epochs stop early once an epoch's mean
   approx-KL (k3 form) passes target_kl; the first critic_warmup_updates train only the critic;
7. log: scores, KL (penalty estimator, k1 and k3), entropy, losses, clip fractions, EOS and
   truncation rates, phase times, tokens/s; samples and held-out evaluation every N updates
   (scored by the reward and, when given, by an independent judge: eval.judge), read by the
   hacking guard (rlhf/ppo/guard.py: raise kl_coef, or stop after this update);
8. health alarms (rlhf/ppo/health.py), then a checkpoint when due (rlhf/ppo/checkpoint.py).
Numeric guards: a non-finite score, advantage, loss or gradient norm stops the update naming
the phase and update (or, with on_nonfinite=skip, skips that batch or mini-batch). Under several
processes (rlhf/runtime/distributed.py) the guards and health alarms see every process's values, so
all processes stop or skip alike.

Implementation details, with where they come from (Huang et al. 2024, "The N+ implementation
details of RLHF with PPO"; TRL's PPOTrainer up to 1.9):
- logits are divided by the sampling temperature before log-probs, so the log-probs are those of
  the distribution actually sampled (detail 23);
- dropout is off in every model (eval mode) so that the first epoch's ratio is exactly 1;
- masks come from the first stop token and lengths, never from the pad id (pad == EOS in SmolLM2);
- positions are counted over real tokens, so left-padded prompts see unpadded positions;
- the score sits on the last real response token; the EOS token itself is trained on;
- values are read where each response token is predicted (state before the token);
- gradient accumulation weighs micro-batches by their share of tokens (token_mean) or sequences,
  so batch 8 × accumulation 1 and batch 4 × accumulation 2 give the same update;
- advantages are whitened over the whole batch once, before mini-batching; group statistics
  (GRPO, RLOO, ...) are taken over whole groups, which next_prompts keeps on one process, before
  mini-batching too, so neither the process count nor the mini-batch split changes them;
- the KL controller sees the mean per-sequence KL of the batch (Ziegler et al. 2019).
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from rlhf import algorithms
from rlhf.config import PPOConfig
from rlhf.errors import ConfigError, NumericError
from rlhf.ppo import core, estimators
from rlhf.ppo.actor_critic import ActorCritic
from rlhf.ppo.batch_stats import global_masked_whiten, reduce_metrics
from rlhf.ppo.guard import HackingGuard
from rlhf.ppo.health import Alarm, HealthMonitor
from rlhf.ppo.kl_control import make_kl_controller
from rlhf.ppo.logprobs import stop_suppressed, token_logprobs
from rlhf.ppo.metrics import SAMPLE_COLUMNS, rollout_metrics, sample_row, sample_rows
from rlhf.ppo.precision import MixedPrecision, checkpointing_in_eval, describe_precision
from rlhf.ppo.rollout import Responses, Rollout
from rlhf.reporting.phrases import top_phrase
from rlhf.rewards import RewardFunction, with_tokens_argument
from rlhf.rewards.processing import ScoreProcessor, calibration
from rlhf.rewards.tokens import ResponseTokens
from rlhf.runs.tracking import Tracker
from rlhf.runtime import distributed, sharding
from rlhf.runtime.generation import (
    EncodedPrompts,
    SamplingSettings,
    joined_inputs,
    row_seeds,
    sample_answers,
)
from rlhf.runtime.host_memory import release_free_memory
from rlhf.runtime.rng import global_rng_states, restore_global_rng_states

if TYPE_CHECKING:
    from rlhf.ppo.checkpoint import Checkpointer
    from rlhf.rewards.judge import Judge

log = logging.getLogger(__name__)


def make_optimizer(
    groups: list[tuple[list[torch.nn.Parameter], float]], shard: bool = False
) -> torch.optim.Optimizer:
    """AdamW over (parameters, learning rate) groups, fused where PyTorch has a fused kernel for
    the device (3–4× faster on CPU). With `shard` on several processes, ZeRO-1: each process
    keeps the moments of, and updates, its share of the parameters, then every process receives
    the others' (the gradients are already summed everywhere, see `_optimizer_step`, so the
    update is the same as unsharded). Under FSDP2 a group's sharded (DTensor) and whole
    parameters go into two groups with its learning rate: one fused kernel takes one kind."""
    param_groups = [
        {"params": part, "lr": lr}
        for params, lr in groups
        for part in sharding.split_sharded(params)
        if part
    ]
    lr = param_groups[0]["lr"]
    if shard and distributed.world_size() > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        optimizer = ZeroRedundancyOptimizer(
            param_groups, optimizer_class=torch.optim.AdamW, lr=lr, weight_decay=0.0
        )
        held = sum(p.numel() for group in optimizer.optim.param_groups for p in group["params"])
        total = sum(p.numel() for group in param_groups for p in group["params"])
        log.info(
            "optimiser state sharded over %d processes (ZeRO-1): this one holds the moments "
            "of %d of %d parameters",
            distributed.world_size(), held, total,
        )  # fmt: skip
        return optimizer
    try:
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=0.0, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=0.0)


def gradient_norm(params: list[torch.nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """The gradients' total 2-norm, after clipping them to `max_norm` when it is set. Without
    clipping only the norm is computed: clip_grad_norm_ at an infinite limit would still
    multiply every gradient by 1.0, a pass over all of them (~1 GB for SmolLM2's two nets)."""
    if max_norm is not None:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads)


def check_fsdp2_settings(config: PPOConfig, mixed_precision: str) -> None:
    """What PPO under FSDP2 does not do (yet), refused before the models are built."""
    if config.critic == "lora":
        raise ConfigError(
            "ppo.critic=lora: not under FSDP2 (its pass calls the policy's body past the "
            "sharded root); use ppo.critic=separate or value_head"
        )
    if config.shard_optimizer:
        raise ConfigError(
            "ppo.shard_optimizer: not under FSDP2 (it shards the optimiser state already); "
            "leave it false"
        )
    if config.drop_uniform_groups:
        raise ConfigError(
            "ppo.drop_uniform_groups: not under FSDP2 (a process with nothing to train would "
            "skip backward passes that the others' gradient reduction waits for); use ddp.yaml"
        )
    if mixed_precision == "fp16":
        raise ConfigError("model.mixed_precision=fp16: not under FSDP2 (loss scaler); use bf16")
    if config.critic_warmup_updates:
        raise ConfigError(
            "ppo.critic_warmup_updates: not under FSDP2 (the policy's pass would have no "
            "backward for its gradient reduction); use ddp.yaml or 0"
        )


def stop_token_id(tokenizer: PreTrainedTokenizerBase, stop_token: str | None) -> int:
    """The id generation stops at: EOS, or `stop_token` (a vocabulary entry, or text that
    encodes to exactly one token)."""
    if stop_token is None:
        return tokenizer.eos_token_id
    vocabulary = tokenizer.get_vocab()
    if stop_token in vocabulary:
        return vocabulary[stop_token]
    ids = tokenizer(stop_token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(
            f"ppo.stop_token: {stop_token!r} is not one token of this tokenizer "
            f"(it encodes to {len(ids)} tokens)"
        )
    # an unknown text encodes to the unknown token, which generation never ends on
    if ids[0] == tokenizer.unk_token_id or tokenizer.decode(ids) != stop_token:
        raise ConfigError(
            f"ppo.stop_token: {stop_token!r} is not in this tokenizer's vocabulary (it encodes "
            f"to {tokenizer.convert_ids_to_tokens(ids[0])!r}, so answers would stop nowhere)"
        )
    return ids[0]


class PPOTrainer:
    def __init__(
        self,
        config: PPOConfig,
        model: ActorCritic,
        tokenizer: PreTrainedTokenizerBase,
        reward_fn: RewardFunction,
        prompts: list[str],
        eval_prompts: list[str],
        system_prompt: str | None,
        tracker: Tracker,
        score_processor: ScoreProcessor,
        mixed_precision: str = "no",
        judge: Judge | None = None,
        threshold: float = 0.0,
    ):
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.judge = judge  # eval.judge: scored beside the reward at each evaluation
        self.threshold = threshold  # the reward's decision threshold (ppo/eval/above_threshold)
        self.reward_fn = with_tokens_argument(reward_fn)
        self.tracker, self.processor = tracker, score_processor
        self.prompts, self.eval_prompts, self.system_prompt = prompts, eval_prompts, system_prompt
        self.stop_token_id = stop_token_id(tokenizer, config.stop_token)
        self.kl_controller = make_kl_controller(
            config.kl_coef, config.adaptive_kl, config.kl_target, config.kl_horizon
        )
        # FSDP2 (rlhf/runtime/sharding.py): the stage sharded policy and critic before this
        self.sharded = sharding.is_sharded(model)
        if config.shard_optimizer and mixed_precision == "fp16":
            raise ConfigError(
                "ppo.shard_optimizer: not with model.mixed_precision=fp16 (the loss scaler "
                "unscales gradients through the optimiser); use bf16"
            )
        self.policy_params = model.policy_parameters()
        self.critic_params = model.critic_parameters()
        critic_lr = config.critic_learning_rate or config.learning_rate
        self.optimizer = make_optimizer(
            [(self.policy_params, config.learning_rate), (self.critic_params, critic_lr)],
            shard=config.shard_optimizer,
        )
        # every process starts from the main process's weights (fresh adapters are random);
        # sharded models were broadcast before sharding
        if not self.sharded:
            distributed.broadcast_parameters(self._trained_parameters())
        self.precision = MixedPrecision(mixed_precision, model.policy.device)
        # stepped once per update, so early stops (target_kl) do not leave it short of 0
        total = max(1, config.total_updates)
        schedule = (
            (lambda update: 1.0)
            if config.lr_scheduler == "constant"
            else (lambda update: max(0.0, 1.0 - update / total))
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.rng = random.Random(config.seed)
        self.torch_rng = torch.Generator().manual_seed(config.seed)
        self.update = 0
        self._order: list[int] = []
        self._timings: dict[str, float] = defaultdict(float)
        self._last_rollout: Rollout | None = None
        self._update_started = time.perf_counter()
        self._main = distributed.is_main_process()
        self.health = HealthMonitor(config.health)
        self.guard = HackingGuard(config.hacking_guard)

    # --- data ---------------------------------------------------------------------------

    def next_prompts(self) -> tuple[list[str], list[int]]:
        """This process's prompts for the next update, each repeated samples_per_prompt times,
        and their rows in the global batch: batch_size × processes prompts drawn in a seeded
        order (the same on every process), reshuffled at each pass over the data."""
        batch = []
        while len(batch) < self.config.batch_size * distributed.world_size():
            if not self._order:
                self._order = list(range(len(self.prompts)))
                self.rng.shuffle(self._order)
            batch.append(self.prompts[self._order.pop()])
        repeats = self.config.samples_per_prompt
        mine = distributed.shard(range(len(batch)))
        prompts = [batch[index] for index in mine for _ in range(repeats)]
        rows = [index * repeats + k for index in mine for k in range(repeats)]
        return prompts, rows

    def sampling(self, evaluation: bool) -> SamplingSettings:
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
            f"sampling: {self.sampling(evaluation=False).describe()}"
            + (f" (max drawn per batch from {limits})" if limits else "")
            + f", stop at {stop!r} (id {self.stop_token_id}); one seed per answer from "
            f"ppo.seed={c.seed}; evaluation: {self.sampling(evaluation=True).describe()}"
        )

    # --- phases -------------------------------------------------------------------------

    def _sample(self, prompts: list[str], settings: SamplingSettings, seeds: list[int]):
        """Encoded prompts, responses (cut after the stop token), mask, ended flags and texts."""
        self.model.policy.eval()
        # FSDP2: whole weights for the rollout, gathered once (not at every token)
        with sharding.gathered(self.model.policy), self.precision.autocast():
            return sample_answers(
                self.model.policy,
                self.tokenizer,
                prompts,
                self.system_prompt,
                settings,
                self.stop_token_id,
                seeds,
            )

    def _score(self, batch: Responses) -> torch.Tensor:
        """The reward source's raw scores of sampled answers (B,), timed."""
        started = time.perf_counter()
        tokens = ResponseTokens(
            batch.encoded.input_ids, batch.encoded.attention_mask, batch.responses, batch.mask,
            batch.ended,
        )  # fmt: skip
        raw = self.reward_fn(batch.prompts, batch.texts, tokens)
        self._timings["score"] += time.perf_counter() - started
        return raw

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
        `settings`). `rows`: the prompts' rows in the global batch, `update` (this one by
        default) and `stream` (rollout or evaluation by default), which seed each answer."""
        rows = list(range(len(prompts))) if rows is None else rows
        settings = settings or self.sampling(evaluation)
        stream = stream or ("evaluation" if evaluation else "rollout")
        update = self.update if update is None else update
        seeds = row_seeds(self.config.seed, stream, update, rows)
        encoded, responses, mask, ended, texts = self._sample(prompts, settings, seeds)
        return Responses(
            prompts, encoded, responses, mask, ended, texts, settings.max_new_tokens
        )  # fmt: skip

    def scored(self, batch: Responses, raw: torch.Tensor, evaluation: bool = False) -> Rollout:
        """Phase 2 after the reward source: missing-EOS penalty, scale, normalisation, clip and
        the soft overlong penalty on the raw scores (evaluation: left raw)."""
        if evaluation:
            return Rollout.of(batch, raw, raw.to(batch.responses.device))
        scores = self.processor(raw, batch.ended.cpu())
        self._check_finite("score", "scores", scores, everywhere=True)
        if self.config.overlong_buffer is not None:
            scores = scores + core.overlong_penalty(
                batch.mask.sum(1).cpu(),
                batch.max_new_tokens,  # the limit these answers had (length_sampler)
                min(self.config.overlong_buffer, batch.max_new_tokens),
                self.config.overlong_penalty,
            )
        return Rollout.of(batch, raw, scores.to(batch.responses.device))

    def generate(
        self, prompts: list[str], rows: list[int] | None = None, evaluation: bool = False
    ) -> Rollout:
        """Phases 1–2: sample and score (evaluation: its own sampling, scores left raw)."""
        batch = self.sample(prompts, rows, evaluation)
        return self.scored(batch, self._score(batch), evaluation)

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
                sampled = self.sample(
                    list(batch), list(rows), update=0, settings=settings, stream="calibrate"
                )
                raw.append(self._score(sampled))
        everyone = distributed.gather_1d(torch.cat(raw) if raw else torch.zeros(0))
        self.processor.gain, self.processor.bias = calibration(everyone)
        return self.processor.gain, self.processor.bias, everyone.tolist()

    @torch.no_grad()
    def forward_passes(self, rollout: Rollout) -> None:
        """Phase 3: log-probs under policy and reference, values (and the exact per-token KL
        when the penalty uses it)."""
        inputs = joined_inputs(rollout.encoded, rollout.responses, rollout.mask)
        widths = (rollout.encoded.input_ids.shape[1], rollout.responses.shape[1])
        with self.precision.autocast():
            logits, values = self.model.policy_forward(inputs, *widths)
            ref_logits = self.model.reference_logits(inputs, *widths)
            # policy and reference over the same kept tokens: the KL of the sampling distributions
            keep = self._sampled_keep(rollout.responses, rollout.mask, logits.shape[-1], True)
            rollout.logprobs = self._logprobs(logits, rollout.responses, keep)[0]
            rollout.ref_logprobs = self._logprobs(ref_logits, rollout.responses, keep)[0]
            penalty = algorithms.kl_estimator(self.config.kl_estimator)
            if penalty.from_logits:
                exact = penalty.load()
                rollout.kl_full = exact(logits, ref_logits, self.config.temperature, keep=keep)
            del logits, ref_logits, keep
            if values is None and self.model.has_critic:
                values = self.model.critic_forward(inputs, *widths)
        rollout.values = core.upcast(values) if values is not None else None

    def _logprobs(
        self,
        logits: torch.Tensor,
        tokens: torch.Tensor,
        keep: torch.Tensor | None,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs of `tokens` (and the entropy) under the distribution actually sampled:
        softmax(logits / T) over the tokens `keep` leaves (`_sampled_keep`; PPO refuses top-k /
        top-p truncation), in chunks of positions with no full-vocabulary float32 copy kept
        (rlhf/ppo/logprobs.py); the backward recomputes each chunk's log-softmax from the logits."""
        return token_logprobs(
            logits, tokens, self.config.temperature, keep=keep, with_entropy=with_entropy
        )

    def _sampled_keep(
        self, tokens: torch.Tensor, mask: torch.Tensor, vocab_size: int, check: bool = False
    ) -> torch.Tensor | None:
        """(B, T, V) bool, the tokens the sampler could draw at each response position: all but
        the stop token among the first ppo.min_new_tokens (generate suppresses it there); None
        when that is 0. `check`: refuse answers holding the stop token there (given from outside:
        their log-prob under the distribution sampled is −inf), alike on every process."""
        first = self.config.min_new_tokens
        if first == 0:
            return None
        if check:
            early = (tokens[:, :first] == self.stop_token_id) & mask[:, :first].bool()
            if distributed.any_process(bool(early.any())):
                raise ConfigError(
                    f"ppo.min_new_tokens={first}: an answer has the stop token among its first "
                    f"{first} tokens, where sampling forbids it (log-probability −inf under the "
                    "distribution sampled); give longer answers or lower ppo.min_new_tokens"
                )
        return stop_suppressed(mask, vocab_size, self.stop_token_id, first)

    def shape_rewards(self, rollout: Rollout) -> None:
        """Phases 4–5: per-token rewards (with the KL when kl_in=reward), the advantage
        estimator, whitening (moments of the global batch) and the tokens the loss trains on."""
        c = self.config
        if algorithms.kl_estimator(c.kl_estimator).from_logits:
            rollout.kl = rollout.kl_full
        else:
            rollout.kl = core.kl_penalty(rollout.logprobs, rollout.ref_logprobs, c.kl_estimator)
        beta_in_reward = self.kl_controller.value if c.kl_in == "reward" else 0.0
        rollout.rewards, rollout.non_score_rewards = core.per_token_rewards(
            rollout.scores, rollout.kl, beta_in_reward, rollout.mask
        )
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
        self._check_finite("advantages", "advantages", advantages[rollout.mask], everywhere=True)

    def _loss_mask(self, rollout: Rollout) -> torch.Tensor:
        """The response tokens the loss trains on: all of them, or with drop_uniform_groups
        those of the groups whose scores differ (DAPO's dynamic sampling, without refilling)."""
        group = self.config.samples_per_prompt
        if group < 2:
            return rollout.mask
        rollout.uniform = estimators.uniform_groups(rollout.scores, group).to(rollout.mask.device)
        if not self.config.drop_uniform_groups:
            return rollout.mask
        return rollout.mask & ~rollout.uniform[:, None]

    def optimise(self, rollout: Rollout) -> dict[str, float]:
        """Phase 6: epochs × mini-batches of PPO updates; returns averaged stats."""
        c = self.config
        total = rollout.responses.shape[0]
        group = c.micro_batch_size * c.gradient_accumulation_steps
        stats: dict[str, list[float]] = defaultdict(list)
        critic_only = self.update <= c.critic_warmup_updates
        for epoch in range(c.ppo_epochs):
            order = torch.randperm(total, generator=self.torch_rng)
            first = len(stats["policy/approxkl_k3"])
            for start in range(0, total, group):
                try:
                    self._group_step(rollout, order[start : start + group], critic_only, stats)
                except NumericError as exc:  # raised on every process alike (global guards)
                    if c.on_nonfinite == "stop":
                        raise
                    log.warning("%s; mini-batch skipped (ppo.on_nonfinite=skip)", exc)
                    self.optimizer.zero_grad(set_to_none=False)  # drop its partial gradients
                    stats["nonfinite"].append(1.0)
            if c.target_kl is not None:
                # k3: ≥ 0, low variance; over the mini-batches of every process
                epoch_kl = distributed.mean_of_all(stats["policy/approxkl_k3"][first:])
                if epoch_kl is not None and epoch_kl > c.target_kl:
                    stats["policy/early_stop_epoch"].append(epoch + 1)
                    break
        counts = ("skipped", "nonfinite")
        averaged = {k: sum(v) / len(v) for k, v in stats.items() if k not in counts and v}
        averaged["policy/skipped_minibatches"] = sum(stats.get("skipped", []))
        averaged["policy/nonfinite_skipped"] = sum(stats.get("nonfinite", []))
        averaged["policy/epochs"] = epoch + 1
        return averaged

    def _group_step(
        self, rollout: Rollout, group_index: torch.Tensor, critic_only: bool, stats: dict
    ) -> None:
        """One optimiser step over a group of micro-batches (gradient accumulation). Micro-batch
        weights are shares of the group's trained tokens (token_mean) or trained sequences over
        all processes (their gradients are summed); a micro-batch with nothing in the loss
        (dropped groups) is skipped, a group with nothing in it on any process takes no step."""
        trained = rollout.loss_mask[group_index]
        counts = torch.stack([trained.sum(), trained.any(1).sum()])
        group_tokens, group_rows = distributed.all_reduce_sum(counts).tolist()
        if group_rows == 0:
            return
        contributed, error = False, None
        for micro in group_index.split(self.config.micro_batch_size):
            kept = rollout.loss_mask[micro]
            if not kept.any():
                continue
            if not algorithms.aggregation(self.config.loss_aggregation).per_sequence:
                weight = kept.sum().item() / group_tokens
            else:
                weight = kept.any(1).sum().item() / group_rows
            try:
                with self.precision.autocast():
                    micro_stats = self._micro_step(rollout, micro, weight, critic_only)
            except NumericError as exc:
                error = exc
                break
            for key, value in micro_stats.items():
                stats[key].append(value)
            contributed |= not micro_stats["skipped"]
        self._agree_on(error)
        # a step on zero gradients would still move AdamW's moments
        if distributed.any_process(contributed):
            for key, norm in self._optimizer_step(critic_only).items():
                stats[key].append(norm)

    def _micro_step(
        self, rollout: Rollout, index: torch.Tensor, weight: float, critic_only: bool
    ) -> dict[str, float]:
        c = self.config
        mask = rollout.mask[index]  # the real tokens: inputs and positions
        trained = rollout.loss_mask[index]  # the tokens in the loss
        encoded = EncodedPrompts(
            rollout.encoded.input_ids[index], rollout.encoded.attention_mask[index]
        )
        responses = rollout.responses[index]
        inputs = joined_inputs(encoded, responses, mask)
        widths = (encoded.input_ids.shape[1], responses.shape[1])
        # critic warm-up: the policy term is left out and the value loss reaches only what is
        # the critic's alone (a value head's input is detached from the policy's body)
        logits, values = self.model.policy_forward(
            inputs, *widths, values_train_body=not critic_only
        )
        # log-probs and entropy from one pass; at entropy_coef = 0 the entropy's gradient is
        # None in backward, which then costs what the log-probs' alone does
        keep = self._sampled_keep(responses, mask, logits.shape[-1])
        logprobs, entropy = self._logprobs(logits, responses, keep, with_entropy=True)
        pg_loss, pg_stats = core.policy_loss(
            logprobs,
            rollout.logprobs[index],
            rollout.advantages[index],
            trained,
            c.cliprange_low if c.cliprange_low is not None else c.cliprange,
            c.cliprange_high if c.cliprange_high is not None else c.cliprange,
            c.dual_clip,
            c.loss_aggregation,
            c.max_new_tokens,  # the constant length of seq_mean_token_sum_norm (Dr. GRPO)
        )
        stats = {f"policy/{k}": v for k, v in pg_stats.items()}
        stats["policy/entropy"] = core.masked_mean(entropy, trained).item()
        stats["skipped"] = 0.0
        if pg_stats["ratio_mean"] > c.ratio_threshold:
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
            loss = loss + self._kl_loss(logprobs, rollout, index, stats)
        stats["loss/policy"] = pg_loss.item()
        if not self.model.has_critic:
            self._backward(loss, weight, "policy loss")
            return stats
        if values is None:  # separate or LoRA critic: its own pass and backward
            self._backward(loss, weight, "policy loss")
            del logits
            # the backward runs (and gradient checkpointing recomputes) under the critic adapter
            with self.model.critic_adapter():
                values = self.model.critic_forward(inputs, *widths)
                vf_loss, vf_stats = self._value_loss(values, rollout, index, trained)
                self._backward(c.vf_coef * vf_loss, weight, "value loss")
        else:
            vf_loss, vf_stats = self._value_loss(values, rollout, index, trained)
            self._backward(loss + c.vf_coef * vf_loss, weight, "policy + value loss")
        stats.update({f"val/{k}": v for k, v in vf_stats.items()})
        stats["loss/value"] = vf_loss.item()
        return stats

    def _kl_loss(
        self, logprobs: torch.Tensor, rollout: Rollout, index: torch.Tensor, stats: dict
    ) -> torch.Tensor | float:
        """kl_in=loss: β × the aggregated per-token KL(policy ‖ reference) of the current
        log-probs (k3 as in GRPO, or k2), logged unweighted as loss/kl; 0 with kl_in=reward."""
        c = self.config
        if c.kl_in != "loss":
            return 0.0
        kl = core.kl_penalty(logprobs, rollout.ref_logprobs[index], c.kl_estimator)
        kl_loss = core.aggregate(kl, rollout.loss_mask[index], c.loss_aggregation, c.max_new_tokens)
        stats["loss/kl"] = kl_loss.item()
        return self.kl_controller.value * kl_loss

    def _value_loss(self, values, rollout, index, trained):
        return core.value_loss(
            core.upcast(values),
            rollout.values[index],
            rollout.returns[index],
            trained,
            self.config.cliprange_value,
            self.config.loss_aggregation,
            self.config.max_new_tokens,
        )

    def _backward(self, loss: torch.Tensor | float, weight: float, what: str) -> None:
        if not torch.is_tensor(loss):
            return
        # sharded: a stop must be taken by all processes before the backward's collectives
        self._check_finite("update", what, loss, everywhere=self.sharded)
        self.precision.scale(loss * weight).backward()

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _optimizer_step(self, critic_only: bool = False) -> dict[str, float]:
        """Sum gradients over processes, clip policy and critic each to max_grad_norm on its
        own (a full critic's large gradient must not shrink the policy's step), step AdamW.
        In critic warm-up the policy's parameters have no gradient and take no step."""
        groups = {"critic": self.critic_params} if self.critic_params else {}
        if critic_only:
            for param in self.policy_params:
                param.grad = None  # no step, no moment update, no step count for the policy
        else:
            groups = {"policy": self.policy_params, **groups}
        trained = [p for params in groups.values() for p in params]
        # the same gradient on every process (FSDP2 summed its shards' in backward already)
        distributed.sum_gradients(sharding.replicated(trained))
        self.precision.unscale(self.optimizer)
        max_norm = self.config.max_grad_norm
        norms = {}
        for name, params in groups.items():
            if self.sharded:
                norm = sharding.gradient_norm(params, max_norm)
            else:
                norm = gradient_norm(params, max_norm)
            if not self.precision.scales_loss:  # fp16: an overflow skips the step, scale drops
                self._check_finite("update", f"{name} gradient norm", norm)
            norms["policy/grad_norm" if name == "policy" else "val/grad_norm"] = norm.item()
        self.precision.step(self.optimizer)
        # keep the gradient buffers: re-allocating ~1 GB per step for SmolLM2 costs seconds
        if self.sharded:  # one foreach kernel cannot take sharded and whole gradients together
            for param in self._trained_parameters():
                if param.grad is not None:
                    param.grad.zero_()
        else:
            self.optimizer.zero_grad(set_to_none=False)
        return norms

    def _check_finite(
        self, phase: str, what: str, value: torch.Tensor, everywhere: bool = False
    ) -> None:
        """Numeric guard: a NaN or inf stops the update here, naming phase and update. With
        `everywhere` (a point every process reaches) the count covers all processes, so every
        process stops, or skips, alike and they meet at the same collectives afterwards."""
        finite = torch.isfinite(value)
        bad, total = int((~finite).sum()), finite.numel()
        if everywhere and distributed.world_size() > 1:
            counts = torch.tensor([bad, total], dtype=torch.float64, device=distributed.device())
            bad, total = (int(x) for x in distributed.all_reduce_sum(counts).tolist())
        if bad:
            count = f" ({bad} of {total})" if total > 1 else ""
            raise NumericError(
                f"update {self.update}, phase {phase}: non-finite {what}{count}; "
                "stopped before it reached the weights"
            )

    def _agree_on(self, error: NumericError | None) -> None:
        """Raise a numeric error met by this process or by any other on every process (a loss
        check is local: a mini-batch skipped for its ratio does not reach it)."""
        if distributed.world_size() > 1 and distributed.any_process(error is not None):
            raise error or NumericError(
                f"update {self.update}, phase update: non-finite loss on another process; "
                "stopped before it reached the weights"
            )
        if error is not None:
            raise error

    # --- the loop -------------------------------------------------------------------------

    @property
    def last_rollout(self) -> Rollout | None:
        """The rollout the last update trained on (None after a skipped batch)."""
        return self._last_rollout

    def begin_update(self) -> None:
        """Start the next update: count it, reset its phase timings and last rollout."""
        self.update += 1
        self._timings = defaultdict(float)
        self._last_rollout = None
        self._update_started = time.perf_counter()

    def step(self) -> dict[str, float]:
        """One update of the training loop: sample and score this update's prompts (phases
        1–2), then `learn` from them; returns the metrics logged for it."""
        self.begin_update()
        try:
            rollout = self.generate(*self.next_prompts())
        except NumericError as exc:
            return self._skip_batch(exc)
        spent = time.perf_counter() - self._update_started
        self._timings["generate"] = spent - self._timings["score"]
        return self.learn(rollout)

    def learn(self, rollout: Rollout) -> dict[str, float]:
        """Phases 3–7 of the update `begin_update` started, on a sampled and scored rollout
        (from `step`, or given from outside by `rlhf.session.PPOSession.step`): forward
        passes, rewards and advantages, the optimisation epochs, the KL controller; returns
        the update's metrics reduced over processes."""
        lr = self.scheduler.get_last_lr()[0]  # this update's (stepped once per update)
        started = time.perf_counter()
        try:
            self.forward_passes(rollout)
            self.shape_rewards(rollout)
        except NumericError as exc:
            return self._skip_batch(exc)
        forwarded = time.perf_counter()
        # eval mode, dropout off: the first epoch's ratio is exactly 1
        with checkpointing_in_eval(self.model):
            update_stats = self.optimise(rollout)
        self.scheduler.step()
        release_free_memory()  # host_heap=reuse: reused within the update, handed back after
        done = time.perf_counter()
        self._timings["forward"] = forwarded - started
        self._timings["update"] = done - forwarded
        self._last_rollout = rollout
        metrics = rollout_metrics(rollout)
        metrics.update({f"ppo/{k}": v for k, v in update_stats.items()})
        metrics["ppo/kl_coef"] = self.kl_controller.value
        metrics["ppo/lr"] = lr
        total = done - self._update_started
        metrics["ppo/tokens_per_second"] = rollout.mask.sum().item() / total
        metrics.update({f"timing/{k}": v for k, v in self._timings.items()})
        metrics["timing/total"] = total
        metrics = reduce_metrics(metrics)
        global_batch = rollout.responses.shape[0] * distributed.world_size()
        self.kl_controller.update(metrics[self.controller_kl_metric], global_batch)
        return metrics

    def _skip_batch(self, exc: NumericError) -> dict[str, float]:
        """A non-finite score or advantage: stop (on_nonfinite=stop), or skip the batch."""
        if self.config.on_nonfinite == "stop":
            raise exc
        log.warning("%s; batch skipped (ppo.on_nonfinite=skip)", exc)
        self.scheduler.step()
        return {"ppo/nonfinite_skipped_batches": 1.0}

    @property
    def controller_kl_metric(self) -> str:
        """The KL the adaptive controller steers: the penalty's own where it estimates KL
        (k1, k3, exact), k1 where the penalty is another function of the log-ratio (k2, abs)."""
        if algorithms.kl_estimator(self.config.kl_estimator).estimates_kl:
            return "ppo/objective/kl"
        return "ppo/objective/kl_k1"

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out prompts with the evaluation sampling settings (greedy by default); each
        process answers its share, the statistics cover all of them."""
        self._timings = defaultdict(float)
        texts, scores, lengths, ended, judged = [], [], [], [], []
        mine = distributed.shard(self.eval_prompts)
        offset = distributed.shard_offset(len(self.eval_prompts))
        # gathered once: processes may have different numbers of batches (no collective inside)
        with sharding.gathered(self.model.policy):
            for start in range(0, len(mine), self.config.batch_size):
                rows = list(range(offset + start, offset + start + self.config.batch_size))
                batch = mine[start : start + self.config.batch_size]
                rollout = self.generate(batch, rows[: len(batch)], evaluation=True)
                texts += rollout.texts
                scores += rollout.raw_scores.tolist()
                lengths += rollout.mask.sum(1).tolist()
                ended += rollout.ended.tolist()
                if self.judge is not None:
                    judged += self.judge.score(rollout.prompts, rollout.texts).tolist()
        gathered = distributed.gather_objects((texts, scores, lengths, ended, judged))
        texts, scores, lengths, ended, judged = (
            [x for part in gathered for x in part[i]] for i in range(5)
        )
        rows = [
            sample_row(self.update, p, t, s, None, n, e)
            for p, t, s, n, e in zip(self.eval_prompts, texts, scores, lengths, ended, strict=True)
        ]
        self.tracker.log_table("ppo/eval_samples", SAMPLE_COLUMNS, rows)
        n = max(len(scores), 1)
        metrics = {
            "ppo/eval/score": sum(scores) / n,
            "ppo/eval/length": sum(lengths) / n,
            "ppo/eval/eos_rate": sum(ended) / n,
            "ppo/eval/distinct": len(set(texts)) / n,
            "ppo/eval/above_threshold": sum(s > self.threshold for s in scores) / n,
            "ppo/eval/top_phrase_share": top_phrase(texts).share,
        }
        if self.judge is not None:
            metrics["ppo/eval/judge_score"] = sum(judged) / n
            above = sum(score > self.judge.threshold for score in judged)
            metrics["ppo/eval/judge_above_threshold"] = above / n
        return metrics

    def observe_health(self, metrics: dict[str, float]) -> list[Alarm]:
        """Alarms from the reduced metrics and the responses of every process, so that every
        process raises the same ones (and a configured stop stops them all)."""
        rollout = self._last_rollout
        if rollout is None:  # a skipped batch (skipped on every process)
            return []
        lengths = rollout.mask.sum(1).tolist()
        responses = [row[:n].tolist() for row, n in zip(rollout.responses, lengths, strict=True)]
        gathered = distributed.gather_objects(
            (responses, rollout.raw_scores.tolist(), rollout.texts)
        )
        responses = [r for part in gathered for r in part[0]]
        scores = [x for part in gathered for x in part[1]]
        return self.health.observe(metrics, responses, scores, [t for p in gathered for t in p[2]])

    def train(self, checkpointer: Checkpointer | None = None) -> dict[str, float]:
        """Updates from the current one (0, or a resumed checkpoint's) to total_updates; after
        each: evaluation and samples when due, health alarms, log, checkpoint when due."""
        c = self.config
        final: dict[str, float] = {}
        if self._main:
            log.info(self.describe_sampling())
            log.info(describe_precision(self.precision.mode, self.precision.device_type))
        if c.eval_every and self.eval_prompts and self.update == 0:
            start = self.evaluate()
            self.guard.observe(0, start)  # logs the starting policy's gap; does not count
            self.tracker.log(start, step=0)
            if checkpointer is not None:
                checkpointer.at_start(self, start)
        # as a context manager: a stop leaves the bar's line, so the error gets a line of its own
        with tqdm(
            total=c.total_updates,
            initial=self.update,
            desc="PPO updates",
            unit="update",
            disable=not self._main,
        ) as bar:
            while self.update < c.total_updates and self.guard.stopped is None:
                final = self._train_one(checkpointer)
                bar.update()
        return final

    def _take_guard_action(self, metrics: dict[str, float]) -> None:
        """The hacking guard (rlhf/ppo/guard.py) on this update's evaluation: raise kl_coef, or
        mark training as stopped after this update (the loop ends; the checkpoint still runs)."""
        action = self.guard.observe(self.update, metrics)
        if action is None:
            return
        if action.action == "raise_kl":
            self.kl_controller.value *= self.config.hacking_guard.kl_factor
            metrics["ppo/guard/kl_coef"] = self.kl_controller.value
            log.warning("%s; kl_coef raised to %.4g", action.message, self.kl_controller.value)
        else:
            log.warning("%s; training stops (ppo.hacking_guard.action=stop)", action.message)

    def _train_one(self, checkpointer: Checkpointer | None) -> dict[str, float]:
        """One update with its evaluation, samples, health check, log line and checkpoint."""
        c = self.config
        metrics = self.step()
        if c.eval_every and self.eval_prompts and self.update % c.eval_every == 0:
            metrics.update(self.evaluate())
            self._take_guard_action(metrics)
        alarms = self.observe_health(metrics)
        if c.log_samples_every and self.update % c.log_samples_every == 0 and self._last_rollout:
            rows = distributed.gather_objects(sample_rows(self._last_rollout, self.update))
            self.tracker.log_table("ppo/samples", SAMPLE_COLUMNS, sum(rows, []))
        self.tracker.log(metrics, step=self.update)
        last_good = checkpointer.latest() if checkpointer else None
        self.health.stop_if_configured(alarms, self.update, str(last_good or "none"))
        if checkpointer is not None:
            checkpointer.after_update(self, metrics)
        return metrics

    # --- state: what a checkpoint holds (rlhf/ppo/checkpoint.py) ---------------------------

    def trainable_tensors(self) -> dict[str, torch.Tensor]:
        """Name → every trained parameter (tied weights once, by their first name)."""
        trained = {id(p) for p in self.model.policy_parameters() + self.model.critic_parameters()}
        return {name: p for name, p in self.model.named_parameters() if id(p) in trained}

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact continuation needs: the `trainable` tensors, the `optimizer` and
        `scheduler` states, this process's `rng` states (global and the trainer's own), and the
        JSON-able `update`, `data_order`, `kl_controller`, `score_processor`, `health`, `guard`
        and `value_offset` (a separate critic's, `ActorCritic.value_offset`).
        Every process calls it: with a sharded optimiser (ZeRO-1) the moments are gathered on
        the main process, and only its `optimizer` entry is set (None on the others); under
        FSDP2 the sharded weights and moments are gathered whole on every process."""
        processor = self.processor
        return {
            "update": self.update,
            "data_order": list(self._order),
            "kl_controller": self.kl_controller.state_dict(),
            "score_processor": {
                "moments": processor.moments.state_dict(),
                "gain": processor.gain,
                "bias": processor.bias,
            },
            "health": self.health.state_dict(),
            "guard": self.guard.state_dict(),
            "value_offset": self.model.value_offset,
            # whole tensors: under FSDP2 gathered from every process's shard
            "trainable": {k: sharding.whole(v) for k, v in self.trainable_tensors().items()},
            "optimizer": self._optimizer_state(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                **global_rng_states(),
                "trainer_python": self.rng.getstate(),
                "trainer_torch": self.torch_rng.get_state(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put the trainer back in the state `state_dict` gave (the full optimiser state, this
        process's RNG states). Raises ConfigError when the trained tensors differ in name."""
        self.load_trainable(state["trainable"])
        self.optimizer.load_state_dict(self._laid_out_like_parameters(state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        restore_global_rng_states(state["rng"])
        self.rng.setstate(state["rng"]["trainer_python"])
        self.torch_rng.set_state(state["rng"]["trainer_torch"])
        self.update = state["update"]
        self._order = list(state["data_order"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        processor = state["score_processor"]
        self.processor.moments.load_state_dict(processor["moments"])
        self.processor.gain, self.processor.bias = processor["gain"], processor["bias"]
        self.health.load_state_dict(state["health"])
        self.guard.load_state_dict(state.get("guard"))  # absent: written before the guard
        self.model.value_offset = state.get("value_offset", 0.0)

    def load_trainable(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy saved trained tensors (`state_dict()["trainable"]`) into the model. Raises
        ConfigError when they differ in name."""
        expected = self.trainable_tensors()
        if set(tensors) != set(expected):
            missing = sorted(set(expected) - set(tensors))[:3]
            raise ConfigError(f"does not match this model (tensors missing: {missing})")
        with torch.no_grad():
            for name, tensor in tensors.items():
                expected[name].copy_(sharding.like(tensor, expected[name]))

    def _optimizer_state(self) -> dict[str, Any] | None:
        """The optimiser's whole state (see `state_dict`)."""
        optimizer = self.optimizer
        if _is_sharded(optimizer):
            optimizer.consolidate_state_dict(to=0)
            return optimizer.state_dict() if self._main else None
        state = optimizer.state_dict()
        if self.sharded:  # the same order on every process, so the gathers pair up
            state["state"] = {
                index: {key: sharding.whole(value) for key, value in moments.items()}
                for index, moments in state["state"].items()
            }
        return state

    def _laid_out_like_parameters(self, state: dict[str, Any]) -> dict[str, Any]:
        """A saved (whole) optimiser state with each moment laid out as its parameter: this
        process's shard under FSDP2, as it is otherwise."""
        if not self.sharded:
            return state
        params = self._trained_parameters()
        moments = {
            index: {
                key: sharding.like(value, params[index])
                if torch.is_tensor(value) and value.shape == params[index].shape
                else value
                for key, value in entry.items()
            }
            for index, entry in state["state"].items()
        }
        return {**state, "state": moments}


def _is_sharded(optimizer: torch.optim.Optimizer) -> bool:
    """True for ZeRO-1 (each process holds a share of the moments)."""
    return hasattr(optimizer, "consolidate_state_dict")
