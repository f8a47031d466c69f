"""A real `hydra/launcher=slurm_accelerate` sweep submitted to a one-machine SLURM
(tests/helpers/fake_slurm.py): Hydra → our launcher plugin → submitit's sbatch script and pickles →
one task per node → `accelerate launch` across the two 'nodes' (gloo rendezvous on localhost)
→ train.py → the objective back to Hydra and into job.json."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

from rlhf.paths import PROJECT_ROOT
from rlhf.sweeps.jobs import job_dirs
from tests.helpers import fake_slurm, free_port


def test_slurm_sweep_runs_each_job_under_accelerate_across_two_nodes(tmp_path):
    env = {
        **os.environ,
        **fake_slurm.install(tmp_path / "bin", tmp_path / "slurm"),
        "HYDRA_FULL_ERROR": "",
    }
    env.pop("WANDB_SERVICE", None)
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable, str(PROJECT_ROOT / "train.py"), "-m",
        "hydra/launcher=slurm_accelerate", "hydra.launcher.nodes=2",
        "hydra.launcher.partition=fake", "hydra.launcher.timeout_min=10",
        f"hydra.launcher.main_process_port={free_port()}",
        "stage=sft", "model=tiny", "logger=none", "sft.max_steps=2", "sft.max_eval_samples=4",
        "sft.learning_rate=1e-4,3e-4", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    result = subprocess.run(
        command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600
    )
    submitit_logs = "\n".join(
        path.read_text()[-2000:] for path in sorted(sweep_dir.glob(".submitit/*/*log.*"))
    )
    assert result.returncode == 0, result.stderr[-3000:] + submitit_logs

    # one sbatch script: an array of the two sweep points, two nodes each
    (script,) = sweep_dir.rglob("*_submission.sh")
    options = fake_slurm.sbatch_options(script)
    assert options["array"].startswith("0-1") and options["nodes"] == "2"
    assert options["partition"] == "fake" and options["ntasks-per-node"] == "1"

    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 2
    for index, (job_dir, learning_rate) in enumerate(zip(jobs, [1e-4, 3e-4], strict=True)):
        job = json.loads((job_dir / "job.json").read_text())
        assert job["status"] == "complete", job
        info = json.loads((job_dir / "sft" / "run_info.json").read_text())
        assert info["config"]["sft"]["learning_rate"] == learning_rate
        assert job["objective"] == "sft/test/loss"  # the run's main process's value, via Hydra
        assert job["objective_value"] == info["final_metrics"]["sft/test/loss"]
        assert (job_dir / "sft" / "COMPLETE").is_file()
        # both nodes' tasks finished: rank 0 trained with rank 1 in its process group
        results = {  # <array job>_<array task>_<task>_result.pkl
            path.name.split("_")[2]: path
            for path in sweep_dir.rglob("*_result.pkl")
            if path.name.split("_")[1] == str(index)
        }
        assert sorted(results) == ["0", "1"]
        for path in results.values():
            outcome, value = pickle.loads(path.read_bytes())
            assert outcome == "success", value
