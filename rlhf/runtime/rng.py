"""This process's global random states (Python, NumPy, torch, CUDA) as tensors and plain values,
so that a checkpoint holding them loads with `torch.load(weights_only=True)`."""

from __future__ import annotations

import random

import numpy as np
import torch


def global_rng_states() -> dict:
    numpy_state = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [
            numpy_state[0],
            torch.from_numpy(numpy_state[1].astype(np.int64)),
            *numpy_state[2:],
        ],  # fmt: skip
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_global_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    name, key, *rest = states["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
