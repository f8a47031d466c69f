"""The launcher class: submitit's SLURM launcher whose jobs run train.py under accelerate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import DictConfig

OWN_KEYS = ("accelerate_config", "processes_per_node", "main_process_port")


class AccelerateSlurmLauncher(SlurmLauncher):
    def __init__(self, **params: Any) -> None:
        own = {key: params.pop(key) for key in OWN_KEYS}
        if params.get("tasks_per_node", 1) != 1:
            raise ValueError(
                "hydra.launcher.tasks_per_node: must be 1 (one task per node starts "
                "accelerate, which starts processes_per_node processes)"
            )
        super().__init__(**params)
        self.accelerate_config = str(own["accelerate_config"])
        self.processes_per_node = int(own["processes_per_node"] or params.get("gpus_per_node") or 1)
        self.main_process_port = int(own["main_process_port"])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """On the node: run the job's Hydra setup with `train_under_accelerate` as the task."""
        self.task_function = self.train_under_accelerate
        return super().__call__(*args, **kwargs)

    def train_under_accelerate(self, cfg: DictConfig) -> float | None:
        import submitit

        from rlhf.sweeps.cluster import (
            AccelerateLaunch,
            job_port,
            run_under_accelerate,
            with_auto_resume,
        )
        from rlhf.sweeps.jobs import current_job, run_recorded

        job = submitit.JobEnvironment()
        hydra = HydraConfig.get()
        launch = AccelerateLaunch(
            config_file=self.accelerate_config,
            processes_per_node=self.processes_per_node,
            num_machines=job.num_nodes,
            machine_rank=job.node,
            main_process_ip=job.hostnames[0],
            main_process_port=job_port(self.main_process_port, job.job_id),
        )

        def run() -> tuple[str | None, float | None]:
            overrides = with_auto_resume(list(hydra.overrides.task))
            return run_under_accelerate(launch, overrides, Path(hydra.runtime.output_dir))

        sweep_job = current_job()
        if sweep_job is None or job.node != 0:  # one job.json per job: the first node's
            return run()[1]
        # the job's status, objective and error in job.json, as for every multirun job
        return run_recorded(sweep_job, run)
