"""Stage `ppo`: our PPO trainer (rlhf/ppo) on the configured policy, reward and critic.

Inputs by convention: the policy is `model.*` (the pipeline hands over the SFT model), the reward
model defaults to the run's reward model (the model of the stage declared as producing one,
rlhf/stages/table.py), prompts are the data set's train prompts and the held-out
evaluation prompts the last `ppo.eval_prompts` of its test prompts (the eval stage answers the
first `eval.num_prompts`: the two sets must not overlap when a pipeline runs both stages).
Outputs in `<run>/ppo/`: `model/` (merged policy and tokenizer, loadable like any model folder:
the policy `ppo.checkpoint.hand_on` picks, the best checkpoint's by default), `adapter/` for a
LoRA policy, `critic/`, `plots/`, `checkpoints/` (rlhf/ppo/checkpoint.py) and
`best_checkpoint.json`; `run_info.json` says which update was kept and why (`kept`). With
`reward.calibrate`, a separate critic started from the reward model is put in the calibrated
reward's units after calibration. With `resume`, the newest checkpoint is loaded after the
models are built and training continues from its update.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
from pathlib import Path

from peft import get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from rlhf.config import Config
from rlhf.data.loading import limit_lengths, load_preference_data
from rlhf.errors import ConfigError, ModelLoadError
from rlhf.models.checks import check_kind, check_lora_targets
from rlhf.models.frozen_base import cast_frozen_base
from rlhf.models.loading import (
    check_trainable_precision,
    load_model_and_tokenizer,
    load_model_report,
    lora_config,
    resolve_model_dir,
)
from rlhf.models.low_precision import cast_frozen_linears
from rlhf.models.saving import save_model
from rlhf.models.tokenizers import check_tokenizers_agree, tokenizer_at
from rlhf.ppo.actor_critic import CRITIC_ADAPTER, ActorCritic
from rlhf.ppo.checkpoint import Checkpointer
from rlhf.ppo.trainer import PPOTrainer
from rlhf.ppo.validation import check_fsdp2_settings
from rlhf.reporting.plots import plot_ppo_run
from rlhf.reporting.rm_report import score_spread
from rlhf.rewards import RewardFunction, build_reward
from rlhf.rewards.ensemble import member_folders
from rlhf.rewards.judge import Judge, build_judge
from rlhf.rewards.processing import ScoreProcessor
from rlhf.rewards.reward_model import decision_threshold
from rlhf.runs.folders import RunPaths
from rlhf.runs.tracking import Tracker
from rlhf.runtime import distributed, sharding
from rlhf.runtime.vllm_engine import VLLMEngine, check_model
from rlhf.stages.context import StageContext, stage_context
from rlhf.stages.table import PIPELINE, REWARD_MODEL, producer

log = logging.getLogger(__name__)


def critic_source(config: Config, reward_model: str | None) -> tuple[str | None, str]:
    """(folder a separate critic starts from, what it is): `ppo.critic_model`, else the reward
    model when `ppo.critic_init` says so (the default when the reward is a reward model: N+
    implementation details, OpenRLHF), else the policy's starting point."""
    ppo = config.ppo
    if ppo.critic_model is not None:
        return ppo.critic_model, "ppo.critic_model"
    init = ppo.critic_init
    if init is None:
        init = "reward_model" if config.reward.kind == "reward_model" else "policy"
    if init == "reward_model":
        return reward_model, "the reward model"
    return config.model.name_or_path, "the policy's starting point"


def load_separate_critic(
    config: Config, tokenizer: PreTrainedTokenizerBase, reward_model: str | None
) -> PreTrainedModel:
    """A one-output sequence classifier on the critic's starting folder. A reward model keeps
    its trained head; a folder without one (a causal LM) gets transformers' fresh head."""
    source, what = critic_source(config, reward_model)
    if source is None:
        raise ConfigError(
            "ppo.critic_init: the separate critic starts from the reward model, and there is "
            "none here; set reward.model_path, ppo.critic_model or ppo.critic_init=policy"
        )
    settings = config.model.pointing_to(source)
    folder = resolve_model_dir(settings, config.cache_dir)
    critic, new = load_model_report(folder, settings, tokenizer, kind="reward")
    check_kind(folder, "reward", new, new_head=True)  # the body must come from the folder
    head = [name for name in new if name.startswith("score.")]
    if head and what == "the reward model":
        raise ModelLoadError(
            f"ppo.critic_init: {folder} has no trained score head, so it is not a reward model "
            "(set reward.model_path to an rm stage's model, or ppo.critic_init=policy)"
        )
    log.info("critic: separate, from %s (%s)%s", what, folder, ", new head" if head else "")
    return critic.eval()


def build_actor_critic(
    config: Config,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: str | None = None,
    reference: PreTrainedModel | None = None,
    critic: PreTrainedModel | None = None,
) -> ActorCritic:
    """Wrap the policy with LoRA if configured and attach reference and critic (see ActorCritic).
    A `reference` or separate `critic` given as a model is used as it is, else built from
    the config."""
    ppo, settings = config.ppo, config.model
    given_reference = reference
    if reference is None and ppo.reference_model is not None:
        reference_settings = settings.pointing_to(ppo.reference_model)
        reference = load_model_and_tokenizer(reference_settings, config.cache_dir)[0]
    elif reference is None and not settings.lora.enabled:
        reference = copy.deepcopy(policy)  # frozen snapshot of the starting policy
    if critic is not None and ppo.critic != "separate":
        raise ConfigError(f"a critic model was given, but ppo.critic={ppo.critic} builds none")
    if ppo.critic == "separate":
        critic = critic or load_separate_critic(config, tokenizer, reward_model)
        check_trainable_precision(critic, "the critic")
    if settings.lora.enabled:
        num_layers = policy.config.num_hidden_layers
        check_lora_targets(policy, settings.lora)
        policy = get_peft_model(policy, lora_config(settings.lora, num_layers))
        if ppo.critic == "lora":
            # the critic's adapter: the same layout, but no copies of modules_to_save (the
            # critic reads hidden states; an LM head copy would be trained by nothing)
            critic_lora = dataclasses.replace(settings.lora, modules_to_save=None)
            policy.add_adapter(CRITIC_ADAPTER, lora_config(critic_lora, num_layers))
            policy.set_adapter("default")
    model = ActorCritic(policy.eval(), ppo.critic, critic=critic, reference=reference)
    # a reference built here (a caller's model is used as it is); FSDP2 wants one dtype a layer
    built_here = model.reference is not None and model.reference is not given_reference
    if built_here and not ppo.shard_reference:
        cast_frozen_linears(model.reference, settings.mixed_precision)
    if model.is_lora and not sharding.fsdp2_requested(os.environ):  # FSDP2: one dtype a layer
        model.frozen_base = cast_frozen_base(model.policy, settings.mixed_precision)
    check_trainable_precision(model.policy, "the policy")
    return model


def partner_tokenizers(config: Config, reward_model: str) -> dict[str, PreTrainedTokenizerBase]:
    """Tokenizers of the models PPO pairs with the policy, where they come from elsewhere."""
    critic = critic_source(config, reward_model)[0] if config.ppo.critic == "separate" else None
    partners = {
        "critic": critic if critic != config.model.name_or_path else None,
        "reference": config.ppo.reference_model,
        "reward model": reward_model if config.reward.kind == "reward_model" else None,
    }
    if config.reward.kind == "ensemble":  # each member reads the policy's token ids
        folders = member_folders(config.reward.members, "reward.members")
        partners.update({f"ensemble member {i}": str(f) for i, f in enumerate(folders)})
    return {
        f"{name} ({path})": tokenizer_at(path, config.model, config.cache_dir)
        for name, path in partners.items()
        if path is not None
    }


def load_prompts(
    config: Config, tokenizer: PreTrainedTokenizerBase, check: bool = False
) -> tuple[list[str], list[str], str]:
    """(train prompts, the last ppo.eval_prompts held-out prompts, the data's fingerprint),
    within data.max_prompt_length. `check`: `check_held_out` on the test split's size."""
    data = load_preference_data(config.data)
    train = limit_lengths(data.train, tokenizer, config.data, "train", answers=())["prompt"]
    test = list(limit_lengths(data.test, tokenizer, config.data, "test", answers=())["prompt"])
    if check:
        check_held_out(config, len(test))
    held_out = test[max(0, len(test) - config.ppo.eval_prompts) :]
    return list(train), held_out, data.fingerprint


def check_held_out(config: Config, available: int) -> None:
    """PPO evaluates on the last ppo.eval_prompts test prompts, the eval stage on the first
    eval.num_prompts, so that the eval stage grades the handed-on policy on prompts that PPO's
    checkpoint choice and hacking guard never saw. Too small a test split for both: refused when
    this run's pipeline also runs the eval stage, a warning otherwise."""
    ppo, graded = config.ppo, config.eval.num_prompts
    if not ppo.eval_every or available >= graded + ppo.eval_prompts:
        return
    problem = (
        f"the test split has {available} prompts (within data.max_prompt_length), fewer than "
        f"eval.num_prompts={graded} + ppo.eval_prompts={ppo.eval_prompts}, so PPO's held-out "
        "prompts (the last) would be among the eval stage's (the first)"
    )
    # a stage's config section is named as the stage (rlhf/stages/table.py)
    if config.stage == PIPELINE and config.eval.section in config.pipeline.stages:
        raise ConfigError(f"ppo.eval_prompts: {problem}; lower one of the two")
    log.warning(
        "ppo.eval_prompts: %s: an eval stage run on this policy later would grade answers to "
        "prompts that PPO's evaluations (and its checkpoint choice) saw",
        problem,
    )


def reward_threshold(config: Config, reward_model: str | None) -> float:
    """The reward's decision threshold (`ppo/eval/above_threshold`), as the eval stage takes
    it: eval.threshold, else a reward model's own (midway between its mean chosen and rejected
    test scores), else 0."""
    if config.eval.threshold is not None:
        return config.eval.threshold
    if config.reward.kind == "reward_model" and reward_model is not None:
        return decision_threshold(Path(reward_model))
    return 0.0


def new_trainer(
    config: Config,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tracker: Tracker,
    reward: RewardFunction,
    prompts: tuple[list[str], list[str]],
    reward_model: str | None = None,
    judge: Judge | None = None,
    reference: PreTrainedModel | None = None,
    critic: PreTrainedModel | None = None,
    threshold: float = 0.0,
) -> PPOTrainer:
    """The actor-critic around `policy` and the PPO trainer on it, as this stage and
    rlhf.session.PPOSession build them. `prompts`: (train prompts, held-out prompts);
    `threshold`: the reward's decision threshold."""
    fsdp2 = sharding.fsdp2_requested(os.environ)  # accelerate/fsdp.yaml
    if fsdp2:
        check_fsdp2_settings(config.ppo, config.model.mixed_precision)
    model = build_actor_critic(config, policy, tokenizer, reward_model, reference, critic)
    model = model.to(distributed.device())
    if distributed.world_size() > 1:  # trained weights are broadcast; samples must differ
        set_seed(config.seed + distributed.rank())
    if fsdp2:
        model.shard(reference=config.ppo.shard_reference)
    processor = ScoreProcessor(
        config.reward.scale,
        config.reward.normalize,
        config.reward.clip,
        config.ppo.missing_eos_penalty,
        gather=distributed.gather_1d,  # normalise with the moments of the global batch
    )
    return PPOTrainer(
        config.ppo,
        model,
        tokenizer,
        reward,
        prompts[0],
        prompts[1],
        config.data.system_prompt,
        tracker,
        processor,
        mixed_precision=config.model.mixed_precision,
        judge=judge,
        threshold=threshold,
        engine=rollout_engine(config, model),
    )


def rollout_engine(config: Config, model: ActorCritic) -> VLLMEngine | None:
    """The vLLM engine that samples PPO's rollouts (ppo.rollout.engine=vllm), on the policy's
    starting folder, or None (the policy samples). Under FSDP2 it was refused before anything
    loaded (rlhf.pipeline.check_launch_engine)."""
    settings = config.ppo.rollout
    if settings.engine != "vllm":
        return None
    check_model(model.policy.config)
    positions = model.policy.config.get_text_config().max_position_embeddings
    return VLLMEngine(
        resolve_model_dir(config.model, config.cache_dir),
        settings,
        lora_rank=config.model.lora.r if model.is_lora else None,
        max_model_len=settings.max_model_len or min(positions, 4096),
        seed=config.ppo.seed + distributed.rank(),
    )


def session_context(config: Config, run_dir: Path) -> contextlib.AbstractContextManager:
    """The ppo stage's folder, run record and tracker in `run_dir`, for a PPOSession."""
    return stage_context(config, RunPaths(run_dir), "ppo")


def save_outputs(ctx: StageContext, model: ActorCritic, tokenizer: PreTrainedTokenizerBase) -> None:
    model.save_critic(ctx.stage_dir / "critic")
    policy = model.policy
    if model.is_lora:
        policy.save_pretrained(ctx.stage_dir / "adapter", selected_adapters=["default"])
        if model.critic_kind == "lora":
            policy.delete_adapter(CRITIC_ADAPTER)
        if model.frozen_base is not None:  # merged into float32, not into the bf16 copy
            model.frozen_base.restore(policy)
    save_model(policy, tokenizer, ctx.model_dir)


def evaluation_judge(config: Config, reward_model: Path) -> Judge | None:
    """`eval.judge`, scored at each held-out evaluation (`ppo/eval/judge_*`) when
    `eval.judge_in_ppo`; it must not be the RM this run trains against."""
    if not config.eval.judge_in_ppo:
        return None
    trained_against = reward_model if config.reward.kind == "reward_model" else None
    return build_judge(config.eval, config.data.system_prompt, config.model, trained_against)


def last_logged_update(stage_dir: Path) -> dict[str, float]:
    """Metrics of the last logged update (a resume whose checkpoint was already the last)."""
    records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if "ppo/objective/scores" in r]
    return updates[-1] if updates else {}


def critic_from_reward_model(config: Config, reward_model: str | None) -> bool:
    """Whether this run's separate critic starts from the reward model (ppo.critic_init)."""
    separate = config.ppo.critic == "separate"
    return separate and critic_source(config, reward_model)[1] == "the reward model"


def calibrate(
    config: Config, trainer: PPOTrainer, prompts: list[str], reward_model: str | None
) -> dict:
    """reward.calibrate on a fresh start: the gain and bias that give the starting policy's
    sampled answers mean 0 and std 1. A separate critic started from the reward model outputs
    raw reward-model scores, while the returns it learns are calibrated (and reward.scale'd):
    its values are rescaled to those units (ActorCritic.rescale_critic). A resume takes both
    from the checkpoint instead."""
    gain, bias, scores = trainer.calibrate_reward(prompts[: config.reward.calibrate_samples])
    calibrated = {"gain": gain, "bias": bias, "start_scores": score_spread(scores)}
    if critic_from_reward_model(config, reward_model):
        scale = config.reward.scale  # processed score = (gain·raw + bias)·scale before clipping
        trainer.model.rescale_critic(gain * scale, bias * scale)
        calibrated["critic"] = {"gain": gain * scale, "bias": bias * scale}
        log.info(
            "critic (from the reward model) in the calibrated reward's units: "
            "value·%.4f %+.4f",
            gain * scale, bias * scale,
        )  # fmt: skip
    return calibrated


def log_calibration(ctx: StageContext, calibrated: dict) -> None:
    """The calibration in run_info, reward_calibration.json, the tracker (step 0) and the log."""
    gain, bias, spread = calibrated["gain"], calibrated["bias"], calibrated["start_scores"]
    ctx.info["reward_calibration"] = calibrated
    if distributed.is_main_process():
        (ctx.stage_dir / "reward_calibration.json").write_text(json.dumps(calibrated, indent=2))
    start = {f"ppo/start/score_{name}": value for name, value in spread.items()}
    ctx.tracker.log({"ppo/reward_gain": gain, "ppo/reward_bias": bias, **start}, step=0)
    log.info("reward calibrated on the starting policy: score·%.4f %+.4f", gain, bias)
    log.info(
        "reward on the starting policy's %d sampled answers: mean %.3g, std %.3g, "
        "p10 %.3g, median %.3g, p90 %.3g (min %.3g, max %.3g)",
        *(spread[k] for k in ("n", "mean", "std", "p10", "median", "p90", "min", "max")),
    )


def hand_on(
    ctx: StageContext, config: Config, trainer: PPOTrainer, checkpointer: Checkpointer
) -> dict[str, float]:
    """Put the policy ppo.checkpoint.hand_on picks into the model the stage saves; say which
    and why (log line, run_info `kept`); returns `ppo/kept_update` and the kept checkpoint's
    held-out metrics as `ppo/kept/<name>`."""
    kept = checkpointer.hand_on(trainer)
    stopped = trainer.guard.stopped
    ctx.info["kept"] = {**kept, "hand_on": config.ppo.checkpoint.hand_on,
                        "stopped_by_guard": stopped}  # fmt: skip
    where = f" ({kept['checkpoint']})" if kept["checkpoint"] else ""
    ended = f"; training ended early: {stopped}" if stopped else ""
    log.info("ppo: hands on the policy of update %d%s: %s%s", kept["update"], where,
             kept["reason"], ended)  # fmt: skip
    metrics = {"ppo/kept_update": float(kept["update"])}
    if stopped:
        metrics["ppo/guard/stopped_at"] = float(trainer.update)
    metrics.update(
        {f"ppo/kept/{k.removeprefix('ppo/eval/')}": v for k, v in kept["held_out"].items()}
    )
    return metrics


def run(config: Config, paths: RunPaths) -> dict[str, float]:
    with stage_context(config, paths, "ppo") as ctx:
        policy, tokenizer = load_model_and_tokenizer(config.model, config.cache_dir)
        ctx.info["policy_start"] = config.model.name_or_path
        prompts, held_out, ctx.info["data_fingerprint"] = load_prompts(
            config, tokenizer, check=True
        )
        reward_stage = producer(REWARD_MODEL, config.pipeline.stages).name
        reward_model = config.reward.model_path or str(paths.model_dir(reward_stage))
        check_tokenizers_agree("policy", tokenizer, partner_tokenizers(config, reward_model))
        reward = build_reward(
            config.reward, Path(reward_model), config.data.system_prompt, config.model
        )
        judge = evaluation_judge(config, Path(reward_model))
        trainer = new_trainer(
            config, policy, tokenizer, ctx.tracker, reward, (prompts, held_out),
            reward_model, judge, threshold=reward_threshold(config, reward_model),
        )  # fmt: skip
        model = trainer.model
        checkpointer = Checkpointer(
            config.ppo.checkpoint, ctx.stage_dir, config.ppo.total_updates, ctx.tracker.run_id
        )
        if ctx.resume is not None:  # calibration and all state come from the checkpoint
            checkpointer.resume(trainer, ctx.resume.checkpoint)
        elif config.reward.calibrate:
            log_calibration(ctx, calibrate(config, trainer, prompts, reward_model))
        last = trainer.train(checkpointer) or last_logged_update(ctx.stage_dir)
        ctx.info["best_checkpoint"] = checkpointer.best
        kept = hand_on(ctx, config, trainer, checkpointer)
        sharding.release_whole_weights(model)  # FSDP2: the main process ends whole
        if distributed.is_main_process():  # the weights are the same on every process
            save_outputs(ctx, model, tokenizer)
            plot_ppo_run(ctx.stage_dir)
        keys = ("ppo/objective/scores", "ppo/objective/kl", "ppo/objective/rlhf_reward")
        ctx.final_metrics = {key: last[key] for key in keys if key in last}
        ctx.final_metrics.update({k: v for k, v in last.items() if k.startswith("ppo/eval/")})
        ctx.final_metrics.update(kept)
    return ctx.final_metrics
