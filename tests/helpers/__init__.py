"""Helpers shared by the test modules: config composition with Hydra's own node, train.py as a
user runs it (a fresh interpreter, or forked warm from tests/helpers/train_forks.py), free ports and the
error lines of a run. Fixtures are in conftest.py; PPO building blocks in helpers/ppo.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from rlhf.config import register_schemas
from rlhf.paths import PROJECT_ROOT

CONF_DIR = PROJECT_ROOT / "conf"


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    """conf/ composed with the `hydra` node kept (launcher and sweeper settings)."""
    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


TRAIN_TIMEOUT = 600  # seconds a train.py run of a test may take, fresh or forked


def run_train(
    args: list[str], run_dir: Path, timeout: int = TRAIN_TIMEOUT
) -> subprocess.CompletedProcess:
    """`python train.py <args>` with its run folder at `run_dir`."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
        env=subprocess_environment(),
    )


class WarmTrain:
    """`python train.py` runs forked from one interpreter that imported the stack once
    (tests/helpers/train_forks.py): each is a real process with its own exit status and stderr, started
    in well under a second instead of ~8 s. For the runs meant to fail early and the short
    end-to-end runs; `run_train` keeps a fresh interpreter for the rest."""

    def __init__(self) -> None:
        self.server = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("train_forks.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=PROJECT_ROOT,
            env=subprocess_environment(),
        )

    def __call__(
        self,
        args: list[str],
        run_dir: Path,
        timeout: int = TRAIN_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """`env`: variables added to the run's environment (RLHF_FAULT, RLHF_TEST_KILL)."""
        argv = [*args, f"hydra.run.dir={run_dir}"]
        request = {"argv": argv, "timeout": timeout, "env": env or {}}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        line = self.server.stdout.readline()
        if not line:
            raise RuntimeError(f"train_forks.py exited with code {self.server.wait()}")
        answer = json.loads(line)
        command = ["train.py", *argv]
        if answer["timed_out"]:  # as subprocess.run(timeout=...) reports a fresh process
            raise subprocess.TimeoutExpired(command, timeout, answer["stdout"], answer["stderr"])
        return subprocess.CompletedProcess(
            command, answer["returncode"], answer["stdout"], answer["stderr"]
        )

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


def subprocess_environment() -> dict[str, str]:
    """This process's environment for a train.py child, without the address of this process's
    W&B service: a child that is killed must not leave its run open in a service we reuse."""
    env = {key: value for key, value in os.environ.items() if key != "WANDB_SERVICE"}
    return {**env, "HYDRA_FULL_ERROR": ""}


def free_port() -> int:
    """A TCP port nobody listens on now (an accelerate rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The stderr lines a user reads (Hydra's and libraries' log records aside)."""
    return [line for line in result.stderr.splitlines() if "error" in line.lower()]


def read_jsonl(path: Path) -> list[dict]:
    """Every record of a JSON-lines file a finished run wrote (strict: a broken line fails)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def whole_ppo_checkpoint(folder: Path) -> Path:
    """A PPO checkpoint folder with every file a resume reads (tiny stand-in contents), named
    update-NNNNNN: resume tests damage or surround it."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, folder / "trainable.safetensors")
    torch.save({"optimizer": {}}, folder / "state.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"update": int(folder.name[-6:])}))
    return folder
