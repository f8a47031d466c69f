"""vLLM rollouts under DDP: two `accelerate launch` processes (gloo, CPU) each start their own
engine and sample their half of the batch; with per-answer seeds and a float32 engine they draw
the same answers as one process sampling the whole batch, and train the same adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from rlhf.paths import PROJECT_ROOT
from tests.helpers import free_port, subprocess_environment

COMMON = [
    "stage=ppo", "model=tiny", "model.tiny.hidden_size=128", "model.lora.enabled=true",
    "reward=char_fraction", "ppo.max_new_tokens=12", "ppo.total_updates=1", "ppo.eval_every=0",
    "ppo.log_samples_every=1", "ppo.rollout.engine=vllm", "ppo.rollout.dtype=float32",
    "logger=none",
]  # fmt: skip


def run(command: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    env = {**subprocess_environment(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, *COMMON, f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def samples(run_dir: Path) -> list[tuple[str, str, float]]:
    rows = [json.loads(line) for line in (run_dir / "ppo/tables/ppo_samples.jsonl").open()]
    return [(row["prompt"], row["response"], row["score"]) for row in rows]


def test_two_processes_each_with_an_engine_sample_what_one_process_samples(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    train = [sys.executable, str(PROJECT_ROOT / "train.py")]
    run([*train, "ppo.batch_size=8", "ppo.micro_batch_size=8"], single)
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        "accelerate/ddp.yaml", "--num_processes", "2", "--main_process_port", str(free_port()),
        str(PROJECT_ROOT / "train.py"),
    ]  # fmt: skip
    done = run([*launch, "ppo.batch_size=4", "ppo.micro_batch_size=4"], double)
    assert (
        done.stderr.count("rollout engine: vLLM on") + done.stdout.count("rollout engine: vLLM on")
        == 2
    )  # one engine a process
    assert samples(double) == samples(single) and len(samples(single)) == 8
    one = load_file(single / "ppo/adapter/adapter_model.safetensors")
    two = load_file(double / "ppo/adapter/adapter_model.safetensors")
    assert one.keys() == two.keys() and one
    for name in one:  # float32: the two setups sum gradients in another order
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4)
