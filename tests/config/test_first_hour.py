"""A new user's first hour: experiments fit any model, --help lists real groups only, and
`resume=auto` continues a requeued job when it can and starts it fresh when it cannot."""

from __future__ import annotations

import json
import os
import signal

import pytest

from rlhf.app import typed_config
from rlhf.models.gguf import gguf_depth
from rlhf.models.loading import lora_config
from rlhf.sweeps.cluster import with_auto_resume
from tests.helpers import CONF_DIR, run_train

EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
MODELS_HERE = ["tiny", "smollm2_135m", "gemma3_270m"]  # the model options that run offline


@pytest.mark.parametrize("model", MODELS_HERE)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_every_model(compose_config, experiment, model):
    config = typed_config(compose_config([f"experiment={experiment}", f"model={model}"]))
    assert config.name == experiment
    settings = config.model.lora
    for depth in (2, 18, 30):  # the tiny model, Gemma 3 270M, SmolLM2-135M
        lora = lora_config(settings, depth)
        assert (lora is None) == (not settings.enabled)
        if lora is None or (settings.top_layers is None and settings.top_fraction is None):
            continue  # off, or every layer adapted
        # the top layers of this depth: at least one, none past the model's last
        layers = lora.layers_to_transform
        assert layers and layers == list(range(depth - len(layers), depth)), (depth, layers)


@pytest.mark.parametrize(
    "model", ["smollm2_135m", pytest.param("gemma3_270m", marks=pytest.mark.slow)]
)  # Gemma's header comes after joining its four chunk packages: ~20 s
def test_every_experiment_fits_the_real_depth_of_each_model(compose_config, model):
    config = typed_config(compose_config([f"model={model}"]))
    depth = gguf_depth(config.model.gguf_fallback)  # from the weights' header, not converted
    assert depth == {"smollm2_135m": 30, "gemma3_270m": 18}[model]
    for experiment in EXPERIMENTS:
        settings = typed_config(compose_config([f"experiment={experiment}", f"model={model}"]))
        lora_config(settings.model.lora, depth)  # no "more than the model's layers"


@pytest.mark.slow  # the pipeline on the tiny model runs in test_experiments (scale=quick)
def test_the_main_job_runs_on_the_tiny_model(warm_train, tmp_path):
    """`python train.py experiment=insult_ppo model=tiny`, the natural quick try, shrunk."""
    result = warm_train(
        ["experiment=insult_ppo", "model=tiny", "logger=none", "sft.max_steps=4",
         "rm.max_steps=4", "ppo.total_updates=1", "reward.calibrate_samples=8",
         "eval.num_prompts=4", f"pipeline.stage_cache_dir={tmp_path / 'cache'}"],
        tmp_path / "run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "eval" / "COMPLETE").is_file()


def test_help_lists_only_real_config_groups(warm_train, tmp_path):
    result = warm_train(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    groups = result.stdout.split("== Config groups (group=option) ==")[1].split("== Examples")[0]
    listed = {line.split(":")[0].strip() for line in groups.splitlines() if ":" in line}
    assert "accelerate" not in listed  # accelerate launch configs live in accelerate/
    assert {"model", "data", "reward", "ppo", "experiment", "sweep", "launcher"} <= listed


def test_with_auto_resume_leaves_a_users_resume_alone():
    assert with_auto_resume(["ppo.kl_coef=0.1"]) == ["ppo.kl_coef=0.1", "resume=auto"]
    assert with_auto_resume(["resume=false"]) == ["resume=false"]
    assert with_auto_resume(["+resume=true"]) == ["+resume=true"]


def test_the_slurm_preset_resumes_automatically(compose_config):
    assert typed_config(compose_config(["launcher=slurm"])).resume == "auto"


PPO = ["stage=ppo", "model=tiny", "reward=char_fraction", "logger=none", "ppo.total_updates=3",
       "ppo.eval_every=0", "ppo.max_new_tokens=8", "ppo.checkpoint.every=1"]  # fmt: skip


def test_resume_auto_starts_fresh_when_there_is_nothing_to_resume(warm_train, tmp_path):
    result = warm_train([*PPO, "resume=auto"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resume=auto: nothing to resume, starting fresh" in result.stdout + result.stderr
    assert "host heap: " in result.stdout + result.stderr  # the log says what host_heap did
    assert (tmp_path / "ppo" / "COMPLETE").is_file()


@pytest.mark.slow  # two cold train.py runs (~30 s): the 8-minute suite budget; make test-all
def test_resume_auto_continues_from_the_newest_checkpoint(tmp_path):
    os.environ["RLHF_FAULT"] = "ppo:after_checkpoint:2"  # a job killed after checkpoint 2
    try:
        killed = run_train(PPO, tmp_path)
    finally:
        del os.environ["RLHF_FAULT"]
    assert killed.returncode == -signal.SIGKILL
    result = run_train([*PPO, "resume=auto"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resume=auto: continuing the run in {tmp_path}" in result.stdout + result.stderr
    info = json.loads((tmp_path / "ppo" / "run_info.json").read_text())
    assert info["status"] == "complete" and info["resumed_from"].endswith("update-000002")
