"""Data-parallel PPO across processes: who am I, global batch statistics, gradient sync.

Under `accelerate launch` (or torchrun) every process runs the whole loop on its own shard of
the prompts. For one update to equal a single process's update on the concatenated batch:
- prompts are drawn from one seeded order shared by every process and split by rank;
- score normalisation, reward and advantage whitening use moments of the global batch
  (all-reduced sums, the same two-pass formula as `core.masked_var`);
- each micro-batch's gradient weight is its share of the *global* group's tokens (or
  sequences), and the gradients are summed across processes before clipping, so clipping
  and AdamW see the same gradient everywhere and the parameters stay identical;
- decisions that steer the loop (skip a step, stop the epochs early) are taken on global
  values, so every process enters the same collectives.
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

from rlhf.ppo import core

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
    "fsdp", or None for plain processes (single, or data-parallel)."""
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return f"deepspeed-zero{env.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}"
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
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


# --- global masked statistics (pure maths on all-reduced sums) --------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked positions of every process's `values` (B, T)."""
    if world_size() == 1:
        return core.masked_mean(values, mask)
    sums = torch.stack([core.masked_sum(values, mask), mask.to(values.dtype).sum()])
    total, count = all_reduce_sum(sums)
    return total / count.clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Bessel-corrected variance over the masked positions of every process (two passes)."""
    if world_size() == 1:
        return core.masked_var(values, mask)
    mean = masked_mean(values, mask)
    centred = torch.where(mask.bool(), values - mean, torch.zeros_like(values))
    sums = torch.stack([(centred**2).sum(), mask.to(values.dtype).sum()])
    squares, count = all_reduce_sum(sums)
    if count < 2:
        raise ValueError("masked_var: unbiased variance needs at least 2 masked values")
    return squares / (count - 1)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """`core.masked_whiten` with the mean and variance of the global batch."""
    if world_size() == 1:
        return core.masked_whiten(values, mask, shift_mean, eps)
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


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


# --- metrics -----------------------------------------------------------------------------

SUMMED_METRICS = ("ppo/tokens_per_second", "ppo/policy/skipped_minibatches")


def reduce_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """One value per metric for the whole job: sums for throughput and counts, the slowest
    process for `timing/*`, the mean over processes otherwise (every process holds the same
    number of sequences, so per-sequence means are global means)."""
    if world_size() == 1:
        return metrics
    per_process = gather_objects(metrics)
    reduced = {}
    for key in per_process[0]:
        values = [m[key] for m in per_process if key in m]
        if key in SUMMED_METRICS:
            reduced[key] = sum(values)
        elif key.startswith("timing/"):
            reduced[key] = max(values)
        else:
            reduced[key] = sum(values) / len(values)
    return reduced
