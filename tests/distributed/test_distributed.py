"""Data-parallel PPO under real `accelerate launch` processes (gloo on CPU), the launch configs,
and the pure helpers behind them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from hydra.core.plugins import Plugins
from hydra.errors import ConfigCompositionException
from safetensors.torch import load_file

from rlhf.app import typed_config
from rlhf.errors import ConfigError
from rlhf.paths import PROJECT_ROOT
from rlhf.pipeline import check_launch_engine, run
from rlhf.runtime import distributed
from rlhf.sweeps.cluster import AccelerateLaunch, accelerate_command, job_port, run_under_accelerate
from tests.helpers import compose_with_hydra, free_port

ACCELERATE_CONFIGS = sorted((PROJECT_ROOT / "accelerate").glob("*.yaml"))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def table(run_dir: Path) -> list[dict]:
    lines = (run_dir / "ppo" / "tables" / "ppo_samples.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda row: row["prompt"])


@pytest.mark.parametrize(
    "shard_optimizer",
    [False, pytest.param(True, marks=pytest.mark.slow)],  # ZeRO-1: make test-all (suite budget)
    ids=["ddp", "zero1"],
)
def test_two_processes_of_batch_4_make_the_update_of_one_process_of_batch_8(
    tiny_sft_model, tmp_path, compose_config, shard_optimizer
):
    """Same seed and data; each answer is sampled from its own seed (its row in the global
    batch), so both setups sample the same answers. Score normalisation, reward and advantage
    whitening all depend on the global batch: computed per process they would move the weights
    differently. With `ppo.shard_optimizer` (ZeRO-1) each process updates half the parameters
    from the same summed gradient. In float64, so the setups differ by summation order only
    (~1e-16 relative): no AdamW step can flip sign as it can in float32 where a gradient is ~0."""
    common = [
        "stage=ppo", f"model.name_or_path={tiny_sft_model}", "logger=wandb",
        "model.dtype=float64",
        "reward=char_fraction", "reward.function.chars='你我的是了'", "reward.normalize=true",
        "ppo.whiten_rewards=true", "ppo.max_new_tokens=12", "ppo.ppo_epochs=2",
        "ppo.learning_rate=1e-3", "ppo.total_updates=1", "ppo.eval_every=0",
        "ppo.log_samples_every=1",
    ]  # fmt: skip
    single_dir, double_dir = tmp_path / "single", tmp_path / "double"
    # the reference in this process (its imports are paid for already), without W&B
    single = compose_config([*common, "ppo.batch_size=8", "ppo.micro_batch_size=8", "logger=none"])
    run(typed_config(single), single_dir)
    launch = AccelerateLaunch("accelerate/ddp.yaml", 2, main_process_port=free_port())
    objective, result = run_under_accelerate(
        launch,
        [
            *common, "ppo.batch_size=4", "ppo.micro_batch_size=4",
            f"ppo.shard_optimizer={str(shard_optimizer).lower()}",
        ],
        double_dir,
    )  # fmt: skip

    # the same 8 answers and scores, half from each process
    assert table(double_dir) == table(single_dir) and len(table(single_dir)) == 8
    assert len({row["score"] for row in table(single_dir)}) > 1  # normalisation is not trivial
    start = weights(tiny_sft_model)
    for part in ("model", "critic"):
        one, two = weights(single_dir / "ppo" / part), weights(double_dir / "ppo" / part)
        assert one.keys() == two.keys() and one[next(iter(one))].dtype == torch.float64
        for name in one:  # whitening per process instead of globally moved weights by ~1e-3
            torch.testing.assert_close(two[name], one[name], atol=1e-12, rtol=1e-10)
    moved = [
        name
        for name in start
        if not torch.equal(start[name], weights(single_dir / "ppo" / "model")[name])
    ]
    assert moved  # the update did something, so equality is not trivial

    # one tracker run, one metrics file with one record per step, one saved model
    assert len(list((double_dir / "wandb").glob("offline-run-*"))) == 1
    records = [json.loads(line) for line in (double_dir / "ppo" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1]
    single_record = json.loads((single_dir / "ppo" / "metrics.jsonl").read_text())
    for key in ("ppo/objective/scores", "ppo/objective/raw_scores", "ppo/response_length"):
        assert records[0][key] == pytest.approx(single_record[key], abs=1e-6)
    assert objective == "ppo/objective/scores"  # the sweep's objective
    assert result == pytest.approx(records[0]["ppo/objective/scores"])
    # one checkpoint, written once, holding each process's own random streams for a resume
    (checkpoint,) = (double_dir / "ppo" / "checkpoints").iterdir()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["processes"] == 2
    saved = torch.load(checkpoint / "state.pt", weights_only=True)
    rngs = saved["rng_by_process"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])
    sharded = "optimiser state sharded over 2 processes (ZeRO-1)"
    assert (sharded in (double_dir / "train.log").read_text()) == shard_optimizer
    # the whole optimiser state (under ZeRO-1 consolidated from both processes' shares)
    (single_checkpoint,) = (single_dir / "ppo" / "checkpoints").iterdir()
    single_moments = torch.load(single_checkpoint / "state.pt", weights_only=True)["optimizer"]
    moments = saved["optimizer"]["state"]
    assert len(moments) == len(single_moments["state"]) > 0
    for index, state in single_moments["state"].items():
        torch.testing.assert_close(
            moments[index]["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-9, atol=1e-20
        )
    info = json.loads((double_dir / "ppo" / "run_info.json").read_text())
    assert info["status"] == "complete" and info["config"]["output_dir"] == str(double_dir)
    assert sorted(p.name for p in double_dir.iterdir()) == [
        ".accelerate_result.json",
        ".hydra",
        "ppo",
        "train.log",
        "wandb",
    ]
    assert sorted(p.name for p in (double_dir / "ppo").iterdir()) == sorted(
        p.name for p in (single_dir / "ppo").iterdir()
    )


def test_group_statistics_are_the_same_under_one_and_two_processes(
    tiny_sft_model, tmp_path, compose_config
):
    """GRPO with dropped uniform groups: 4 prompts × 4 answers in one process against 2 × 4 in
    each of two. A group's mean and std, the dropped share and the per-answer weights of the
    sequence-mean loss are whole-batch statistics: computed on a split group or per process they
    would differ. One optimiser step each (mini-batch = the whole batch), float64, as above."""
    common = [
        "stage=ppo", f"model.name_or_path={tiny_sft_model}", "logger=none",
        "model.dtype=float64", "algorithm=grpo", "ppo.samples_per_prompt=4",
        "ppo.drop_uniform_groups=true", "reward=char_fraction",
        "reward.function._target_=tests.helpers.bad_rewards.chars_on_even_prompts",
        "ppo.max_new_tokens=12", "ppo.ppo_epochs=1", "ppo.learning_rate=1e-3",
        "ppo.total_updates=1", "ppo.eval_every=0", "ppo.log_samples_every=1",
    ]  # fmt: skip
    single_dir, double_dir = tmp_path / "single", tmp_path / "double"
    run(
        typed_config(compose_config([*common, "ppo.batch_size=4", "ppo.micro_batch_size=16"])),
        single_dir,
    )
    launch = AccelerateLaunch("accelerate/ddp.yaml", 2, main_process_port=free_port())
    run_under_accelerate(
        launch, [*common, "ppo.batch_size=2", "ppo.micro_batch_size=8"], double_dir
    )
    assert table(double_dir) == table(single_dir) and len(table(single_dir)) == 16
    one, two = (
        json.loads((d / "ppo" / "metrics.jsonl").read_text()) for d in (single_dir, double_dir)
    )
    for key in ("ppo/uniform_group_share", "ppo/dropped_group_share", "ppo/val/advantages_mean"):
        assert two[key] == pytest.approx(one[key], abs=1e-12), key
    assert 0 < one["ppo/dropped_group_share"] < 1  # some groups dropped, some trained
    assert (
        not (single_dir / "ppo" / "critic").exists()
        and not (double_dir / "ppo" / "critic").exists()
    )
    start, trained = weights(tiny_sft_model), weights(single_dir / "ppo" / "model")
    assert any(not torch.equal(start[name], trained[name]) for name in start)
    other = weights(double_dir / "ppo" / "model")
    for name in trained:
        torch.testing.assert_close(other[name], trained[name], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_every_accelerate_config_loads_and_passes_accelerate_launch_checks(path):
    config = load_config_from_file(str(path)).to_dict()
    assert config["mixed_precision"] == "no"  # precision comes from model.mixed_precision
    assert config["num_processes"] == -1  # accelerate asks for --num_processes
    kind = {
        "ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp": "FSDP"
    }[path.stem]  # fmt: skip
    assert config["distributed_type"] == kind
    argv = ["--config_file", str(path), "--num_processes", "4", "train.py"]
    args = _validate_launch_command(launch_command_parser().parse_args(argv))[0]
    assert (args.multi_gpu, args.use_deepspeed, args.use_fsdp) == (
        kind == "MULTI_GPU", kind == "DEEPSPEED", kind == "FSDP"
    )  # fmt: skip
    assert args.num_processes == 4
    if kind == "DEEPSPEED":
        assert args.zero_stage == int(path.stem[-1])


def test_slurm_accelerate_launcher_composes_into_the_plugin():
    cfg = compose_with_hydra(
        ["hydra/launcher=slurm_accelerate", "hydra.launcher.gpus_per_node=4",
         "hydra.launcher.nodes=2", "hydra.launcher.partition=gpu",
         "hydra.launcher.accelerate_config=accelerate/zero2.yaml"]
    )  # fmt: skip
    launcher = Plugins.instance()._instantiate(cfg.hydra.launcher)  # what Hydra does at -m
    assert type(launcher).__name__ == "AccelerateSlurmLauncher"
    assert launcher.processes_per_node == 4 and launcher.accelerate_config.endswith("zero2.yaml")
    assert launcher.params["partition"] == "gpu" and launcher.params["nodes"] == 2
    assert "accelerate_config" not in launcher.params  # submitit would reject it
    with pytest.raises(ConfigCompositionException):
        compose_with_hydra(["hydra/launcher=slurm_accelerate", "hydra.launcher.gpus_per_nod=4"])


def test_ppo_refuses_sharding_engines_and_lora_refuses_zero3(compose_config):
    ppo = typed_config(compose_config(["stage=pipeline"]))
    check_launch_engine(ppo, None)
    with pytest.raises(ConfigError, match="not run under deepspeed-zero2: launch it with accel"):
        check_launch_engine(
            ppo,
            distributed.launch_engine(
                {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
            ),
        )
    lora_sft = typed_config(compose_config(["stage=sft", "model.lora.enabled=true"]))
    check_launch_engine(lora_sft, "deepspeed-zero2")
    with pytest.raises(ConfigError, match="model.lora.enabled"):
        check_launch_engine(lora_sft, distributed.launch_engine({"ACCELERATE_USE_FSDP": "true"}))
    fsdp2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    on_vllm = typed_config(
        compose_config(["stage=ppo", "model.lora.enabled=true", "ppo.rollout.engine=vllm"])
    )
    assert distributed.launch_engine(fsdp2) == "fsdp2"
    with pytest.raises(ConfigError, match=r"^ppo.rollout.engine=vllm: FSDP2 shards the policy"):
        check_launch_engine(on_vllm, "fsdp2")
    check_launch_engine(on_vllm, None)  # one process, or DDP: one engine a process


def test_accelerate_command_for_the_second_of_two_nodes(tmp_path):
    launch = AccelerateLaunch("accelerate/ddp.yaml", 4, 2, 1, "node-a", job_port(20000, "4321_7"))
    command = accelerate_command(launch, ["experiment=insult_ppo", "ppo.kl_coef=0.1"], tmp_path)
    flags = dict(zip(command[3:15:2], command[4:15:2], strict=True))
    assert flags == {
        "--config_file": str(PROJECT_ROOT / "accelerate/ddp.yaml"),
        "--num_processes": "8", "--num_machines": "2", "--machine_rank": "1",
        "--main_process_ip": "node-a", "--main_process_port": str(20000 + 43217 % 10000),
    }  # fmt: skip
    assert command[15:] == [
        str(PROJECT_ROOT / "train.py"), "experiment=insult_ppo", "ppo.kl_coef=0.1",
        f"hydra.run.dir='{tmp_path}'",  # quoted: sweep job folders hold `=` and `,`
    ]  # fmt: skip


def test_shards_cover_the_batch_in_order():
    items = list(range(10))
    shards = [distributed.shard(items, r, 3) for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert distributed.shard(items) == items  # one process
