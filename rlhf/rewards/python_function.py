"""Reward from any Python function named by `_target_`: fn(prompts, completions, **kwargs)."""

from __future__ import annotations

import functools
from typing import Any

from hydra.utils import get_method

from rlhf.errors import ConfigError


def function_reward(spec: dict[str, Any], key: str = "reward.function"):
    """The function with the spec's other keys bound as keyword arguments; `key` names the spec
    in errors."""
    kwargs = {key: value for key, value in spec.items() if key != "_target_"}
    try:
        function = get_method(spec["_target_"])
    except Exception as exc:
        raise ConfigError(f"{key}._target_: cannot import {spec['_target_']!r}") from exc
    return functools.partial(function, **kwargs)
