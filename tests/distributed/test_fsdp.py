"""PPO under FSDP2 (accelerate/fsdp.yaml): two gloo CPU processes with policy and critic sharded
per decoder layer make the update of one process on the whole batch, for a full-parameter and a
LoRA policy; a deliberately wrong variant is caught by the same comparison; a run stopped after
its first checkpoint and resumed ends where the straight run ends. All the sharded runs share one
`accelerate launch` (tests/helpers/fsdp_runs.py) to keep the suite's wall time, and the full-parameter
comparison is the resumed run itself: its second update starts from the checkpoint, so equal
to the straight single process means both "FSDP2 = one process" and "resumed = straight"."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.app import typed_config
from rlhf.config import PPOConfig
from rlhf.errors import ConfigError
from rlhf.paths import PROJECT_ROOT
from rlhf.pipeline import check_launch_engine, run
from rlhf.ppo.validation import check_fsdp2_settings
from rlhf.runtime import distributed
from rlhf.stages import ppo as ppo_stage
from tests.helpers import free_port

# float64 weights: the sharded and the single run differ by summation order only (reduce-scatter
# of per-process sums vs one sum, the norm for clipping from shard sums), ~1e-16 relative per
# operation; 1e-10 leaves room for the roundings of two updates, far below the ~1e-4–1e-3 that
# per-process whitening moves the weights by.
RTOL, ATOL = 1e-10, 1e-12


def sample_table(run_dir: Path) -> list[dict]:
    lines = (run_dir / "ppo" / "tables" / "ppo_samples.jsonl").read_text().splitlines()
    rows = sorted(
        (json.loads(line) for line in lines), key=lambda row: (row["update"], row["prompt"])
    )
    return [{k: row[k] for k in ("update", "prompt", "response", "score")} for row in rows]


def differences(run_dir: Path, reference_dir: Path, parts: tuple[str, ...]) -> list[str]:
    """What differs between two PPO runs: their sampled answers and scores, and each saved
    tensor of `parts` (model, critic, adapter) beyond RTOL / ATOL. [] when they agree."""
    found = []
    if sample_table(run_dir) != sample_table(reference_dir):
        found.append("samples (answers or scores)")
    for part in parts:
        folder, reference = run_dir / "ppo" / part, reference_dir / "ppo" / part
        (file,) = [p.name for p in reference.glob("*.safetensors")]
        one, two = load_file(str(reference / file)), load_file(str(folder / file))
        if one.keys() != two.keys():
            found.append(f"{part}: tensor names")
            continue
        for name in one:
            if not torch.allclose(two[name], one[name], rtol=RTOL, atol=ATOL):
                gap = (two[name] - one[name]).abs().max().item()
                found.append(f"{part}/{name}: max difference {gap:.1e}")
    return found


def logged_scores(run_dir: Path) -> list[tuple[float, float]]:
    """(raw, processed) mean score of each logged update: the normalised mean sits at ~0 with
    float32 noise of ~1e-8, hence the 1e-6 the tests compare it to."""
    records = [json.loads(line) for line in (run_dir / "ppo" / "metrics.jsonl").open()]
    return [
        (r["ppo/objective/raw_scores"], r["ppo/objective/scores"])
        for r in records
        if "ppo/objective/scores" in r
    ]


def gradient_norms(run_dir: Path, part: str) -> list[float]:
    """`part`'s ("policy" or "val") gradient norm before clipping, per logged update."""
    records = [json.loads(line) for line in (run_dir / "ppo" / "metrics.jsonl").open()]
    return [r[f"ppo/{part}/grad_norm"] for r in records if "ppo/lr" in r]


def launch_runs(runs: list[dict], tmp_path: Path) -> None:
    """All `runs` in one two-process FSDP2 launch (tests/helpers/fsdp_runs.py)."""
    spec = tmp_path / "runs.json"
    spec.write_text(json.dumps(runs))
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(PROJECT_ROOT / "accelerate" / "fsdp.yaml"),
        "--num_processes", "2", "--num_machines", "1",
        "--main_process_port", str(free_port()),
        str(PROJECT_ROOT / "tests" / "helpers" / "fsdp_runs.py"), str(spec),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=os.environ, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


def test_two_fsdp2_processes_of_batch_4_make_the_update_of_one_process_of_batch_8(
    tiny_sft_model, tmp_path, compose_config, monkeypatch
):
    """Same seed and data, each answer sampled from its own seed (its row in the global batch).
    Score normalisation and reward / advantage whitening use the global batch's moments, the
    sharded gradients are summed in backward and clipped by their global norm: the sharded
    update equals the single one to float64 rounding. Whitening per process (the wrong variant)
    moves the weights visibly and the same comparison reports it. The full-parameter run stops
    right after its first checkpoint and resumes under the same two processes; it ends with the
    weights, answers and logged scores of one straight process."""
    common = [
        "stage=ppo", f"model.name_or_path={tiny_sft_model}", "logger=none",
        "model.dtype=float64", "reward=char_fraction", "reward.function.chars='你我的是了'",
        "reward.normalize=true", "ppo.whiten_rewards=true", "ppo.max_new_tokens=8",
        "ppo.ppo_epochs=1", "ppo.learning_rate=1e-3", "ppo.eval_every=0",
        "ppo.log_samples_every=1", "ppo.max_grad_norm=0.5",
    ]  # fmt: skip
    full = [*common, "ppo.total_updates=2", "ppo.checkpoint.every=1"]
    lora = [*common, "ppo.total_updates=1", "model.lora.enabled=true", "model.lora.r=4"]
    single, double = (
        ["ppo.batch_size=8", "ppo.micro_batch_size=8"],
        ["ppo.batch_size=4", "ppo.micro_batch_size=4"],
    )
    dirs = {name: tmp_path / name for name in ("full1", "lora1", "lora2", "wrong2", "resumed2")}
    monkeypatch.setattr(ppo_stage, "plot_ppo_run", lambda stage_dir: [])  # ~1.5 s, tested elsewhere
    for name, overrides in (("full1", full), ("lora1", lora)):  # this process: imports paid
        run(typed_config(compose_config([*overrides, *single])), dirs[name])
    launch_runs(
        [
            {"run_dir": str(dirs["lora2"]), "overrides": [*lora, *double], "variant": None},
            {"run_dir": str(dirs["wrong2"]), "overrides": [*lora, *double],
             "variant": "local_whitening"},
            {"run_dir": str(dirs["resumed2"]), "overrides": [*full, *double],
             "variant": "crash_after_checkpoint_1"},
            {"run_dir": str(dirs["resumed2"]), "overrides": [*full, *double],
             "variant": "resume"},
        ],
        tmp_path,
    )  # fmt: skip

    assert differences(dirs["lora2"], dirs["lora1"], ("model", "adapter", "critic")) == []
    wrong = differences(dirs["wrong2"], dirs["lora1"], ("model", "adapter", "critic"))
    assert wrong and "samples (answers or scores)" not in wrong  # same answers, other update
    assert len(sample_table(dirs["full1"])) == 16 and len(sample_table(dirs["lora1"])) == 8
    assert len({row["score"] for row in sample_table(dirs["full1"])}) > 1  # normalisation acts
    # the global norm over shards and whole heads is the single process's, and clipping acted
    for sharded, single_run in ((dirs["lora2"], dirs["lora1"]), (dirs["resumed2"], dirs["full1"])):
        for part in ("policy", "val"):
            expected = gradient_norms(single_run, part)
            assert gradient_norms(sharded, part) == pytest.approx(expected, rel=1e-9)
        assert min(gradient_norms(single_run, "policy")) > 0.5  # above ppo.max_grad_norm
    # every trained part moved (else equality would be trivial): weights, adapter, critic
    start = load_file(str(tiny_sft_model / "model.safetensors"))
    for run_dir, part in ((dirs["full1"], "model"), (dirs["lora1"], "model")):
        trained = load_file(str(run_dir / "ppo" / part / "model.safetensors"))
        assert any(not torch.equal(start[n], trained[n]) for n in start), run_dir

    # stopped after checkpoint 1 and resumed: the straight single run's weights, answers and
    # scores (the sample table holds both updates: the resume dropped nothing, repeated nothing)
    assert differences(dirs["resumed2"], dirs["full1"], ("model", "critic")) == []
    resumed, straight = logged_scores(dirs["resumed2"]), logged_scores(dirs["full1"])
    assert len(resumed) == len(straight) == 2
    for one, other in zip(resumed, straight, strict=True):
        assert one == pytest.approx(other, abs=1e-6)
    resumed_info = json.loads((dirs["resumed2"] / "ppo" / "run_info.json").read_text())
    assert resumed_info["status"] == "complete"
    assert resumed_info["resumed_from"].endswith("update-000001")  # continued, not restarted
    checkpoints = [dirs[name] / "ppo" / "checkpoints" / "update-000002" for name in
                   ("resumed2", "full1")]  # fmt: skip
    state, single_state = (torch.load(c / "state.pt", weights_only=True) for c in checkpoints)
    assert json.loads((checkpoints[0] / "trainer_state.json").read_text())["processes"] == 2
    # whole AdamW moments, gathered from the shards: those of the single process (the same
    # parameter order: sharded policy, sharded critic body, then its whole score head)
    moments, expected = state["optimizer"]["state"], single_state["optimizer"]["state"]
    assert len(moments) == len(expected) > 0
    for index, tensors in expected.items():
        torch.testing.assert_close(
            moments[index]["exp_avg_sq"], tensors["exp_avg_sq"], rtol=1e-9, atol=1e-20
        )


def test_deepspeed_is_refused_for_ppo_with_what_to_use_and_fsdp2_is_accepted(compose_config):
    ppo = typed_config(compose_config(["stage=ppo"]))
    zero3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    with pytest.raises(ConfigError, match="ddp.yaml .*or accelerate/fsdp.yaml") as error:
        check_launch_engine(ppo, distributed.launch_engine(zero3))
    assert "\n" not in str(error.value)
    fsdp2 = distributed.launch_engine({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})
    assert fsdp2 == "fsdp2"
    check_launch_engine(ppo, fsdp2)
    check_launch_engine(typed_config(compose_config(["stage=ppo", "model.lora.enabled=true"])),
                        fsdp2)  # fmt: skip
    with pytest.raises(ConfigError, match="ppo does not run under fsdp1"):
        check_launch_engine(ppo, distributed.launch_engine({"ACCELERATE_USE_FSDP": "true"}))
    with pytest.raises(ConfigError, match="fsdp_cpu_ram_efficient_loading"):
        check_launch_engine(ppo, fsdp2, ram_efficient_loading=True)


@pytest.mark.parametrize(
    ("setting", "value", "key"),
    [
        ("critic", "lora", "ppo.critic=lora"),
        ("shard_optimizer", True, "ppo.shard_optimizer"),
        ("drop_uniform_groups", True, "ppo.drop_uniform_groups"),
        ("critic_warmup_updates", 2, "ppo.critic_warmup_updates"),
    ],
)
def test_what_fsdp2_does_not_run_is_refused_with_one_line(setting, value, key):
    check_fsdp2_settings(PPOConfig(), "bf16")  # the defaults run
    groups = {"samples_per_prompt": 2} if setting == "drop_uniform_groups" else {}
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}: not under FSDP2") as error:
        check_fsdp2_settings(PPOConfig(**{setting: value, **groups}), "no")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="fp16: not under FSDP2"):
        check_fsdp2_settings(PPOConfig(), "fp16")
