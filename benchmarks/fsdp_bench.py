"""PPO memory and speed per process under DDP and FSDP2, run under `accelerate launch`:

    accelerate launch --config_file accelerate/fsdp.yaml --num_processes 2 --num_machines 1 \\
        benchmarks/fsdp_bench.py --updates 3 model=tiny
    accelerate launch --config_file accelerate/ddp.yaml ... benchmarks/fsdp_bench.py ...
    ... fsdp_bench.py --gather per-token ...   # FSDP2 generation gathering every layer per token

Arguments after the flags are Hydra overrides of the PPO stage (default workload: the data set's
prompts, the char_fraction reward, batch 4 per process, exactly 16 new tokens so that every
process decodes as many tokens, one epoch of one mini-batch). The main process prints one JSON
line: per process the peak RSS (`ru_maxrss`, the whole process: Python, torch, every model),
the bytes this process holds of the trained models' state (weights, gradients, AdamW moments;
under FSDP2 its shards) and of the frozen reference (the reward here is a function), and the median seconds
per update and per generation over the updates after the first (which allocates the optimiser
state).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from rlhf.app import typed_config  # noqa: E402
from rlhf.config import register_schemas  # noqa: E402
from rlhf.models.loading import load_model_and_tokenizer  # noqa: E402
from rlhf.paths import PROJECT_ROOT  # noqa: E402
from rlhf.ppo import trainer as trainer_module  # noqa: E402
from rlhf.rewards import build_reward  # noqa: E402
from rlhf.runs.tracking import NullBackend, Tracker  # noqa: E402
from rlhf.runtime import distributed, sharding  # noqa: E402
from rlhf.stages.ppo import load_prompts, new_trainer  # noqa: E402

WORKLOAD = [
    "stage=ppo", "logger=none", "reward=char_fraction", "reward.function.chars='你我的是了'",
    "ppo.batch_size=4", "ppo.micro_batch_size=4", "ppo.ppo_epochs=1", "ppo.max_new_tokens=16",
    "ppo.min_new_tokens=16", "ppo.eval_every=0",
]  # fmt: skip


def local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this process holds of `tensor` (its shard when sharded)."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def state_bytes(trainer) -> dict[str, int]:
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    moments = [
        v for entry in trainer.optimizer.state.values() for v in entry.values() if v.dim() > 0
    ]
    trained = {id(p) for p in params}
    frozen = [p for p in trainer.model.parameters() if id(p) not in trained]
    return {
        "trained_weights": sum(local_bytes(p) for p in params),
        "gradients": sum(local_bytes(p.grad) for p in params if p.grad is not None),
        "adamw_moments": sum(local_bytes(m) for m in moments),
        "frozen_in_actor_critic": sum(local_bytes(p) for p in frozen),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--gather", choices=("once", "per-token"), default="once")
    args, overrides = parser.parse_known_args()
    if args.gather == "per-token":  # decode sharded: FSDP gathers each layer at every token
        trainer_module.sharding.gathered = lambda model: contextlib.nullcontext()
    register_schemas()
    with (
        tempfile.TemporaryDirectory() as folder,
        initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"),
    ):
        cfg = compose("config", overrides=[*WORKLOAD, f"output_dir={folder}", *overrides])
        config = typed_config(cfg)
        policy, tokenizer = load_model_and_tokenizer(config.model, config.cache_dir)
        prompts, held_out, _ = load_prompts(config, tokenizer)
        reward = build_reward(config.reward, None, config.data.system_prompt, config.model)
        tracker = Tracker(Path(folder), NullBackend())
        trainer = new_trainer(config, policy, tokenizer, tracker, reward, (prompts, held_out))
        seconds, generate = [], []
        for _ in range(args.updates):
            metrics = trainer.step()
            seconds.append(metrics["timing/total"])
            generate.append(metrics["timing/generate"])
    record = {
        "rank": distributed.rank(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "state_mib": {k: v / 2**20 for k, v in state_bytes(trainer).items()},
        "s_per_update": statistics.median(seconds[1:] or seconds),
        "s_generate": statistics.median(generate[1:] or generate),
    }
    records = distributed.gather_objects(record)
    if distributed.is_main_process():
        engine = "fsdp2" if sharding.is_sharded(trainer.model) else "ddp"
        print(json.dumps({"engine": engine, "gather": args.gather, "processes":
                          distributed.world_size(), "overrides": overrides,
                          "per_process": records}))  # fmt: skip


if __name__ == "__main__":
    main()
