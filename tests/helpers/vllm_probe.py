"""Runs PPO with its rollouts on vLLM on a tiny LoRA policy, in a process of its own, and prints
what the tests check as one JSON line: `python -m tests.helpers.vllm_probe OUT_DIR DTYPE`.

A process of its own because vLLM's CPU worker binds the OpenMP threads and replaces
`torch.set_num_threads` in the process where it starts; the test process keeps its own.

What it measures:
- three PPO updates through the real trainer (rlhf.stages.ppo.new_trainer) with the engine: the
  answers trained on are the engine's (its log-probs came with them), which trainable tensors
  moved, the logged log-prob gap;
- the engine's answers to the same prompts and seeds, twice (reproducible in one process), and a
  digest of the first update's answers (the test compares it across processes);
- greedy answers after the adapter changes: they change, and each token the engine chose is
  the HF model's argmax up to a tolerance, by teacher forcing the engine's answers through the
  HF policy (robust to near-ties, unlike comparing the two greedy strings).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from rlhf.config import (
    Config,
    DataConfig,
    LoggerConfig,
    ModelConfig,
    PPOConfig,
    RewardConfig,
    RolloutSettings,
)
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.ppo.logprobs import token_logprobs
from rlhf.ppo.rollout import response_slice
from rlhf.runs.tracking import NullBackend, Tracker
from rlhf.runtime.generation import SamplingSettings, joined_inputs
from rlhf.stages.ppo import new_trainer

PROMPTS = ["今天天气怎么样？", "你是谁？", "吃了没？", "几点了？"]


def config(out: Path, dtype: str) -> Config:
    model = ModelConfig()  # tiny; 128 wide over 4 heads: head size 32, which vLLM's CPU runs
    model.tiny.hidden_size, model.tiny.num_heads = 128, 4
    model.lora.enabled = True
    return Config(
        stage="ppo",
        cache_dir=str(out / "cache"),
        model=model,
        data=DataConfig(train_file="unused.jsonl"),
        reward=RewardConfig(kind="function", function={"_target_": "builtins.len"}),
        ppo=PPOConfig(
            batch_size=4,
            samples_per_prompt=2,
            micro_batch_size=4,
            max_new_tokens=10,
            learning_rate=1e-2,
            advantage_estimator="rloo",
            ppo_epochs=1,
            seed=3,
            rollout=RolloutSettings(engine="vllm", dtype=dtype),
        ),  # fmt: skip
        logger=LoggerConfig(backend="none"),
    )


def codepoint_mean(prompts: list[str], texts: list[str]) -> torch.Tensor:
    """A score that differs between almost any two answers: no group is uniform."""
    return torch.tensor([sum(map(ord, text)) / max(len(text), 1) / 1e4 for text in texts])


def digest(tokens: torch.Tensor) -> str:
    return hashlib.sha256(str(tokens.tolist()).encode()).hexdigest()[:16]


def main(out: Path, dtype: str) -> dict:
    cfg = config(out, dtype)
    torch.manual_seed(0)
    policy, tokenizer = load_model_and_tokenizer(cfg.model, cfg.cache_dir)
    tracker = Tracker(out / "ppo", NullBackend())
    trainer = new_trainer(cfg, policy, tokenizer, tracker, codepoint_mean, (PROMPTS * 2, PROMPTS))
    policy = trainer.model.policy
    trainable = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    report: dict = {"dtype": dtype, "updates": []}
    for _ in range(3):  # LoRA's B starts at 0: A has a gradient from the second update on
        metrics = trainer.step()
        rollout = trainer.last_rollout
        report["updates"].append(
            {
                "from_engine": rollout.engine_logprobs is not None,
                "gap_mean": metrics["ppo/rollout/logprob_gap_mean"],
                "gap_max": metrics["ppo/rollout/logprob_gap_max"],
                "digest": digest(rollout.responses),
                "engine_version": trainer.engine.version,
            }
        )
    report["moved"] = {
        n: bool((p.detach() != trainable[n]).any())
        for n, p in policy.named_parameters()
        if p.requires_grad
    }
    # the same prompts and seeds twice on the engine
    sampled = SamplingSettings(10, do_sample=True, temperature=1.0)
    first = trainer.sample(PROMPTS, settings=sampled, update=trainer.update, stream="probe")
    again = trainer.sample(PROMPTS, settings=sampled, update=trainer.update, stream="probe")
    report["repeat_equal"] = torch.equal(first.responses, again.responses)
    # greedy answers before and after the adapter changes
    greedy = SamplingSettings(10, do_sample=False)
    before = trainer.sample(PROMPTS, settings=greedy, update=trainer.update)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    after = trainer.sample(PROMPTS, settings=greedy, update=trainer.update + 1)
    report["greedy_changed"] = before.texts != after.texts
    report["argmax_gap"], report["logprob_diff"] = teacher_forced(trainer, after)
    trainer.engine.close()
    return report


@torch.no_grad()
def teacher_forced(trainer, responses) -> tuple[float, float]:
    """The largest (HF max logit − logit of the engine's greedy token) over the answers' tokens,
    and the largest |engine log-prob − HF log-prob| of those tokens."""
    policy = trainer.model.policy
    inputs = joined_inputs(responses.encoded, responses.responses, responses.mask)
    logits = policy(**inputs).logits.float()
    width = responses.encoded.input_ids.shape[1]
    logits = response_slice(logits, width, responses.responses.shape[1])
    chosen = logits.gather(-1, responses.responses[..., None])[..., 0]
    shortfall = (logits.max(-1).values - chosen).masked_fill(~responses.mask, 0)
    hf_logprobs, _ = token_logprobs(logits, responses.responses, 1.0)
    diff = (hf_logprobs - responses.engine_logprobs).abs().masked_fill(~responses.mask, 0)
    return float(shortfall.max()), float(diff.max())


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), sys.argv[2])
    print("PROBE " + json.dumps(result))
