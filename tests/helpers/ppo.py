"""Building blocks for PPO tests: a briefly SFT-trained tiny policy and trainers around it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import torch

from rlhf.config import Config, DataConfig, LoggerConfig, ModelConfig, PPOConfig, RewardConfig
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.paths import PROJECT_ROOT
from rlhf.ppo.trainer import PPOTrainer
from rlhf.rewards import build_reward
from rlhf.rewards.processing import ScoreProcessor
from rlhf.runs.tracking import NullBackend, Tracker
from rlhf.stages.ppo import build_actor_critic

PROMPTS = ["今天天气怎么样？", "你是谁？", "吃了没？", "几点了？", "推荐一本书", "怎么学编程？"] * 4


def train_tiny_sft(folder: Path) -> Path:
    """A tiny model after a short SFT on the insult data: it now writes Chinese-looking answers
    that end with EOS, so PPO has something to shape (a random model almost never hits a token)."""
    command = [
        sys.executable, str(PROJECT_ROOT / "train.py"), "stage=sft", "model=tiny", "logger=none",
        "sft.learning_rate=3e-3", "sft.num_train_epochs=2", f"hydra.run.dir={folder}",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, cwd=PROJECT_ROOT)
    return folder / "sft" / "model"


def make_config(model_dir: Path, lora: bool = False, **ppo: object) -> Config:
    settings = ModelConfig(name_or_path=str(model_dir))
    settings.lora.enabled = lora
    defaults = {"batch_size": 8, "micro_batch_size": 4, "max_new_tokens": 12, "learning_rate": 1e-3}
    return Config(
        stage="ppo",
        model=settings,
        data=DataConfig(train_file="unused.jsonl"),
        reward=RewardConfig(
            kind="function",
            function={"_target_": "rlhf.rewards.text_rules.char_fraction", "chars": "你"},
        ),
        ppo=PPOConfig(**{**defaults, **ppo}),
        logger=LoggerConfig(backend="none"),
    )


def make_trainer(config: Config, stage_dir: Path, reward=None) -> PPOTrainer:
    torch.manual_seed(0)
    policy, tokenizer = load_model_and_tokenizer(config.model, config.cache_dir)
    model = build_actor_critic(config, policy, tokenizer, config.reward.model_path)
    stage_dir.mkdir(parents=True, exist_ok=True)
    return PPOTrainer(
        config.ppo,
        model,
        tokenizer,
        reward or build_reward(config.reward, None, None, config.model),
        PROMPTS,
        PROMPTS[:4],
        None,
        Tracker(stage_dir, NullBackend()),
        ScoreProcessor(1.0, False, None, config.ppo.missing_eos_penalty),
        mixed_precision=config.model.mixed_precision,
    )


def replace_ppo(config: Config, **changes: object) -> Config:
    return dataclasses.replace(config, ppo=dataclasses.replace(config.ppo, **changes))


LEARNING_SEEDS = (0, 1, 2)  # ppo.seed of the learning tests' runs (sampling and data order)


def score_rises(
    config: Config, stage_dir: Path, updates: int, window: int = 5
) -> tuple[list[float], list[list[dict[str, float]]]]:
    """Per seed of LEARNING_SEEDS: the mean score of the last `window` of `updates` updates minus
    that of the first `window` (and every update's metrics). One seed is one trajectory: on the
    tiny model a run's score takes off at an update that varies with the seed and with the
    CPU's summation order (its thread count), so the learning tests judge several."""
    rises, logged = [], []
    for seed in LEARNING_SEEDS:
        trainer = make_trainer(replace_ppo(config, seed=seed), stage_dir / f"seed{seed}")
        metrics = [trainer.step() for _ in range(updates)]
        scores = [m["ppo/objective/scores"] for m in metrics]
        rises.append(sum(scores[-window:]) / window - sum(scores[:window]) / window)
        logged.append(metrics)
    return rises, logged
