"""Start-time checks of a PPO run, refused with one line naming the key before any update:
what PPO under FSDP2 does not do, the precision settings that do not combine, and the stop
token (which must be one token of the tokenizer)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from rlhf.config import PPOConfig
from rlhf.errors import ConfigError


def check_fsdp2_settings(config: PPOConfig, mixed_precision: str) -> None:
    """What PPO under FSDP2 does not do (yet), refused before the models are built."""
    if config.critic == "lora":
        raise ConfigError(
            "ppo.critic=lora: not under FSDP2 (its pass calls the policy's body past the "
            "sharded root); use ppo.critic=separate or value_head"
        )
    if config.shard_optimizer:
        raise ConfigError(
            "ppo.shard_optimizer: not under FSDP2 (it shards the optimiser state already); "
            "leave it false"
        )
    if config.drop_uniform_groups:
        raise ConfigError(
            "ppo.drop_uniform_groups: not under FSDP2 (a process with nothing to train would "
            "skip backward passes that the others' gradient reduction waits for); use ddp.yaml"
        )
    if mixed_precision == "fp16":
        raise ConfigError("model.mixed_precision=fp16: not under FSDP2 (loss scaler); use bf16")
    if config.critic_warmup_updates:
        raise ConfigError(
            "ppo.critic_warmup_updates: not under FSDP2 (the policy's pass would have no "
            "backward for its gradient reduction); use ddp.yaml or 0"
        )


def check_precision(config: PPOConfig, mixed_precision: str) -> None:
    """Precision settings that do not combine with the optimiser's."""
    if config.shard_optimizer and mixed_precision == "fp16":
        raise ConfigError(
            "ppo.shard_optimizer: not with model.mixed_precision=fp16 (the loss scaler "
            "unscales gradients through the optimiser); use bf16"
        )


def stop_token_id(tokenizer: PreTrainedTokenizerBase, stop_token: str | None) -> int:
    """The id generation stops at: EOS, or `stop_token` (a vocabulary entry, or text that
    encodes to exactly one token)."""
    if stop_token is None:
        return tokenizer.eos_token_id
    vocabulary = tokenizer.get_vocab()
    if stop_token in vocabulary:
        return vocabulary[stop_token]
    ids = tokenizer(stop_token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(
            f"ppo.stop_token: {stop_token!r} is not one token of this tokenizer "
            f"(it encodes to {len(ids)} tokens)"
        )
    # an unknown text encodes to the unknown token, which generation never ends on
    if ids[0] == tokenizer.unk_token_id or tokenizer.decode(ids) != stop_token:
        raise ConfigError(
            f"ppo.stop_token: {stop_token!r} is not in this tokenizer's vocabulary (it encodes "
            f"to {tokenizer.convert_ids_to_tokens(ids[0])!r}, so answers would stop nowhere)"
        )
    return ids[0]
