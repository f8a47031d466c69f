"""Reward sources behind one interface: `score(prompts, completions, tokens=None) -> (N,)
float tensor`; `tokens` (ResponseTokens) carries the token ids of policy answers, which a reward
model reads instead of re-rendering the text.

- reward_model: a trained one-output sequence classifier (rm stage output), read at the last
  real token of the chat-formatted conversation (rlhf/models/scoring.py);
- function: any Python callable named by `_target_` (prompts, completions → list of floats);
- classifier: a transformers text-classification pipeline, one label's logit or probability;
- weighted: a weighted sum of the above;
- ensemble: several reward-model folders, aggregated per answer by mean, min or mean − std
  (rlhf/rewards/ensemble.py).
Every source is wrapped by `checked`, so a reward that raises, returns the wrong number of
scores, or returns NaN stops the run with one line naming it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rlhf.config import ModelConfig, RewardConfig
from rlhf.errors import ConfigError, RewardError
from rlhf.rewards.tokens import ResponseTokens

RewardFunction = Callable[..., torch.Tensor]  # (prompts, completions, tokens=None) -> (N,)


def text_only(function: Callable[[list[str], list[str]], object]) -> RewardFunction:
    """A reward of text alone (user functions, classifiers): the token ids are not passed on."""

    def score(prompts: list[str], completions: list[str], tokens: ResponseTokens | None = None):
        return function(prompts, completions)

    return score


def with_tokens_argument(function: Callable) -> RewardFunction:
    """`function` itself when it takes the `tokens` argument, else `text_only(function)`: any
    callable of (prompts, completions) serves as a reward."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin or C callable: assume text only
        return text_only(function)
    takes_tokens = (
        "tokens" in parameters
        or len(parameters) >= 3
        or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters.values())
    )
    return function if takes_tokens else text_only(function)


def as_scores(raw: object, name: str) -> torch.Tensor:
    """What a reward source returned as a flat float tensor (N,): a tensor, an array, or a flat
    list of real numbers; anything else (strings, None, nested or ragged lists) is a
    RewardError naming the source and what it returned, not a torch error."""
    if isinstance(raw, torch.Tensor) or hasattr(raw, "__array__"):
        try:
            tensor = torch.as_tensor(raw)
        except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a numpy array of strings
            raise RewardError(f"reward {name} returned an array torch cannot read: {exc}") from exc
        if tensor.is_complex() or tensor.dtype == torch.bool:
            raise RewardError(f"reward {name} returned a tensor of {tensor.dtype}, not real scores")
        return tensor.to(torch.float32).flatten().cpu()
    if not isinstance(raw, (list, tuple)):
        raise RewardError(
            f"reward {name} returned {type(raw).__name__} {_short(raw)}, not a list of scores"
        )
    for index, item in enumerate(raw):
        if not is_real_number(item):
            raise RewardError(
                f"reward {name} returned a list whose item {index} is "
                f"{type(item).__name__} {_short(item)}, not a number (one score per completion)"
            )
    return torch.tensor([float(item) for item in raw], dtype=torch.float32)


def is_real_number(item: object) -> bool:
    """A Python int or float (not a bool), or a 0-d numpy/torch number."""
    if isinstance(item, bool):
        return False
    if isinstance(item, (int, float)):
        return True
    is_scalar = hasattr(item, "item") and getattr(item, "ndim", 1) == 0
    return is_scalar and getattr(item, "dtype", None) not in (np.bool_, torch.bool)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def checked(source: RewardFunction, name: str) -> RewardFunction:
    """Wrap a source so that bad output is caught where it happens, with its name."""
    source = with_tokens_argument(source)

    def score(
        prompts: list[str], completions: list[str], tokens: ResponseTokens | None = None
    ) -> torch.Tensor:
        try:
            raw = source(prompts, completions, tokens)
        except Exception as exc:
            raise RewardError(f"reward {name} raised {type(exc).__name__}: {exc}") from exc
        scores = as_scores(raw, name)
        if scores.numel() != len(completions):
            raise RewardError(
                f"reward {name} returned {scores.numel()} scores for {len(completions)} completions"
            )
        if not torch.isfinite(scores).all():
            bad = int((~torch.isfinite(scores)).sum())
            raise RewardError(f"reward {name} returned {bad} non-finite score(s) (NaN or inf)")
        return scores

    return score


def build_reward(
    cfg: RewardConfig,
    default_model_path: Path | None,
    system_prompt: str | None,
    model_settings: ModelConfig,
) -> RewardFunction:
    """The configured reward source, checked. `cfg` is `reward`, `eval.judge` or a component of
    either; errors name its keys (`cfg.section`)."""
    if cfg.kind == "reward_model":
        from rlhf.rewards.reward_model import RewardModelScorer

        path = cfg.model_path or default_model_path
        if path is None:
            raise ConfigError(f"{cfg.section}.model_path: set the folder of a trained reward model")
        return checked(RewardModelScorer(Path(path), system_prompt, model_settings), str(path))
    if cfg.kind == "function":
        from rlhf.rewards.python_function import function_reward

        target = cfg.function["_target_"]
        return checked(text_only(function_reward(cfg.function, f"{cfg.section}.function")), target)
    if cfg.kind == "classifier":
        from rlhf.rewards.classifier import ClassifierScorer

        scorer = ClassifierScorer(cfg.classifier, cfg.label, cfg.use_logit, cfg.section)
        return checked(text_only(scorer), cfg.classifier)
    if cfg.kind == "ensemble":
        return checked(ensemble_reward(cfg, system_prompt, model_settings), "ensemble")
    parts = [
        (weight, build_reward(part, default_model_path, system_prompt, model_settings))
        for weight, part in cfg.weighted_parts()
    ]

    def weighted(
        prompts: list[str], completions: list[str], tokens: ResponseTokens | None = None
    ) -> torch.Tensor:
        return sum(weight * part(prompts, completions, tokens) for weight, part in parts)

    return checked(weighted, "weighted")


def ensemble_reward(
    cfg: RewardConfig, system_prompt: str | None, model_settings: ModelConfig
) -> RewardFunction:
    """`cfg.members` (folders or patterns) as reward models, each scoring the whole batch in one
    call, their (M, N) scores aggregated by `cfg.aggregate`."""
    from rlhf.rewards.ensemble import aggregate, member_folders
    from rlhf.rewards.reward_model import RewardModelScorer

    folders = member_folders(cfg.members, f"{cfg.section}.members")
    members = [RewardModelScorer(folder, system_prompt, model_settings) for folder in folders]

    def ensemble(
        prompts: list[str], completions: list[str], tokens: ResponseTokens | None = None
    ) -> torch.Tensor:
        scores = torch.stack([member(prompts, completions, tokens) for member in members])
        return aggregate(scores, cfg.aggregate, cfg.std_coef)

    return ensemble
