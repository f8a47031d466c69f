"""`eval.judge`: a second, independent reward scored beside the training reward at evaluation.

A policy optimised against a learnt reward finds what that reward likes, which need not be the
goal: the insult RM learnt "short = rude" and PPO shortened its answers to "好。" and "我。",
which the RM called 92 % rude and no Chinese reader would (experiments/insult_ppo/REPORT.md).
The judge is any reward config (a reward-model folder, a `_target_` Python function such as the
rule-based `rlhf.rewards.rudeness.rudeness_judge`, a classifier, or a weighted sum of them): the
gold reward of an over-optimisation study. It must not share training data with the PPO reward
model, and it cannot be the very folder PPO trained against. It scores the answers' text raw (no
scale, normalisation or calibration). The eval stage logs it as `eval/<model>/judge_score`
beside `eval/<model>/score`, PPO's periodic evaluation as `ppo/eval/judge_score`; the
reward-hacking check that compares the two is rlhf/stages/hacking.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rlhf.config import EvalConfig, ModelConfig, RewardConfig
from rlhf.errors import ConfigError
from rlhf.paths import resolve_path
from rlhf.rewards import RewardFunction, build_reward
from rlhf.rewards.reward_model import decision_threshold


@dataclasses.dataclass
class Judge:
    score: RewardFunction  # (prompts, completions) → (N,) raw judge scores
    threshold: float  # a score above it counts (for a rudeness judge: rude)


def build_judge(
    settings: EvalConfig,
    system_prompt: str | None,
    model_settings: ModelConfig,
    training_reward_model: Path | None,
) -> Judge | None:
    """The configured judge and its threshold (`eval.judge_threshold`; null: a judge RM's own
    midpoint, else 0); None when `eval.judge` is null. `training_reward_model`: the RM folder
    the policy trained against (None when its reward is no RM), which a judge RM must not be."""
    cfg = settings.judge
    if cfg is None:
        return None
    for part in reward_model_parts(cfg):
        check_judge_folder(part, training_reward_model)
    score = build_reward(cfg, None, system_prompt, model_settings)
    threshold = settings.judge_threshold
    if threshold is None:
        threshold = (
            decision_threshold(resolve_path(cfg.model_path)) if cfg.kind == "reward_model" else 0.0
        )
    return Judge(score, threshold)


def check_judge_folder(part: RewardConfig, training_reward_model: Path | None) -> None:
    """A judge RM's folder exists (or is a hub id) and is not the RM the policy trains against."""
    folder = resolve_path(part.model_path)
    hub_id = part.model_path.count("/") <= 1 and not part.model_path.startswith((".", "/", "~"))
    if not folder.exists() and not hub_id:
        raise ConfigError(f"{part.section}.model_path: folder {folder} does not exist")
    if (
        training_reward_model is not None
        and folder.resolve() == resolve_path(training_reward_model).resolve()
    ):
        raise ConfigError(
            f"{part.section}.model_path: {part.model_path} is the reward model the policy "
            "trains against; a judge must be independent of it"
        )


def reward_model_parts(cfg: RewardConfig) -> list[RewardConfig]:
    """The reward-model configs in `cfg`: itself, or the components of a weighted sum."""
    if cfg.kind == "reward_model":
        return [cfg]
    if cfg.kind == "weighted":
        return [rm for _, part in cfg.weighted_parts() for rm in reward_model_parts(part)]
    return []
