"""Policy, reference and critic behind one interface, in the three memory layouts PPO uses.

critic kinds (`ppo.critic`):
- separate: a model of its own, backbone + one-output `score` head (the public example: the base
  model with a fresh head, every parameter trained), plus a constant `value_offset` (0 unless
  the critic was put in a calibrated reward's units, `rescale_critic`);
- value_head: a linear head on the policy's last hidden state: one forward pass gives logits and
  values;
- lora: a second LoRA adapter ("critic") plus a linear head on the policy's own frozen base, so
  one base in memory serves policy, critic and reference. PEFT freezes inactive adapters, so the
  policy and critic passes each run (and back-propagate) with their own adapter active;
- none: no value model at all (the critic-free estimators: GRPO, RLOO, REINFORCE++, ...).

Reference: a frozen model, or — for a LoRA policy with no reference configured — the policy with
its adapters disabled (no second copy in memory).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel

from rlhf.models.frozen_base import FrozenBase
from rlhf.ppo import core
from rlhf.ppo.core import upcast
from rlhf.ppo.rollout import response_slice
from rlhf.runtime import distributed, sharding

CRITIC_ADAPTER = "critic"


def new_value_head(hidden_size: int) -> nn.Linear:
    """A value head that starts at zero (lm-human-preferences): the first values are 0 rather
    than noise, so they do not blur the first advantages."""
    head = nn.Linear(hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class ActorCritic(nn.Module):
    def __init__(
        self,
        policy: PreTrainedModel,
        critic_kind: str,
        critic: PreTrainedModel | None = None,
        reference: PreTrainedModel | None = None,
    ):
        super().__init__()
        self.policy = policy
        self.critic_kind = critic_kind
        self.critic = critic
        self.reference = reference
        self.is_lora = isinstance(policy, PeftModel)
        self.frozen_base: FrozenBase | None = None  # a LoRA base held in bf16 (stages/ppo.py)
        # added to a separate critic's score head: its heads often have no bias (Llama, Gemma),
        # and a calibrated reward's bias must reach the values (`rescale_critic`)
        self.value_offset = 0.0
        if reference is None and not self.is_lora:
            raise ValueError("a full-parameter policy needs a separate reference model")
        if critic_kind == "separate" and critic is None:
            raise ValueError("critic 'separate' needs a critic model")
        if critic_kind == "lora" and (not self.is_lora or CRITIC_ADAPTER not in policy.peft_config):
            raise ValueError("critic 'lora' needs a LoRA policy with a 'critic' adapter")
        hidden = policy.config.get_text_config().hidden_size
        self.value_head = None
        if critic_kind in ("value_head", "lora"):  # float32 at least, float64 with the policy
            dtype = core.upcast(torch.zeros(0, dtype=policy.dtype)).dtype
            self.value_head = new_value_head(hidden).to(dtype)
        if reference is not None:
            reference.requires_grad_(False).eval()

    @property
    def has_critic(self) -> bool:
        return self.critic_kind != "none"

    @property
    def shares_forward(self) -> bool:
        """True when one policy pass also yields the values (value_head)."""
        return self.critic_kind == "value_head"

    def policy_parameters(self) -> list[nn.Parameter]:
        """Every parameter the policy trains: all trainable weights, or with LoRA the adapter
        and whatever else PEFT made trainable (modules_to_save copies, biases); never the
        critic adapter's."""
        with self.critic_adapter(active=False):  # PEFT marks the active adapter trainable
            return [
                p
                for n, p in self.policy.named_parameters()
                if p.requires_grad and f".{CRITIC_ADAPTER}." not in n
            ]

    def critic_parameters(self) -> list[nn.Parameter]:
        if not self.has_critic:
            return []
        if self.critic_kind == "separate":
            return [p for p in self.critic.parameters() if p.requires_grad]
        params = list(self.value_head.parameters())
        if self.critic_kind == "lora":
            params += [p for n, p in self.policy.named_parameters() if f".{CRITIC_ADAPTER}." in n]
        return params

    def shard(self, reference: bool = False) -> None:
        """FSDP2 (rlhf/runtime/sharding.py): the policy (with LoRA: its frozen base and the
        adapters inside each layer) and a separate critic's body sharded per decoder layer;
        value and score heads stay whole on every process (their gradients are summed as under
        DDP). The frozen reference stays whole unless `reference`: it has no gradients or
        moments (a quarter of a trained model's memory) and needs no gathers when whole. The
        trained weights are broadcast from the main process first (fresh heads and adapters
        are random). Not for critic=lora (trainer.check_fsdp2_settings)."""
        if self.critic_kind == "lora":
            raise ValueError("critic 'lora' cannot be sharded")
        distributed.broadcast_parameters(self.policy_parameters() + self.critic_parameters())
        sharding.shard_per_layer(self.policy.get_base_model() if self.is_lora else self.policy)
        if self.critic_kind == "separate":  # critic_forward calls its body, then its head
            sharding.shard_per_layer(self.critic, root=self.critic.base_model)
        if reference and self.reference is not None:
            sharding.shard_per_layer(self.reference)

    # --- forward passes, each returning response positions only -------------------------

    def policy_forward(
        self,
        inputs: dict[str, torch.Tensor],
        prompt_width: int,
        response_width: int,
        values_train_body: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits (B, Tr, V), values (B, Tr) when the critic shares this pass, else None).
        `values_train_body=False`: the value loss reaches the head only (critic warm-up)."""
        keep = {"use_cache": False, "logits_to_keep": response_width + 1}  # no LM head on prompt
        if not self.shares_forward:
            return self.policy(**inputs, **keep).logits[:, :-1], None
        # the last hidden state as the LM head reads it (its last Tr + 1 positions), not every
        # layer's through output_hidden_states
        captured = []
        head = self.policy.get_output_embeddings()
        hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            logits = self.policy(**inputs, **keep).logits[:, :-1]
        finally:
            hook.remove()
        hidden = captured[-1][:, :-1]  # = response_slice(last hidden state, Tq, Tr)
        if not values_train_body:
            hidden = hidden.detach()
        return logits, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    def critic_forward(
        self, inputs: dict[str, torch.Tensor], prompt_width: int, response_width: int
    ) -> torch.Tensor:
        """Values (B, Tr): V(s_t) read where token t is predicted."""
        if not self.has_critic:
            raise ValueError("critic 'none' has no values")
        if self.critic_kind == "separate":
            hidden = self.critic.base_model(**inputs).last_hidden_state
            values = self.critic.score(response_slice(hidden, prompt_width, response_width))
            return upcast(values.squeeze(-1)) + self.value_offset
        if self.critic_kind == "value_head":
            return self.policy_forward(inputs, prompt_width, response_width)[1]
        with self.critic_adapter():
            backbone = self.policy.get_base_model().base_model
            hidden = backbone(**inputs).last_hidden_state
        hidden = response_slice(hidden, prompt_width, response_width)
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)

    @torch.no_grad()
    def reference_logits(
        self, inputs: dict[str, torch.Tensor], prompt_width: int, response_width: int
    ) -> torch.Tensor:
        keep = {"use_cache": False, "logits_to_keep": response_width + 1}
        if self.reference is not None:
            logits = self.reference(**inputs, **keep).logits
        else:
            with self.policy.disable_adapter():
                logits = self.policy(**inputs, **keep).logits
        return logits[:, :-1]

    @contextlib.contextmanager
    def critic_adapter(self, active: bool = True) -> Iterator[None]:
        """Run (and back-propagate: PEFT freezes inactive adapters, and gradient checkpointing
        recomputes under the adapter active at backward time) with the critic adapter active,
        or with `active=False` the policy's; whatever was active before is restored on exit,
        so the context nests."""
        if self.critic_kind != "lora":
            yield
            return
        previous = self.policy.active_adapter
        self.policy.set_adapter(CRITIC_ADAPTER if active else "default")
        try:
            yield
        finally:
            self.policy.set_adapter(previous)

    @torch.no_grad()
    def rescale_critic(self, gain: float, bias: float) -> None:
        """Map a separate critic's values v to gain·v + bias: its score head's weight (and bias,
        where it has one) times gain, then `value_offset` = gain·offset + bias. A critic started
        from the reward model then predicts in the units of the calibrated reward
        (score' = gain·score + bias) that its returns are made of, from the first update."""
        if self.critic_kind != "separate":
            raise ValueError(f"critic {self.critic_kind!r} has no score head to rescale")
        head = self.critic.score
        head.weight.mul_(gain)
        if head.bias is not None:
            head.bias.mul_(gain)
        self.value_offset = gain * self.value_offset + bias

    # --- saving ---------------------------------------------------------------------------

    def save_critic(self, folder: Path) -> None:
        """The critic's trained weights in `folder` (nothing, and no folder, without a critic);
        a separate critic's non-zero `value_offset` in `value_offset.json` beside them."""
        if not self.has_critic:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if self.critic_kind == "separate":
            self.critic.save_pretrained(folder, safe_serialization=True)
            if self.value_offset:  # values = score head + this (no bias in most heads)
                offset = {"value_offset": self.value_offset}
                (folder / "value_offset.json").write_text(json.dumps(offset, indent=2))
            return
        head = {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()}
        save_file(head, str(folder / "value_head.safetensors"))
        if self.critic_kind == "lora":
            self.policy.save_pretrained(folder, selected_adapters=[CRITIC_ADAPTER])
