"""Shared fixtures: offline environment, a shared cache for built models, config composition, a
warm train.py runner, and a briefly SFT-trained tiny model. Helpers are in tests/helpers/__init__.py."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

# Under pytest-xdist (`make test` runs one worker a core) each worker, and every train.py it
# starts, gets its share of the cores: workers that each spin a thread pool over all of them
# are slower together than one. Set before torch is first imported.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from rlhf.config import register_schemas  # noqa: E402
from tests.helpers import CONF_DIR, WarmTrain  # noqa: E402


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this test run that every xdist worker sees (the basetemp when not distributed:
    under xdist a worker's basetemp is <run folder>/popen-gwN)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session", autouse=True)
def offline_environment(shared_tmp: Path) -> Path:
    """No hub, no W&B key, and one model cache for the whole session (shared by the xdist
    workers of a run: cache entries are published atomically, whichever worker builds first)."""
    cache = Path(os.environ.get("RLHF_TEST_CACHE") or shared_tmp / "rlhf_cache")
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["RLHF_CACHE"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.pop("WANDB_API_KEY", None)
    os.environ.pop("WANDB_MODE", None)
    os.environ["WANDB_SILENT"] = "true"
    return cache


@pytest.fixture
def compose_config(tmp_path: Path):
    """compose(overrides) → DictConfig of conf/, as train.py would build it (output in tmp)."""
    register_schemas()

    def _compose(overrides: list[str] | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=[f"output_dir={tmp_path}", *(overrides or [])])

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def warm_train(offline_environment: Path):
    """run(args, run_dir) → CompletedProcess of `train.py <args>`, forked warm (WarmTrain)."""
    runner = WarmTrain()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def tiny_sft_model(shared_tmp: Path, offline_environment: Path) -> Path:
    """A tiny model after a short SFT on the insult data (~10 s), shared by the PPO tests: built
    once a run, by whichever xdist worker takes the lock first."""
    from tests.helpers.ppo import train_tiny_sft

    folder = shared_tmp / "tiny_sft"
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / "sft" / "COMPLETE").is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that died half-way
            train_tiny_sft(folder)
    return folder / "sft" / "model"


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory: pytest.TempPathFactory, offline_environment: Path) -> Path:
    """A folder holding a tiny one-output sequence classifier with its (random) score head saved:
    a reward model to point chat and `eval.judge` at."""
    from rlhf.config import ModelConfig
    from rlhf.models.loading import load_model_and_tokenizer

    folder = tmp_path_factory.mktemp("tiny_rm") / "rm"
    model, tokenizer = load_model_and_tokenizer(
        ModelConfig(), offline_environment, kind="reward", new_head=True
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
