"""The warm train.py runner of the tests behaves like a fresh process: its own exit status, the
same timeout, and no fork while another thread could hold a lock."""

from __future__ import annotations

import subprocess
import threading

import pytest

from tests.helpers import train_forks


def test_a_forked_run_past_its_timeout_is_killed_like_a_fresh_process(warm_train, tmp_path):
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        warm_train(["stage=sft", "model=tiny", "logger=none"], tmp_path / "slow", timeout=1)
    assert stopped.value.timeout == 1
    # the server goes on serving: the next run gets its own answer
    result = warm_train(["ppo.klcoef=0.1"], tmp_path / "next")
    assert result.returncode == 2 and "did you mean 'ppo.kl_coef'" in result.stderr


def test_no_fork_while_another_thread_runs():
    release = threading.Event()
    worker = threading.Thread(target=release.wait, name="holds-a-lock")
    worker.start()
    try:
        with pytest.raises(RuntimeError, match="holds-a-lock"):
            train_forks.check_single_threaded()
    finally:
        release.set()
        worker.join()
