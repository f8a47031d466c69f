"""`ppo`: rollout, reward shaping, advantages, the update, the models, the run, reliability.
`rlhf.config.PPOConfig` adds the advantage estimator's checks and the defaults that follow it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rlhf.schemas.fields import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    SHARE,
    Range,
    check_fields,
    one_of,
    renamed,
    require,
    setting,
    typed_section,
)
from rlhf.schemas.ppo_reliability import CheckpointConfig, HackingGuardConfig, HealthConfig
from rlhf.schemas.rollout import RolloutSettings


@dataclass
class PPOSettings:
    # --- rollout ---
    batch_size: int = setting(8, "prompts per update", AT_LEAST_ONE)
    samples_per_prompt: int = setting(1, "responses sampled for each prompt", AT_LEAST_ONE)
    max_new_tokens: int = setting(32, "longest response", AT_LEAST_ONE)
    min_new_tokens: int = setting(0, "shortest response (EOS suppressed before)", NON_NEGATIVE)
    temperature: float = setting(1.0, "sampling temperature", POSITIVE)
    top_k: int = setting(
        0, "must stay 0: PPO trains the distribution it samples from, untruncated", Range(0, 0)
    )
    top_p: float = setting(1.0, "must stay 1.0, for the same reason", Range(1, 1))
    stop_token: str | None = setting(None, "stop at this token instead of EOS")
    length_sampler: list[int] | None = setting(
        None, "[min, max] new tokens sampled per batch", AT_LEAST_ONE
    )
    missing_eos_penalty: float | None = setting(
        None, "subtracted from the score of unfinished answers", NON_NEGATIVE
    )
    overlong_buffer: int | None = setting(
        None, "last N tokens before max_new_tokens are penalised", AT_LEAST_ONE
    )
    overlong_penalty: float = setting(
        1.0, "penalty reached at max_new_tokens (linear over the buffer)", NON_NEGATIVE
    )
    rollout: RolloutSettings = setting(
        RolloutSettings, "the sampling engine (hf or vllm) and its probability-gap correction"
    )
    # --- reward shaping ---
    kl_coef: float = setting(0.05, "beta: weight of the per-token KL penalty", NON_NEGATIVE)
    kl_estimator: str = setting(
        "k1", "estimator in the penalty: k1, k2, k3, abs, full (exact, from logits)"
    )
    adaptive_kl: bool = setting(False, "adapt beta towards kl_target (Ziegler et al. 2019)")
    kl_target: float = setting(6.0, "adaptive controller: target KL per sequence", POSITIVE)
    kl_horizon: int = setting(10000, "adaptive controller: horizon in samples", AT_LEAST_ONE)
    kl_in: str = setting(
        "reward",
        "where the KL goes: reward (per-token penalty) or loss (GRPO-style, k2/k3 with kl_coef)",
    )
    whiten_rewards: bool = setting(False, "whiten per-token rewards before the advantage estimator")
    # --- advantages ---
    advantage_estimator: str = setting(
        "gae",
        "gae (PPO), grpo, dr_grpo, rloo, reinforce_pp, reinforce_pp_baseline, or one registered "
        "in rlhf/algorithms.py (docs/algorithms.md)",
    )
    gamma: float = setting(1.0, "discount (GAE, REINFORCE++)", SHARE)
    lam: float = setting(0.95, "GAE lambda", SHARE)
    whiten_advantages: bool | None = setting(
        None,
        "whiten advantages over the global batch; null: the estimator's own (gae, reinforce_pp*: "
        "true)",
    )
    drop_uniform_groups: bool = setting(
        False, "DAPO dynamic sampling: groups whose scores are all equal are left out of the loss"
    )
    # --- update ---
    ppo_epochs: int = setting(4, "passes over each batch", AT_LEAST_ONE)
    micro_batch_size: int = setting(
        2, "samples per forward/backward pass (a micro-batch)", AT_LEAST_ONE
    )
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimiser step", AT_LEAST_ONE)
    learning_rate: float = setting(1.41e-05, "AdamW learning rate of the policy", POSITIVE)
    critic_learning_rate: float | None = setting(
        None, "AdamW learning rate of the critic; null = learning_rate", POSITIVE
    )
    lr_scheduler: str = setting(
        "constant", "constant or linear (decay to 0 over total_updates, stepped per update)"
    )
    max_grad_norm: float | None = setting(
        1.0, "clip policy and critic gradient norms, each on its own; null = off", POSITIVE
    )
    shard_optimizer: bool = setting(
        False, "ZeRO-1: each of N processes keeps 1/N of AdamW's moments (needs N > 1)"
    )
    shard_reference: bool = setting(
        False,
        "under accelerate/fsdp.yaml: shard the frozen reference per layer too (else a whole copy "
        "per process)",
    )
    cliprange: float = setting(0.2, "epsilon of the clipped policy objective", POSITIVE)
    cliprange_low: float | None = setting(
        None, "lower epsilon; null = cliprange", Range(0, 1, low_open=True, high_open=True)
    )
    cliprange_high: float | None = setting(None, "upper epsilon; null = cliprange", POSITIVE)
    dual_clip: float | None = setting(
        None, "dual-clip constant c > 1 for negative advantages", Range(1, low_open=True)
    )
    cliprange_value: float = setting(
        0.2, "clip of the value update around the old values", POSITIVE
    )
    vf_coef: float = setting(0.1, "weight of the value loss", NON_NEGATIVE)
    entropy_coef: float = setting(0.0, "weight of the entropy bonus", NON_NEGATIVE)
    loss_aggregation: str | None = setting(
        None,
        "token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm; null: the "
        "estimator's own",
    )
    target_kl: float | None = setting(
        None, "stop an update's epochs once approx-KL (k3) passes this", NON_NEGATIVE
    )
    ratio_threshold: float = setting(
        10.0, "skip a mini-batch whose mean ratio passes this", Range(1, low_open=True)
    )
    critic_warmup_updates: int = setting(0, "updates that train only the critic", NON_NEGATIVE)
    # --- models ---
    critic: str | None = setting(
        None,
        "separate, value_head, lora or none; null: the estimator's own (gae: separate, the "
        "others: none)",
    )
    critic_init: str | None = setting(
        None,
        "separate critic starts from: reward_model or policy; null = the RM when the reward is one",
    )
    critic_model: str | None = setting(
        None, "folder for a separate critic (null: as critic_init says)"
    )
    reference_model: str | None = setting(
        None, "separate reference (null: policy start / adapters off)"
    )
    # --- run ---
    total_updates: int = setting(20, "PPO updates to run", AT_LEAST_ONE)
    eval_every: int = setting(
        5, "evaluate on held-out prompts every N updates (and before the first)", NON_NEGATIVE
    )
    eval_prompts: int = setting(16, "held-out prompts used for evaluation", AT_LEAST_ONE)
    eval_do_sample: bool = setting(
        False, "sample at evaluation (false: greedy, comparable across runs)"
    )
    log_samples_every: int = setting(5, "sample table every N updates", NON_NEGATIVE)
    seed: int = setting(0, "seed of sampling and shuffling", SEED)
    # --- reliability ---
    on_nonfinite: str = setting(
        "stop",
        "non-finite score/advantage/loss/grad norm: stop (naming phase and update) or skip the "
        "batch",
    )
    checkpoint: CheckpointConfig = setting(
        CheckpointConfig,
        "<stage>/checkpoints/update-NNNNNN/, written to a temporary folder and renamed into place",
    )
    health: HealthConfig = setting(
        HealthConfig,
        "alarms: threshold null = off; logged as health/<name> + a warning; names in stop_on stop "
        "the run",
    )
    hacking_guard: Any = setting(
        None,
        "reward-vs-judge guard at each evaluation (needs eval.judge), e.g. {margin: 0.3, "
        "patience: 2, action: stop}; null = off",
    )

    # --- old names, still accepted ---
    mini_batch_size: Any = renamed("micro_batch_size")

    section: ClassVar[str] = "ppo"

    def __post_init__(self) -> None:
        for key, off in (("top_k", 0), ("top_p", 1.0)):
            require(
                getattr(self, key) == off,
                f"ppo.{key}",
                f"must be {off} for training: truncated sampling is not the distribution whose "
                "log-probs PPO trains (use ppo.temperature to sharpen sampling)",
            )
        check_fields(self)
        self._check_lengths()
        require(
            self.cliprange_low is not None or self.cliprange < 1,
            "ppo.cliprange",
            f"{self.cliprange} leaves no lower clip (1 - cliprange <= 0); keep it below 1 or set "
            "ppo.cliprange_low",
        )
        require(
            self.critic_warmup_updates < self.total_updates,
            "ppo.critic_warmup_updates",
            f"{self.critic_warmup_updates} warm-up updates leave none of ppo.total_updates="
            f"{self.total_updates} to train the policy",
        )
        rollout = self.batch_size * self.samples_per_prompt
        step = self.micro_batch_size * self.gradient_accumulation_steps
        require(
            rollout % step == 0,
            "ppo.batch_size",
            f"batch_size × samples_per_prompt ({rollout}) is not divisible by "
            f"micro_batch_size × gradient_accumulation_steps ({step})",
        )
        one_of(self.on_nonfinite, ("stop", "skip"), "ppo.on_nonfinite")
        one_of(self.lr_scheduler, ("constant", "linear"), "ppo.lr_scheduler")
        if self.critic_init is not None:
            one_of(self.critic_init, ("reward_model", "policy"), "ppo.critic_init")
        require(self.stop_token != "", "ppo.stop_token", "must not be empty (null: EOS)")
        self._typed_guard()
        require(
            self.hacking_guard is None or self.eval_every > 0,
            "ppo.hacking_guard",
            "acts on held-out evaluations, and ppo.eval_every=0 runs none; set eval_every >= 1",
        )

    def _typed_guard(self) -> None:
        """`hacking_guard` as a HackingGuardConfig (an open field, typed here: OmegaConf cannot
        merge `ppo.hacking_guard={...}` into a null structured node, as for eval.judge)."""
        guard = self.hacking_guard
        if isinstance(guard, dict):
            guard = self.hacking_guard = typed_section(guard, HackingGuardConfig)
        require(
            guard is None or isinstance(guard, HackingGuardConfig),
            "ppo.hacking_guard",
            f"{{margin, patience, action, kl_factor}} or null, got {guard!r}",
        )

    def check_judge(self, judged: bool) -> None:
        """What reads the judge's held-out scores needs eval.judge scored at PPO's evaluations
        (`judged`): the hacking guard, a judge best_metric. Resolves best_metric=auto."""
        self.checkpoint.resolve_best_metric(judged)
        needs = "needs eval.judge scored in PPO (set eval.judge and eval.judge_in_ppo=true)"
        require(
            judged or self.hacking_guard is None,
            "ppo.hacking_guard",
            f"compares the reward with the judge: {needs}",
        )
        metric = self.checkpoint.best_metric or ""
        require(
            judged or not metric.startswith("ppo/eval/judge_"),
            "ppo.checkpoint.best_metric",
            f"{metric!r} {needs}",
        )

    def _check_lengths(self) -> None:
        """Answer lengths: the shortest below the longest, a [min, max] sampler in order."""
        require(
            self.min_new_tokens <= self.max_new_tokens,
            "ppo.min_new_tokens",
            f"{self.min_new_tokens} is above ppo.max_new_tokens={self.max_new_tokens}",
        )
        require(
            self.overlong_buffer is None or self.overlong_buffer <= self.max_new_tokens,
            "ppo.overlong_buffer",
            f"{self.overlong_buffer} is longer than ppo.max_new_tokens={self.max_new_tokens}",
        )
        sampler = self.length_sampler
        if sampler is None:
            return
        require(len(sampler) == 2, "ppo.length_sampler", f"must be [min, max], got {list(sampler)}")
        require(
            sampler[0] <= sampler[1],
            "ppo.length_sampler",
            f"[min, max] is reversed: {list(sampler)}",
        )
        require(
            self.min_new_tokens <= sampler[0],
            "ppo.min_new_tokens",
            f"{self.min_new_tokens} is above the shortest limit ppo.length_sampler draws "
            f"({sampler[0]})",
        )
