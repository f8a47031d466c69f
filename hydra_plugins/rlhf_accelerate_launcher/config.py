"""Schema of `hydra/launcher=slurm_accelerate`: hydra-submitit-launcher's SLURM settings plus
where accelerate comes in. conf/hydra/launcher/slurm_accelerate.yaml fills it in."""

# no `from __future__ import annotations`: Hydra's plugin scan runs this module outside
# sys.modules, where dataclasses cannot resolve string annotations
from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf


@dataclass
class AccelerateSlurmQueueConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.rlhf_accelerate_launcher.launcher.AccelerateSlurmLauncher"
    # accelerate config each job is launched with (relative to the project root)
    accelerate_config: str = "accelerate/ddp.yaml"
    # processes per node (null: gpus_per_node)
    processes_per_node: Optional[int] = None  # noqa: UP045 (see above)
    # rendezvous port = this + SLURM job id mod 10000 (jobs sharing a node do not collide)
    main_process_port: int = 20000


ConfigStore.instance().store(
    group="hydra/launcher",
    name="slurm_accelerate_schema",
    node=AccelerateSlurmQueueConf,
    provider="rlhf",
)
