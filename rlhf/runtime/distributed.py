"""The process group of a data-parallel run: who am I, collectives, data shards, gradient sync.

Under `accelerate launch` (or torchrun) every process runs a stage on its own shard of the data.
This module is what every stage shares about that: rank and device, barriers, reductions and
gathers, a process's share of a list, and the gradient sum PPO uses. For PPO's update to equal a
single process's update on the concatenated batch (rlhf/ppo/trainer.py):
- prompts are drawn from one seeded order shared by every process and split by rank (`shard`);
- whitening and score normalisation use moments of the global batch (rlhf/ppo/batch_stats.py);
- each micro-batch's gradient weight is its share of the *global* group's tokens (or
  sequences), and the gradients are summed across processes before clipping
  (`sum_gradients`), so clipping and AdamW see the same gradient everywhere;
- decisions that steer the loop (skip a step, stop the epochs early) are taken on global
  values (`any_process`, `mean_of_all`), so every process enters the same collectives.
The sync is one all-reduce per optimiser step of the flattened gradients (what DDP does,
without overlapping it with the backward pass), which leaves the actor-critic's several
forward/backward passes free of a DDP wrapper. With one process every function is the local
computation, and no process group is needed.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist

BUCKET_ELEMENTS = 2**24  # gradient elements per all-reduce (64 MiB in fp32)


@functools.cache
def _state():
    """accelerate's process state: joins the process group that `accelerate launch` set up
    (NCCL on GPUs; gloo on a machine without one, where accelerate needs `cpu=True` to see the
    processes at all). Created before any TRL trainer, whose Accelerator then shares it."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    return _state().num_processes


def rank() -> int:
    return _state().process_index


def is_main_process() -> bool:
    return _state().is_main_process


def device() -> torch.device:
    """This process's device (cuda:<local rank> on GPUs, cpu otherwise)."""
    return _state().device


def launch_engine(env: Mapping[str, str]) -> str | None:
    """The sharding engine `accelerate launch` set up for this process: "deepspeed-zero<N>",
    "fsdp<version>" ("fsdp2" for accelerate/fsdp.yaml), or None for plain processes (single,
    or data-parallel)."""
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return f"deepspeed-zero{env.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}"
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return f"fsdp{env.get('FSDP_VERSION', '1')}"
    return None


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


# --- collectives ------------------------------------------------------------------------


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a copy; the input is left as it is)."""
    total = tensor.clone()
    if world_size() > 1:
        dist.all_reduce(total)
    return total


def gather_objects(value: object) -> list:
    """[value of process 0, value of process 1, ...] on every process."""
    if world_size() == 1:
        return [value]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: object) -> object:
    """The main process's value, on every process."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_1d(values: torch.Tensor) -> torch.Tensor:
    """(n_rank,) on each process → (Σ n_rank,) in rank order, on every process."""
    if world_size() == 1:
        return values
    parts = gather_objects(values.detach().cpu())
    return torch.cat(parts).to(values.device)


def any_process(flag: bool) -> bool:
    return bool(all_reduce_sum(torch.tensor(float(flag), device=device())).item() > 0)


def mean_of_all(values: Sequence[float]) -> float | None:
    """Mean of the values of every process taken together; None when no process has any."""
    sums = torch.tensor([sum(values), len(values)], dtype=torch.float64, device=device())
    total, count = all_reduce_sum(sums).tolist()
    return total / count if count else None


# --- data --------------------------------------------------------------------------------


def shard(items: Sequence, process: int | None = None, processes: int | None = None) -> list:
    """This process's contiguous share of `items` (the first processes take one more when the
    length does not divide)."""
    process = rank() if process is None else process
    processes = world_size() if processes is None else processes
    start = shard_offset(len(items), process, processes)
    size, extra = divmod(len(items), processes)
    return list(items[start : start + size + (process < extra)])


def shard_offset(length: int, process: int | None = None, processes: int | None = None) -> int:
    """Index of the first item of this process's share of `length` items (see `shard`)."""
    process = rank() if process is None else process
    processes = world_size() if processes is None else processes
    size, extra = divmod(length, processes)
    return process * size + min(process, extra)


# --- parameters and gradients ---------------------------------------------------------------


def broadcast_parameters(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Copy the main process's values into every process (fresh heads and adapters are random)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for param in parameters:
            dist.broadcast(param.data, src=0)


def sum_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """grad ← Σ over processes of grad, in flattened buckets (one collective per bucket). A
    parameter without a gradient here counts as zero, so every process sends the same buckets."""
    if world_size() == 1:
        return
    groups: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    for param in parameters:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        groups[(param.grad.dtype, param.grad.device)].append(param.grad)
    for grads in groups.values():
        bucket, size = [], 0
        for grad in grads:
            bucket.append(grad)
            size += grad.numel()
            if size >= BUCKET_ELEMENTS:
                _sum_bucket(bucket)
                bucket, size = [], 0
        _sum_bucket(bucket)


def _sum_bucket(grads: list[torch.Tensor]) -> None:
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()
