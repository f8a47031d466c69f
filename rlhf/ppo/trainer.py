"""The PPO loop for language models, in numbered phases per update.

1. sample: responses to a batch of prompts (KV cache), cut after the first stop token;
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
Where each part lives: phases 1–2 rlhf/ppo/sampling.py, 3–5 advantages.py, 6 update.py (the
optimiser and its schedule: optimiser.py), evaluation evaluation.py, numeric guards
numeric_guards.py, what a checkpoint holds trainer_state.py, start-time checks validation.py;
this module builds the trainer and runs the loop.
Words: a mini-batch is what one optimiser step learns from, a micro-batch one forward/backward,
a group the samples_per_prompt answers to one prompt.
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
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from rlhf import algorithms
from rlhf.config import PPOConfig
from rlhf.errors import NumericError
from rlhf.ppo.actor_critic import ActorCritic
from rlhf.ppo.advantages import AdvantagePhases
from rlhf.ppo.batch_stats import reduce_metrics
from rlhf.ppo.evaluation import evaluate
from rlhf.ppo.guard import HackingGuard
from rlhf.ppo.health import Alarm, HealthMonitor
from rlhf.ppo.kl_control import make_kl_controller
from rlhf.ppo.metrics import SAMPLE_COLUMNS, rollout_metrics, sample_rows
from rlhf.ppo.numeric_guards import stop_or_skip
from rlhf.ppo.optimiser import make_optimizer, make_scheduler, optimised_parameters
from rlhf.ppo.precision import MixedPrecision, checkpointing_in_eval, describe_precision
from rlhf.ppo.rollout import Rollout
from rlhf.ppo.sampling import SamplingPhases
from rlhf.ppo.trainer_state import TrainerState
from rlhf.ppo.update import UpdatePhase
from rlhf.ppo.validation import check_precision, stop_token_id
from rlhf.rewards import RewardFunction, with_tokens_argument
from rlhf.rewards.processing import ScoreProcessor
from rlhf.runs.tracking import Tracker
from rlhf.runtime import distributed, sharding
from rlhf.runtime.host_memory import release_free_memory

if TYPE_CHECKING:
    from rlhf.ppo.checkpoint import Checkpointer
    from rlhf.rewards.judge import Judge
    from rlhf.runtime.vllm_engine import VLLMEngine

log = logging.getLogger(__name__)


class PPOTrainer(SamplingPhases, AdvantagePhases, UpdatePhase, TrainerState):
    """PPO (or a critic-free estimator: GRPO, RLOO, ...) on a causal LM: `step` runs one update
    (phases 1–7 of this module's docstring), `train` every update to ppo.total_updates with
    evaluation, health alarms and checkpoints. `sample_and_score` and `learn` are the two
    halves of `step`, for a caller that brings its own answers and scores
    (rlhf.session.PPOSession); `state_dict` / `load_state_dict` are what a checkpoint holds.

    `model` holds policy, reference and critic (rlhf.stages.ppo.build_actor_critic);
    `reward_fn(prompts, texts)` (or with a third `tokens` argument) scores answers (B,);
    `score_processor` shapes the raw scores; `eval_prompts` are held out for `evaluate`;
    `engine` (rlhf.runtime.vllm_engine.VLLMEngine) samples the rollouts instead of the policy.
    On a tiny random model, offline:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from rlhf.config import Config, PPOConfig
    >>> from rlhf.models.loading import load_model_and_tokenizer
    >>> from rlhf.ppo.trainer import PPOTrainer
    >>> from rlhf.rewards.processing import ScoreProcessor
    >>> from rlhf.runs.tracking import NullBackend, Tracker
    >>> from rlhf.stages.ppo import build_actor_critic
    >>> folder = Path(tempfile.mkdtemp())
    >>> ppo = PPOConfig(batch_size=4, micro_batch_size=2, max_new_tokens=8, critic="value_head")
    >>> config = Config(stage="ppo", cache_dir=str(folder), ppo=ppo)
    >>> policy, tokenizer = load_model_and_tokenizer(config.model, config.cache_dir)
    >>> model = build_actor_critic(config, policy, tokenizer)
    >>> def longer_is_better(prompts, texts):
    ...     return torch.tensor([len(text) / 8 for text in texts])
    >>> trainer = PPOTrainer(
    ...     config.ppo, model, tokenizer, longer_is_better,
    ...     prompts=["Hello", "Who are you?", "Tell me a joke", "What time is it?"],
    ...     eval_prompts=[], system_prompt=None, tracker=Tracker(folder, NullBackend()),
    ...     score_processor=ScoreProcessor(1.0, False, None, config.ppo.missing_eos_penalty))
    >>> metrics = trainer.step()
    >>> trainer.update, "ppo/loss/policy" in metrics, "ppo/objective/kl" in metrics
    (1, True, True)
    """

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
        engine: VLLMEngine | None = None,
    ):
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.engine = engine  # samples the rollouts (ppo.rollout.engine=vllm); None: the policy
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
        check_precision(config, mixed_precision)
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
            distributed.broadcast_parameters(optimised_parameters(self.optimizer))
        self.precision = MixedPrecision(mixed_precision, model.policy.device)
        self.scheduler = make_scheduler(self.optimizer, config)
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
            rollout = self.sample_and_score(*self.next_prompts())
        except NumericError as exc:
            return self._skip_batch(exc)
        spent = time.perf_counter() - self._update_started
        self._timings["generate"] = spent - self._timings["score"]  # logged as timing/generate
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
            self.estimate_advantages(rollout)
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
        stop_or_skip(self.config.on_nonfinite, exc, "batch")
        self.scheduler.step()
        return {"ppo/nonfinite_skipped_batches": 1.0}

    @property
    def controller_kl_metric(self) -> str:
        """The KL the adaptive controller steers: the penalty's own where it estimates KL
        (k1, k3, exact), k1 where the penalty is another function of the log-ratio (k2, abs)."""
        if algorithms.kl_estimator(self.config.kl_estimator).estimates_kl:
            return "ppo/objective/kl"
        return "ppo/objective/kl_k1"

    def evaluate(self) -> dict[str, float]:
        """Held-out prompts with the evaluation sampling settings (greedy by default); each
        process answers its share, the statistics cover all of them (rlhf/ppo/evaluation.py).
        Their answers go to the `ppo/eval_samples` table."""
        self._timings = defaultdict(float)
        metrics, rows = evaluate(
            self.sample_and_score, self.eval_prompts, self.config.batch_size,
            self.model.policy, self.judge, self.threshold, self.update,
        )  # fmt: skip
        self.tracker.log_table("ppo/eval_samples", SAMPLE_COLUMNS, rows)
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
