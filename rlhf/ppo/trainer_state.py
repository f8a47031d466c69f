"""What a PPO checkpoint holds of the trainer (rlhf/ppo/checkpoint.py writes and reads it):
the trained tensors, the optimiser's whole state laid out as its parameters, the scheduler,
the random generators, and the small JSON-able state of the loop (update count, data order,
KL controller, score normaliser, health history, hacking guard, critic value offset)."""

from __future__ import annotations

import random
from typing import Any

import torch

from rlhf.errors import ConfigError
from rlhf.ppo.actor_critic import ActorCritic
from rlhf.ppo.guard import HackingGuard
from rlhf.ppo.health import HealthMonitor
from rlhf.ppo.kl_control import FixedKLController
from rlhf.ppo.optimiser import is_sharded, optimised_parameters
from rlhf.rewards.processing import ScoreProcessor
from rlhf.runtime import sharding
from rlhf.runtime.rng import global_rng_states, restore_global_rng_states


def whole_optimizer_state(
    optimizer: torch.optim.Optimizer, sharded: bool, main: bool
) -> dict[str, Any] | None:
    """The optimiser's whole state: with ZeRO-1 the moments gathered on the main process (None
    on the others); under FSDP2 (`sharded`) every moment gathered whole on every process."""
    if is_sharded(optimizer):
        optimizer.consolidate_state_dict(to=0)
        return optimizer.state_dict() if main else None
    state = optimizer.state_dict()
    if sharded:  # the same order on every process, so the gathers pair up
        state["state"] = {
            index: {key: sharding.whole(value) for key, value in moments.items()}
            for index, moments in state["state"].items()
        }
    return state


def laid_out_like_parameters(
    state: dict[str, Any], params: list[torch.nn.Parameter], sharded: bool
) -> dict[str, Any]:
    """A saved (whole) optimiser state with each moment laid out as its parameter `params`
    (in the optimiser's order): this process's shard under FSDP2, as it is otherwise."""
    if not sharded:
        return state
    moments = {
        index: {
            key: sharding.like(value, params[index])
            if torch.is_tensor(value) and value.shape == params[index].shape
            else value
            for key, value in entry.items()
        }
        for index, entry in state["state"].items()
    }
    return {**state, "state": moments}


class TrainerState:
    """Save and restore of PPOTrainer (a base class of it): reads and sets the attributes
    below, which the trainer's __init__ builds."""

    model: ActorCritic
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    processor: ScoreProcessor
    health: HealthMonitor
    kl_controller: FixedKLController
    guard: HackingGuard
    rng: random.Random
    torch_rng: torch.Generator
    update: int
    sharded: bool
    _order: list[int]
    _main: bool

    def trainable_tensors(self) -> dict[str, torch.Tensor]:
        """Name → every trained parameter (tied weights once, by their first name)."""
        trained = {id(p) for p in self.model.policy_parameters() + self.model.critic_parameters()}
        return {name: p for name, p in self.model.named_parameters() if id(p) in trained}

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact continuation needs: the `trainable` tensors, the `optimizer` and
        `scheduler` states, this process's `rng` states (global and the trainer's own), and the
        JSON-able `update`, `data_order`, `kl_controller`, `score_processor`, `health`, `guard`
        and `value_offset` (a separate critic's, `ActorCritic.value_offset`).
        Every process calls it: with a sharded optimiser (ZeRO-1) the moments are gathered on
        the main process, and only its `optimizer` entry is set (None on the others); under
        FSDP2 the sharded weights and moments are gathered whole on every process."""
        processor = self.processor
        return {
            "update": self.update,
            "data_order": list(self._order),
            "kl_controller": self.kl_controller.state_dict(),
            "score_processor": {
                "moments": processor.moments.state_dict(),
                "gain": processor.gain,
                "bias": processor.bias,
            },
            "health": self.health.state_dict(),
            "guard": self.guard.state_dict(),
            "value_offset": self.model.value_offset,
            # whole tensors: under FSDP2 gathered from every process's shard
            "trainable": {k: sharding.whole(v) for k, v in self.trainable_tensors().items()},
            "optimizer": whole_optimizer_state(self.optimizer, self.sharded, self._main),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                **global_rng_states(),
                "trainer_python": self.rng.getstate(),
                "trainer_torch": self.torch_rng.get_state(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put the trainer back in the state `state_dict` gave (the full optimiser state, this
        process's RNG states). Raises ConfigError when the trained tensors differ in name."""
        self.load_trainable(state["trainable"])
        params = optimised_parameters(self.optimizer)
        self.optimizer.load_state_dict(
            laid_out_like_parameters(state["optimizer"], params, self.sharded)
        )
        self.scheduler.load_state_dict(state["scheduler"])
        restore_global_rng_states(state["rng"])
        self.rng.setstate(state["rng"]["trainer_python"])
        self.torch_rng.set_state(state["rng"]["trainer_torch"])
        self.update = state["update"]
        self._order = list(state["data_order"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        processor = state["score_processor"]
        self.processor.moments.load_state_dict(processor["moments"])
        self.processor.gain, self.processor.bias = processor["gain"], processor["bias"]
        self.health.load_state_dict(state["health"])
        self.guard.load_state_dict(state.get("guard"))  # absent: written before the guard
        self.model.value_offset = state.get("value_offset", 0.0)

    def load_trainable(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy saved trained tensors (`state_dict()["trainable"]`) into the model. Raises
        ConfigError when they differ in name."""
        expected = self.trainable_tensors()
        if set(tensors) != set(expected):
            missing = sorted(set(expected) - set(tensors))[:3]
            raise ConfigError(f"does not match this model (tensors missing: {missing})")
        with torch.no_grad():
            for name, tensor in tensors.items():
                expected[name].copy_(sharding.like(tensor, expected[name]))
