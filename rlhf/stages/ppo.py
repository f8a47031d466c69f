"""Stage `ppo`: our PPO trainer (rlhf/ppo) on the configured policy, reward and critic.

Inputs by convention: the policy is `model.*` (the pipeline hands over the SFT model), the reward
model defaults to `<run>/rm/model`, prompts are the data set's train prompts and the held-out
evaluation prompts its test prompts. Outputs in `<run>/ppo/`: `model/` (merged policy and
tokenizer, loadable like any model folder), `adapter/` for a LoRA policy, `critic/`, `plots/`,
`checkpoints/` (rlhf/ppo/checkpoint.py) and `best_checkpoint.json`. With `resume`, the newest
checkpoint is loaded after the models are built and training continues from its update.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path

from peft import get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from rlhf.config import Config
from rlhf.data import limit_lengths, load_preference_data
from rlhf.judge import build_judge
from rlhf.models import (
    check_tokenizers_agree,
    load_model,
    load_model_and_tokenizer,
    lora_config,
    resolve_model_dir,
    tokenizer_at,
)
from rlhf.plots import plot_ppo_run
from rlhf.ppo import distributed
from rlhf.ppo.actor_critic import CRITIC_ADAPTER, ActorCritic
from rlhf.ppo.checkpoint import Checkpointer
from rlhf.ppo.trainer import PPOTrainer
from rlhf.rewards import build_reward
from rlhf.rewards.processing import ScoreProcessor
from rlhf.stages.common import RunPaths, StageContext, save_model, stage_context

log = logging.getLogger(__name__)


def build_actor_critic(
    config: Config, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> ActorCritic:
    """Wrap the policy with LoRA if configured and attach reference and critic (see ActorCritic)."""
    ppo, settings = config.ppo, config.model
    reference = None
    if ppo.reference_model is not None:
        reference_settings = dataclasses.replace(settings, name_or_path=ppo.reference_model)
        reference = load_model_and_tokenizer(reference_settings, config.cache_dir)[0]
    elif not settings.lora.enabled:
        reference = copy.deepcopy(policy)  # frozen snapshot of the starting policy
    critic = None
    if ppo.critic == "separate":
        critic_settings = dataclasses.replace(
            settings, name_or_path=ppo.critic_model or settings.name_or_path
        )
        critic_dir = resolve_model_dir(critic_settings, config.cache_dir)
        critic = load_model(critic_dir, critic_settings, tokenizer, kind="reward").eval()
    if settings.lora.enabled:
        num_layers = policy.config.num_hidden_layers
        policy = get_peft_model(policy, lora_config(settings.lora, num_layers))
        if ppo.critic == "lora":
            policy.add_adapter(CRITIC_ADAPTER, lora_config(settings.lora, num_layers))
            policy.set_adapter("default")
    return ActorCritic(policy.eval(), ppo.critic, critic=critic, reference=reference)


def partner_tokenizers(config: Config, reward_model: str) -> dict[str, PreTrainedTokenizerBase]:
    """Tokenizers of the models PPO pairs with the policy, where they come from elsewhere."""
    partners = {
        "critic": config.ppo.critic_model if config.ppo.critic == "separate" else None,
        "reference": config.ppo.reference_model,
        "reward model": reward_model if config.reward.kind == "reward_model" else None,
    }
    return {
        f"{name} ({path})": tokenizer_at(path, config.model, config.cache_dir)
        for name, path in partners.items()
        if path is not None
    }


def save_outputs(ctx: StageContext, model: ActorCritic, tokenizer: PreTrainedTokenizerBase) -> None:
    model.save_critic(ctx.stage_dir / "critic")
    policy = model.policy
    if model.is_lora:
        policy.save_pretrained(ctx.stage_dir / "adapter", selected_adapters=["default"])
        if model.critic_kind == "lora":
            policy.delete_adapter(CRITIC_ADAPTER)
    save_model(policy, tokenizer, ctx.model_dir)


def last_logged_update(stage_dir: Path) -> dict[str, float]:
    """Metrics of the last logged update (a resume whose checkpoint was already the last)."""
    records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in records if "ppo/objective/scores" in r]
    return updates[-1] if updates else {}


def run(config: Config, paths: RunPaths, resolved: dict) -> dict[str, float]:
    with stage_context(config, paths, "ppo", resolved) as ctx:
        data = load_preference_data(config.data)
        ctx.info["data_fingerprint"] = data.fingerprint
        policy, tokenizer = load_model_and_tokenizer(config.model, config.cache_dir)
        ctx.info["policy_start"] = config.model.name_or_path
        prompts = limit_lengths(data.train, tokenizer, config.data, "train", answers=())["prompt"]
        test = limit_lengths(data.test, tokenizer, config.data, "test", answers=())["prompt"]
        reward_model = config.reward.model_path or str(paths.model_dir("rm"))
        check_tokenizers_agree("policy", tokenizer, partner_tokenizers(config, reward_model))
        reward = build_reward(
            config.reward, Path(reward_model), config.data.system_prompt, config.model
        )
        model = build_actor_critic(config, policy, tokenizer).to(distributed.device())
        if distributed.world_size() > 1:  # trained weights are broadcast; samples must differ
            set_seed(config.seed + distributed.rank())
        processor = ScoreProcessor(
            config.reward.scale,
            config.reward.normalize,
            config.reward.clip,
            config.ppo.missing_eos_penalty,
            gather=distributed.gather_1d,  # normalise with the moments of the global batch
        )
        trainer = PPOTrainer(
            config.ppo,
            model,
            tokenizer,
            reward,
            list(prompts),
            list(test[: config.ppo.eval_prompts]),
            config.data.system_prompt,
            ctx.tracker,
            processor,
            mixed_precision=config.model.mixed_precision,
            judge=build_judge(config) if config.eval.judge_in_ppo else None,
        )
        checkpointer = Checkpointer(
            config.ppo.checkpoint, ctx.stage_dir, config.ppo.total_updates, ctx.tracker.run_id
        )
        if ctx.resume is not None:  # calibration and all state come from the checkpoint
            checkpointer.resume(trainer, ctx.resume.checkpoint)
        elif config.reward.calibrate:
            gain, bias = trainer.calibrate_reward(list(prompts[: config.reward.calibrate_samples]))
            ctx.info["reward_calibration"] = {"gain": gain, "bias": bias}
            if distributed.is_main_process():
                (ctx.stage_dir / "reward_calibration.json").write_text(
                    json.dumps({"gain": gain, "bias": bias}, indent=2)
                )
            ctx.tracker.log({"ppo/reward_gain": gain, "ppo/reward_bias": bias}, step=0)
            log.info("reward calibrated on the starting policy: score·%.4f %+.4f", gain, bias)
        last = trainer.train(checkpointer) or last_logged_update(ctx.stage_dir)
        ctx.info["best_checkpoint"] = checkpointer.best
        if distributed.is_main_process():  # the weights are the same on every process
            save_outputs(ctx, model, tokenizer)
            plot_ppo_run(ctx.stage_dir)
        keys = ("ppo/objective/scores", "ppo/objective/kl", "ppo/objective/rlhf_reward")
        ctx.final_metrics = {key: last[key] for key in keys if key in last}
        ctx.final_metrics.update({k: v for k, v in last.items() if k.startswith("ppo/eval/")})
    return ctx.final_metrics
