"""PPO's rollouts on vLLM (ppo.rollout.engine=vllm), on this CPU, through the real trainer.

The engine runs in processes of their own (tests/helpers/vllm_probe.py: vLLM's CPU worker binds
the OpenMP threads of the process it starts in), three at once: bf16 twice (reproducible across
processes) and float32 (equal to the trained model's own probabilities up to float32 rounding).

Tolerances: float32 engine vs the HF policy, 1e-4 nats on a token's log-prob and 1e-4 on the
logit margin of a greedy choice (measured: 5e-7 and 0); bf16 (bf16 weights and arithmetic, 8
bits of mantissa), 0.05 for both (measured on the tiny model: mean 0.001, max 0.004).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rlhf.config import Config, ModelConfig, PPOConfig, RolloutSettings
from rlhf.errors import ConfigError
from rlhf.paths import PROJECT_ROOT
from rlhf.runtime import vllm_engine
from tests.helpers import error_lines, subprocess_environment

PROBES = {"bf16": "bfloat16", "bf16_again": "bfloat16", "fp32": "float32"}
TOLERANCE = {"bfloat16": 0.05, "float32": 1e-4}


def run_probe(folder: Path, dtype: str) -> dict:
    env = {**subprocess_environment(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.vllm_probe", str(folder), dtype],
        capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT, env=env,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("PROBE "))


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("vllm")
    with ThreadPoolExecutor(len(PROBES)) as pool:
        futures = {name: pool.submit(run_probe, root / name, d) for name, d in PROBES.items()}
        return {name: future.result() for name, future in futures.items()}


def test_the_answers_trained_on_come_from_vllm_and_every_trained_tensor_moves(probes):
    for probe in probes.values():
        updates = probe["updates"]
        assert [u["from_engine"] for u in updates] == [True, True, True]
        # the engine followed the policy to each update before sampling it
        assert [u["engine_version"] for u in updates] == [1, 2, 3]
        assert probe["moved"] and all(probe["moved"].values()), probe["moved"]
        assert any("lora_A" in name for name in probe["moved"])
        assert any("lora_B" in name for name in probe["moved"])


@pytest.mark.parametrize("name", PROBES)
def test_the_engine_and_trainer_log_probs_agree_within_the_engine_precision(probes, name):
    probe = probes[name]
    tolerance = TOLERANCE[probe["dtype"]]
    for update in probe["updates"]:
        assert 0 <= update["gap_mean"] <= update["gap_max"] <= tolerance, update
    assert probe["logprob_diff"] <= tolerance


@pytest.mark.parametrize("name", PROBES)
def test_after_an_update_the_engine_answers_with_the_new_adapter(probes, name):
    """Greedy answers change when the adapter changes, and every token vLLM chose greedily is
    the HF policy's argmax for the same weights (its logit within the tolerance of the top)."""
    probe = probes[name]
    assert probe["greedy_changed"]
    assert 0 <= probe["argmax_gap"] <= TOLERANCE[probe["dtype"]]


def test_a_seeded_run_is_reproducible(probes):
    first, again = probes["bf16"], probes["bf16_again"]
    assert first["repeat_equal"] and again["repeat_equal"]  # same seeds twice in one process
    assert [u["digest"] for u in first["updates"]] == [u["digest"] for u in again["updates"]]
    assert len({u["digest"] for u in first["updates"]}) == 3  # each update samples anew


# --- refusals, before anything loads ---------------------------------------------------------


def test_a_full_parameter_policy_on_a_cpu_gets_one_line(warm_train, tmp_path):
    result = warm_train(["stage=ppo", "model=tiny", "ppo.rollout.engine=vllm"], tmp_path / "run")
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert line.startswith("error: ppo.rollout.engine: vllm follows a full-parameter policy")
    assert "model.lora.enabled=true" in line and "ppo.rollout.engine=hf" in line
    assert not (tmp_path / "run" / "ppo").exists()


def test_without_the_extra_asking_for_vllm_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "vllm" else real(name, *a),
    )
    model = ModelConfig()
    model.lora.enabled = True
    ppo = PPOConfig(rollout=RolloutSettings(engine="vllm"))
    with pytest.raises(ConfigError) as caught:
        Config(stage="ppo", model=model, ppo=ppo)
    message = str(caught.value)
    assert message.startswith("ppo.rollout.engine=vllm needs vLLM, which is not installed")
    assert "pip install -e '.[vllm]'" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"\.\[vllm\]"):
        vllm_engine.require_vllm()
    # an hf run never asks for it
    Config(stage="ppo", model=model)


def test_lora_module_copies_and_unsupported_head_sizes_are_refused():
    model = ModelConfig()
    model.lora.enabled = True
    model.lora.modules_to_save = ["lm_head"]
    with pytest.raises(ConfigError, match=r"^model\.lora\.modules_to_save: vLLM serves"):
        Config(stage="ppo", model=model, ppo=PPOConfig(rollout=RolloutSettings(engine="vllm")))
    from transformers import LlamaConfig

    narrow = LlamaConfig(hidden_size=64, num_attention_heads=4)  # head size 16
    with pytest.raises(ConfigError, match="this model's is 16"):
        vllm_engine.check_model(narrow)
    vllm_engine.check_model(LlamaConfig(hidden_size=128, num_attention_heads=4))


def test_the_engine_lora_rank_is_the_smallest_vllm_accepts():
    assert [vllm_engine.engine_rank(r) for r in (1, 4, 8, 9, 16, 300)] == [1, 8, 8, 16, 16, 320]
    with pytest.raises(ConfigError, match="model.lora.r"):
        vllm_engine.engine_rank(1024)


def test_a_process_outside_a_launch_gets_its_own_world_and_gives_it_back(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with vllm_engine.single_process_launch():
        assert (os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("0", "1")
        assert int(os.environ["MASTER_PORT"]) > 0
    assert "RANK" not in os.environ and "MASTER_PORT" not in os.environ
