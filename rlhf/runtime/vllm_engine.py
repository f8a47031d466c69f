"""vLLM as PPO's rollout engine, in the training process (colocated: the way TRL 1.16's
`VLLMGeneration(mode="colocate")` builds it, with vLLM's `external_launcher` executor).

The engine holds the policy's base weights from its model folder and follows the policy every
update: a LoRA policy by saving its adapter (a few MB) and naming the new folder in the next
request (works on CPU and GPU); a full-parameter policy by loading its weights into the engine's
model in place, as TRL does (CUDA only: vLLM's CPU backend repacks its linear weights at load, so
they cannot be overwritten; a CPU run gets one line saying so before anything loads).

Sampling maps one to one onto ours (rlhf/runtime/generation.py): temperature, no top-k / top-p
in training, `min_tokens` (the stop token suppressed before), `max_tokens`, only our stop token
ends an answer (`ignore_eos`), one seed per answer. Each answer comes back with the engine's
log-probability of every sampled token after temperature (`processed_logprobs`), which the
trainer compares with its own (the rollout–trainer gap, rlhf/ppo/rollout_correction.py).

vLLM replaces `torch.set_num_threads` in the process where it starts (its CPU worker binds the
OpenMP threads once), so the thread count is the one the process had when the engine started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.errors import ConfigError
from rlhf.runtime import distributed, vllm_cpu_lora
from rlhf.runtime.generation import SamplingSettings
from rlhf.schemas.rollout import RolloutSettings, require_vllm

log = logging.getLogger(__name__)

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's max_lora_rank choices
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # its CPU attention's


def check_model(config, key: str = "ppo.rollout.engine") -> None:
    """What vLLM's CPU attention cannot run, refused before the engine loads anything."""
    if torch.cuda.is_available():
        return
    text = config.get_text_config()
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if head not in CPU_HEAD_SIZES:
        raise ConfigError(
            f"{key}=vllm: vLLM's CPU attention runs head sizes {list(CPU_HEAD_SIZES)}, and this "
            f"model's is {head} (a tiny model: raise model.tiny.hidden_size / num_heads)"
        )


def engine_rank(rank: int) -> int:
    """The smallest rank vLLM accepts as max_lora_rank that holds an adapter of rank `rank`."""
    for choice in LORA_RANKS:
        if choice >= rank:
            return choice
    raise ConfigError(f"model.lora.r: {rank} is above vLLM's largest LoRA rank {LORA_RANKS[-1]}")


@contextlib.contextmanager
def single_process_launch() -> Iterator[None]:
    """external_launcher reads torch.distributed's variables; a process outside a launch gets a
    world of its own (a free port), and the variables are put back afterwards."""
    if distributed.world_size() > 1 or "RANK" in os.environ:
        yield
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    own = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    own["MASTER_PORT"] = str(port)
    saved = {key: os.environ.get(key) for key in own}
    os.environ.update(own)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class EngineAnswer:
    tokens: list[int]  # the sampled tokens, the stop token included where the answer ended
    logprobs: list[float]  # the engine's log-probability of each, after temperature


class VLLMEngine:
    """A colocated vLLM engine on the policy's base folder, following the policy (`follow`)
    and sampling answers to already-encoded prompts (`sample`)."""

    def __init__(
        self,
        model_folder: str | Path,
        settings: RolloutSettings,
        *,
        lora_rank: int | None,
        max_model_len: int,
        seed: int,
    ):
        require_vllm()
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its start-up notes, not ours
        from vllm import LLM

        self.lora_rank = lora_rank
        self.version: int | None = None
        self.lora_request = None
        self._adapters = Path(tempfile.mkdtemp(prefix="rlhf-vllm-adapters-"))
        # removed when the engine goes or the process exits, whichever comes first
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._adapters, True)
        arguments = dict(
            model=str(model_folder),
            dtype=settings.dtype,
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=not settings.compile,
            distributed_executor_backend="external_launcher",
            logprobs_mode="processed_logprobs",  # after temperature: the distribution sampled
            kv_cache_memory_bytes=int(settings.kv_cache_gib * 2**30),
            max_num_batched_tokens=4096,  # as TRL: vLLM's default misleads its memory profiler
        )
        if lora_rank is not None:
            arguments.update(enable_lora=True, max_lora_rank=engine_rank(lora_rank), max_loras=1)
            if not torch.cuda.is_available():
                vllm_cpu_lora.install()  # one adapter for every token: one matmul, not one a token
        started = time.perf_counter()
        with single_process_launch():
            self.llm = LLM(**arguments)
        self.start_seconds = time.perf_counter() - started
        log.info(
            "rollout engine: vLLM on %s (%s, %s), started in %.1f s",
            model_folder, settings.dtype, "LoRA" if lora_rank else "full weights",
            self.start_seconds,
        )  # fmt: skip

    def follow(self, policy: torch.nn.Module, version: int) -> None:
        """Make the engine sample from `policy` as it is now (`version`: the update it samples
        for); a no-op when it already does."""
        if version == self.version:
            return
        if self.lora_rank is not None:
            self._follow_adapter(policy, version)
        else:
            self._load_weights(policy)
        self.version = version

    def _follow_adapter(self, policy, version: int) -> None:
        from vllm.lora.request import LoRARequest

        folder = self._adapters / f"update-{version:06d}"
        # the policy's adapter only (a LoRA critic's stays out); each process saves its own
        policy.save_pretrained(str(folder), selected_adapters=["default"])
        self.lora_request = LoRARequest(f"policy-{version}", version + 1, str(folder))
        for old in self._adapters.iterdir():  # vLLM reads an adapter when first named
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)

    def _load_weights(self, policy) -> None:
        """In-place weight loading, one tensor at a time, as TRL 1.16's colocated engine does it
        (`VLLMGeneration.sync_weights`; CUDA)."""
        model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, param in policy.state_dict().items():
            model.load_weights([(name, param.data)])
        self.llm.reset_prefix_cache()  # cached prompt states came from the old weights

    def sample(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: SamplingSettings,
        stop_token_id: int,
        seeds: Sequence[int] | None,
    ) -> list[EngineAnswer]:
        """One answer per prompt (token ids, no padding), each with its own seed."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        seeds = list(seeds) if seeds is not None else [None] * len(prompt_ids)
        params = [
            SamplingParams(
                temperature=settings.temperature if settings.do_sample else 0.0,
                top_k=settings.top_k or -1,
                top_p=settings.top_p,
                min_tokens=settings.min_new_tokens,
                max_tokens=settings.max_new_tokens,
                stop_token_ids=[stop_token_id],
                ignore_eos=True,  # only our stop token ends an answer, as in generate
                logprobs=0,  # the sampled token's own
                detokenize=False,
                seed=seed,
            )
            for seed in seeds
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, lora_request=self.lora_request, use_tqdm=False)
        answers = []
        for output in outputs:
            completion = output.outputs[0]
            tokens = list(completion.token_ids)
            logprobs = [
                step[token].logprob for step, token in zip(completion.logprobs, tokens, strict=True)
            ]
            answers.append(EngineAnswer(tokens, logprobs))
        return answers

    def close(self) -> None:
        """Remove the saved adapters now (the engine itself stays until the process ends)."""
        self._cleanup()
