"""PPO from your own loop: the classic step API (TRL ≤ 0.11's `generate` / `step` /
`log_stats` / `save_model`) on this project's PPO engine.

    from rlhf.session import PPOSession, compose

    with PPOSession(compose(["experiment=keyword_ppo"])) as session:
        for _ in range(session.config.ppo.total_updates):
            queries = session.next_queries()           # or any list of prompt strings
            responses = session.generate(queries)      # token ids and texts
            scores = my_reward(responses.texts)        # a list of floats, or a tensor
            stats = session.step(queries, responses, scores)
            session.log_stats(stats, responses, scores)
        session.save("my_ppo_model")

`generate` is phase 1 of train.py's loop (the trainer's `sample`) and `step` phases 2–8
(rlhf/ppo/trainer.py): the same methods of the same trainer, so a session and
`python train.py stage=ppo` given the same config, prompts and rewards make the same updates. A session is one run folder (`run_dir`, the ppo
stage's files: run_info.json, metrics.jsonl, the W&B / TensorBoard run) and runs in one process.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf.app import check_folders, typed_config, unwritable_problem
from rlhf.config import Config, register_schemas
from rlhf.errors import ConfigError, RewardError
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.models.saving import save_model
from rlhf.paths import PROJECT_ROOT, folder_path_problem
from rlhf.ppo.checkpoint import load_checkpoint, save_checkpoint
from rlhf.ppo.metrics import SAMPLE_COLUMNS, sample_rows
from rlhf.ppo.rollout import Responses
from rlhf.ppo.trainer import PPOTrainer
from rlhf.rewards import is_real_number
from rlhf.runs.resume import ppo_checkpoint_problem
from rlhf.runtime import distributed
from rlhf.runtime.generation import encode_prompts
from rlhf.stages.ppo import load_prompts, new_trainer, session_context

SAMPLING_KEYS = ("max_new_tokens", "min_new_tokens")


def compose(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> Config:
    """The typed config train.py would run with these overrides (conf/, validated the same
    way). `output_dir`: the session's run folder (default outputs/<name>/session-<time>)."""
    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = hydra_compose("config", overrides=[*overrides, "output_dir=."])
    finally:
        GlobalHydra.instance().clear()
    if output_dir is None:
        output_dir = Path("outputs") / cfg.name / time.strftime("session-%Y-%m-%d_%H-%M-%S")
    cfg.output_dir = str(output_dir)
    config = typed_config(cfg)
    check_folders(config)
    return config


def _no_reward(prompts, completions, tokens=None):
    raise RewardError("PPOSession has no reward source: pass the scores to step()")


class PPOSession:
    """PPO driven by your loop. Build it from a typed `Config` (`compose([...])`); the policy
    and tokenizer are loaded from `model.*` unless given as objects, and the reference and a
    separate critic are built as train.py builds them unless given (`reference`, `critic`).
    `queries` default to the configured data set's train prompts (`next_queries`)."""

    def __init__(
        self,
        config: Config,
        policy: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        reference: PreTrainedModel | None = None,
        critic: PreTrainedModel | None = None,
        queries: list[str] | None = None,
    ):
        if distributed.world_size() > 1:
            raise ConfigError("PPOSession runs in one process; for several use train.py")
        if (policy is None) != (tokenizer is None):
            raise ConfigError("PPOSession: give the policy and its tokenizer together, or neither")
        check_folders(config)  # the run folder (output_dir) and the caches it writes
        self.run_dir = Path(config.output_dir)
        self._stack = contextlib.ExitStack()
        # seeded as the ppo stage is: the same fresh heads and adapters as train.py's
        self._context = self._stack.enter_context(session_context(config, self.run_dir))
        try:
            if policy is None:
                policy, tokenizer = load_model_and_tokenizer(config.model, config.cache_dir)
            if queries is None:
                queries = load_prompts(config, tokenizer)[0]
            self.config, self.tokenizer = config, tokenizer
            self.trainer: PPOTrainer = new_trainer(
                config, policy, tokenizer, self._context.tracker, _no_reward,
                (list(queries), []), config.reward.model_path, reference=reference, critic=critic,
            )  # fmt: skip
        except BaseException:  # the run record says failed, the tracker's run is finished
            self._stack.__exit__(*sys.exc_info())
            raise
        self._last: dict[str, float] = {}

    # --- the loop -------------------------------------------------------------------------

    @property
    def update(self) -> int:
        """Updates done (`step` calls that reached the weights or skipped a batch)."""
        return self.trainer.update

    @property
    def policy(self) -> PreTrainedModel:
        return self.trainer.model.policy

    def next_queries(self) -> list[str]:
        """The next update's prompts from `queries`, in train.py's seeded order (reshuffled
        each pass), each repeated ppo.samples_per_prompt times: ppo.batch_size × that many."""
        return self.trainer.next_prompts()[0]

    def generate(self, queries: Sequence[str], **sampling: int) -> Responses:
        """Sample one answer per query (a user turn, chat-formatted with data.system_prompt as
        train.py does): KV cache, left-padded prompts, cut after ppo.stop_token, one seed per
        answer from (ppo.seed, update, row). `sampling`: max_new_tokens, min_new_tokens (the
        latter only as ppo.min_new_tokens, and the temperature is ppo.temperature: the log-probs
        in `step` are of that distribution).
        Returns Responses: `.texts`, `.tokens` (1-D ids each), `.ended`, padded `.responses`
        (B, Tr) and `.mask`."""
        queries = self._checked_queries(queries)
        unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
        if unknown:
            raise ConfigError(
                f"generate: unknown sampling setting(s) {unknown}; it takes {list(SAMPLING_KEYS)} "
                "(temperature is ppo.temperature; PPO samples the whole distribution)"
            )
        settings = self.trainer.sampling_settings(evaluation=False)
        for key, value in sampling.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"generate: {key}={value!r} is not a count of tokens")
            setattr(settings, key, value)
        if settings.min_new_tokens != self.trainer.config.min_new_tokens:
            # step's log-probs forbid the stop token where ppo.min_new_tokens says, as sampled
            raise ConfigError(
                f"generate: min_new_tokens={settings.min_new_tokens} differs from "
                f"ppo.min_new_tokens={self.trainer.config.min_new_tokens}: step trains on the "
                "distribution ppo.min_new_tokens samples; set that instead"
            )
        if settings.max_new_tokens < 1 or settings.min_new_tokens > settings.max_new_tokens:
            raise ConfigError(
                f"generate: need 1 <= min_new_tokens ({settings.min_new_tokens}) <= "
                f"max_new_tokens ({settings.max_new_tokens})"
            )
        return self.trainer.sample(queries, update=self.update + 1, settings=settings)

    def step(
        self,
        queries: Sequence[str],
        responses: Responses | Sequence[str] | Sequence[Sequence[int] | torch.Tensor],
        scores: Sequence[float] | torch.Tensor,
    ) -> dict[str, float]:
        """One PPO update on these answers and their scores: score shaping (reward.scale,
        normalize, clip, ppo.missing_eos_penalty, overlong penalty), log-probs, values and
        reference log-probs recomputed by forward passes, KL-shaped rewards, the configured
        advantage estimator, ppo_epochs × mini-batches, the numeric guards and health alarms.

        `responses`: what `generate` returned, or answers made elsewhere (an inference server):
        texts (tokenised without special tokens, taken as finished: the stop token is added)
        or token ids (cut after the first stop token; ended only if they contain it). Their
        log-probs under the policy are recomputed here, so they are treated as sampled from
        it at ppo.temperature. `scores`: one finite number per answer (B,).
        Returns the update's metrics (the keys train.py logs: ppo/objective/*, ppo/policy/*,
        ppo/val/*, ppo/loss/*, timing/*, health/*)."""
        queries = self._checked_queries(queries)
        batch = self._responses(queries, responses)
        raw = checked_scores(scores, len(queries))
        self._check_groups(queries)
        trainer = self.trainer
        trainer.begin_update()
        metrics = trainer.learn(trainer.process_scores(batch, raw))
        alarms = trainer.observe_health(metrics)
        trainer.health.stop_if_configured(alarms, self.update, "the last save(), if any")
        self._last = metrics
        return metrics

    def log_stats(
        self,
        stats: dict[str, float],
        batch: Responses | None = None,
        scores: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Log `stats` (what `step` returned) at this update to the configured tracker (W&B,
        TensorBoard, metrics.jsonl). With `batch`, its rows go to the `ppo/samples` table
        (prompt, response, score, KL, length, EOS) as train.py logs them; with `scores`,
        env/reward_mean and env/reward_std of the raw scores are added."""
        metrics = dict(stats)
        if scores is not None:
            raw = checked_scores(scores, None)
            metrics["env/reward_mean"] = raw.mean().item()
            metrics["env/reward_std"] = raw.std().item() if raw.numel() > 1 else 0.0
        rollout = self.trainer.last_rollout
        if batch is not None:
            if rollout is None or rollout.texts != list(batch.texts):
                raise ConfigError("log_stats: batch is not the one the last step trained on")
            rows = sample_rows(rollout, self.update)
            self._context.tracker.log_table("ppo/samples", SAMPLE_COLUMNS, rows)
        self._context.tracker.log(metrics, step=self.update)

    # --- state ----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """`path/model/`: the policy as a plain model folder (LoRA merged into a copy; loads
        with from_pretrained, train.py's model.name_or_path, rlhf.chat); `path/critic/`;
        `path/checkpoint/`: everything `load` needs to continue exactly (weights, optimiser,
        scheduler, RNG and data order, KL controller, score normaliser)."""
        path = Path(path)
        problem = folder_path_problem(path) or unwritable_problem(path)
        if problem is not None:
            raise ConfigError(f"save: {problem}")
        save_checkpoint(self.trainer, path / "checkpoint", {"run_id": self._context.tracker.run_id})
        model = self.trainer.model
        policy = copy.deepcopy(model.policy) if model.is_lora else model.policy
        if model.is_lora and model.critic_kind == "lora":
            policy.delete_adapter("critic")
        if model.frozen_base is not None:  # the copy merges into float32, not into bf16
            model.frozen_base.restore(policy)
        save_model(policy, self.tokenizer, path / "model")
        model.save_critic(path / "critic")
        return path

    def load(self, path: str | Path) -> None:
        """Continue from what `save(path)` wrote (the same config: the trained tensors must
        match by name)."""
        path = Path(path)
        folder = path / "checkpoint"
        if path.exists() and not path.is_dir():
            raise ConfigError(f"load: {path} is a file, not a folder written by save()")
        if not folder.is_dir():
            raise ConfigError(f"load: {folder} does not exist (write it with save({str(path)!r}))")
        problem = ppo_checkpoint_problem(folder)
        if problem is not None:
            raise ConfigError(f"load: {folder} is not a whole checkpoint: {problem}")
        load_checkpoint(self.trainer, folder)

    def close(self) -> None:
        """Finish the run: its record says complete, with the last step's ppo/objective/*."""
        self._context.final_metrics = {
            k: v for k, v in self._last.items() if k.startswith("ppo/objective/")
        }
        self._stack.close()

    def __enter__(self) -> PPOSession:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:  # the run record says failed, with the error
            self._stack.__exit__(kind, value, traceback)

    # --- input checks ---------------------------------------------------------------------

    def _checked_queries(self, queries: Sequence[str]) -> list[str]:
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise ConfigError("queries: give a list of prompt strings (one user turn each)")
        if not queries:
            raise ConfigError("queries: the list is empty")
        return list(queries)

    def _check_groups(self, queries: list[str]) -> None:
        """Critic-free estimators take statistics over consecutive groups of
        ppo.samples_per_prompt answers to one prompt."""
        group = self.config.ppo.samples_per_prompt
        if group < 2:
            return
        if len(queries) % group:
            raise ConfigError(
                f"step: {len(queries)} answers do not split into groups of "
                f"ppo.samples_per_prompt={group}"
            )
        for start in range(0, len(queries), group):
            if len(set(queries[start : start + group])) != 1:
                raise ConfigError(
                    f"step: queries {start}..{start + group - 1} are not one prompt repeated "
                    f"(ppo.samples_per_prompt={group} answers per prompt, consecutive)"
                )

    def _responses(self, queries: list[str], given: Any) -> Responses:
        if isinstance(given, Responses):
            if given.prompts != queries:
                raise ConfigError("step: responses were generated for other queries")
            return given
        if isinstance(given, (str, torch.Tensor)) or len(given) != len(queries):
            count = "a single value" if isinstance(given, (str, torch.Tensor)) else len(given)
            raise ConfigError(f"step: {count} responses for {len(queries)} queries (one each)")
        return responses_from(self.trainer, queries, list(given))


def responses_from(trainer: PPOTrainer, queries: list[str], given: list) -> Responses:
    """Responses made elsewhere as texts or token ids, laid out as `generate`'s are."""
    tokenizer, stop = trainer.tokenizer, trainer.stop_token_id
    vocab = trainer.model.policy.get_input_embeddings().num_embeddings
    rows = []
    for index, answer in enumerate(given):
        if isinstance(answer, str):
            ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [stop]
        elif isinstance(answer, torch.Tensor) and answer.dim() == 1:
            ids = answer.tolist()
        elif isinstance(answer, (list, tuple)) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in answer
        ):
            ids = list(answer)
        else:
            raise ConfigError(
                f"step: responses[{index}] is {type(answer).__name__}, not a text or a 1-D "
                "sequence of token ids"
            )
        if not ids:
            raise ConfigError(f"step: responses[{index}] is empty")
        if stop in ids:  # cut after the first stop token, as sampling does
            ids = ids[: ids.index(stop) + 1]
        if min(ids) < 0 or max(ids) >= vocab:
            raise ConfigError(f"step: responses[{index}] has token ids outside [0, {vocab})")
        rows.append(ids)
    width = max(len(ids) for ids in rows)
    padded = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    for index, ids in enumerate(rows):
        padded[index, : len(ids)] = torch.tensor(ids)
    # from lengths, never from the pad id (pad may be the stop token)
    lengths = torch.tensor([len(ids) for ids in rows])
    mask = torch.arange(width)[None, :] < lengths[:, None]
    ended = torch.tensor([ids[-1] == stop for ids in rows])
    responses = padded
    device = trainer.model.policy.device
    encoded = encode_prompts(tokenizer, queries, trainer.system_prompt, device)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    limit = max(trainer.config.max_new_tokens, width)  # the overlong penalty's length limit
    return Responses(
        queries, encoded, responses.to(device), mask.to(device), ended.to(device), texts, limit
    )


def checked_scores(scores: Any, expected: int | None) -> torch.Tensor:
    """One finite float per answer as a float32 tensor (N,); anything else is one error line
    naming the problem (wrong count, a string, NaN)."""
    if isinstance(scores, torch.Tensor) or hasattr(scores, "__array__"):
        try:
            tensor = torch.as_tensor(scores)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise RewardError(f"step: scores could not be read as numbers ({exc})") from exc
        if tensor.dtype == torch.bool or tensor.is_complex() or tensor.dim() > 1:
            raise RewardError(f"step: scores must be real numbers (N,), got {tensor.dtype} "
                              f"of shape {tuple(tensor.shape)}")  # fmt: skip
        values = tensor.to(torch.float32).flatten().tolist()
    elif isinstance(scores, (list, tuple)):
        values = []
        for index, item in enumerate(scores):
            if isinstance(item, torch.Tensor) and item.numel() == 1:
                item = item.reshape(())
            if not is_real_number(item):  # what a reward source may return, the same test
                raise RewardError(f"step: scores[{index}] is {type(item).__name__} "
                                  f"{item!r:.40}, not a number")  # fmt: skip
            values.append(float(item))
    else:
        raise RewardError(f"step: scores is {type(scores).__name__}, not a list of numbers")
    if expected is not None and len(values) != expected:
        raise RewardError(f"step: {len(values)} scores for {expected} responses (one each)")
    bad = [i for i, v in enumerate(values) if not torch.isfinite(torch.tensor(v))]
    if bad:
        raise RewardError(f"step: scores[{bad[0]}] is {values[bad[0]]} (scores must be finite)")
    return torch.tensor(values, dtype=torch.float32)
