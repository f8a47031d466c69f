"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for PPO: models sharded per decoder layer.

Under `accelerate launch --config_file accelerate/fsdp.yaml` every process holds 1/N of each
sharded model's weights, gradients and AdamW moments (the optimiser is built on the sharded
parameters, so its state is sharded with them). What PPO needs from that, kept here:
- `shard_per_layer`: one FSDP unit per decoder layer (the classes a model names in
  `_no_split_modules`, as accelerate's TRANSFORMER_BASED_WRAP does) and one for the rest of the
  model (embeddings, final norm, LM head: tied weights stay in one unit). Layers reshard after
  their forward (ZeRO-3-like). Gradients are *summed* over processes (divide factor 1), as
  `distributed.sum_gradients` sums them for DDP: each micro-batch's loss is already weighted by
  its share of the global batch.
- `gathered`: generation with whole weights. Decoding gathers every layer at every token when
  sharded; instead the policy is unsharded once for the rollout and resharded after, which needs
  room for one whole copy of the policy's weights (not its gradients or moments) per process. It
  also lets processes decode different numbers of tokens: no collective runs inside `generate`.
- DTensor-aware helpers: the gradient norm over sharded and replicated parameters, and a
  parameter's or moment's whole value (gathered) and back (a checkpoint holds whole tensors).
- `release_whole_weights`: the run's end; the main process receives whole weights (torch's
  public `get_model_state_dict`), so it saves (and merges LoRA into) plain tensors with
  transformers' own `save_pretrained`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from rlhf.errors import ConfigError
from rlhf.runtime import distributed

_RESHARDS = "_rlhf_reshards_after_forward"  # set on the units that free their weights after forward
_GATHERED = "_rlhf_gathered"  # set on a model inside `gathered`


def fsdp2_requested(env: Mapping[str, str]) -> bool:
    """True when `accelerate launch` set up FSDP version 2 for this process."""
    return distributed.launch_engine(env) == "fsdp2"


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers: modules of the classes it names in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"FSDP2: {type(model).__name__} names no decoder layer class (_no_split_modules), "
            "so it cannot be sharded per layer; use accelerate/ddp.yaml"
        )
    return layers


def shard_per_layer(model: nn.Module, root: nn.Module | None = None) -> None:
    """Shard `model` in place: each decoder layer one unit, then `root` (default: the model,
    whose forward must be the one called) holding what is left. Call after every process holds
    the same weights (trained ones broadcast) and before the optimiser is built."""
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=True)
        setattr(layer, _RESHARDS, True)
    fully_shard(root if root is not None else model, reshard_after_forward=False)
    for module in fsdp_modules(model):
        module.set_gradient_divide_factor(1.0)  # sum, not mean: the losses are pre-weighted
        # plain SUM collectives in every dtype (fp32 would otherwise use NCCL's PREMUL_SUM,
        # which gloo lacks)
        module.set_force_sum_reduction_for_comms(True)


def fsdp_modules(model: nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: nn.Module) -> bool:
    return bool(fsdp_modules(model))


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Whole weights in `model` for the duration (one all-gather per unit, on every process),
    sharded again on exit; a model that is not sharded is left as it is."""
    modules = fsdp_modules(model)
    outer = not getattr(model, _GATHERED, False)  # nested: the outer context gathers
    if outer:
        for module in modules:
            module.set_reshard_after_forward(False, recurse=False)
            module.unshard()
        setattr(model, _GATHERED, True)
    try:
        yield
    finally:
        if outer:
            setattr(model, _GATHERED, False)
            for module in modules:
                module.reshard()
                module.set_reshard_after_forward(getattr(module, _RESHARDS, False), recurse=False)


def release_whole_weights(model: nn.Module) -> None:
    """End of training: whole weights in place of the shards on the main process, so that its
    `state_dict`, `save_pretrained` and LoRA's `merge_and_unload` see plain whole tensors. They
    are gathered by torch's public `get_model_state_dict` (full state dict, offloaded to the
    CPU of the main process, as accelerate saves FSDP2 models) and put back on each
    parameter's device; the other processes take part in the gather and keep their shards.
    The model must not run forward afterwards. Every process calls it (the gather is a
    collective); a model that is not sharded is left as it is."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    for root in _outermost(fsdp_modules(model)):  # a frozen reference left whole: not copied
        whole_values = get_model_state_dict(root, options=options)  # {} off the main process
        for module in fsdp_modules(root):
            # sharded state: FSDP's pre-save hook (it puts the shards back) is then a no-op
            module.reshard()
        if whole_values:
            _put_whole(root, whole_values)


def _outermost(modules: list[FSDPModule]) -> list[FSDPModule]:
    """The modules of `modules` that no other one contains (those `fully_shard` was last
    called on: a model's root unit)."""
    inner = {id(sub) for module in modules for sub in module.modules() if sub is not module}
    return [module for module in modules if id(module) not in inner]


def _put_whole(root: nn.Module, whole_values: dict[str, torch.Tensor]) -> None:
    """Each sharded parameter of `root` replaced by a plain one holding its whole value (on
    the shard's device); tied weights stay one parameter."""
    replaced: dict[int, nn.Parameter] = {}
    for name, param in list(root.named_parameters(remove_duplicate=False)):
        if not isinstance(param, DTensor):
            continue
        if id(param) not in replaced:
            value = whole_values[name].to(param.device)
            replaced[id(param)] = nn.Parameter(value, requires_grad=param.requires_grad)
        owner, _, attribute = name.rpartition(".")
        setattr(root.get_submodule(owner), attribute, replaced[id(param)])


# --- sharded tensors ------------------------------------------------------------------------


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a sharded tensor (a collective: every process calls it in the same
    order); a plain tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`value` (whole) laid out as `reference`: this process's shard when the reference is
    sharded (taken locally, no communication), else `value` itself."""
    if not isinstance(reference, DTensor):
        return value
    value = value.to(device=reference.device, dtype=reference.dtype)
    return distribute_tensor(value, reference.device_mesh, reference.placements, src_data_rank=None)


def split_sharded(params: Iterable[nn.Parameter]) -> tuple[list, list]:
    """(sharded parameters, whole ones), each in the order given."""
    params = list(params)
    return [p for p in params if isinstance(p, DTensor)], replicated(params)


def replicated(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters FSDP does not manage (value heads, a critic's score head): their
    gradients are summed by `distributed.sum_gradients`, as under DDP."""
    return [p for p in params if not isinstance(p, DTensor)]


def gradient_norm(params: Iterable[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Total 2-norm of the gradients of sharded (DTensor) and replicated parameters together,
    as one process would compute it on whole gradients: Σ over processes of the local shards'
    squares, plus the replicated ones' squares once. With `max_norm`, clip as
    `torch.nn.utils.clip_grad_norm_` does (scale by max_norm / (norm + 1e-6) when below 1)."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    squares = torch.zeros(2, dtype=torch.float64, device=distributed.device())
    for index, part in enumerate((sharded, plain)):
        for grad in part:
            squares[index] += grad.double().pow(2).sum()
    local_sharded = squares[0].clone()
    total = distributed.all_reduce_sum(local_sharded) + squares[1]
    norm = total.sqrt().to(grads[0].dtype if grads else torch.float32)
    if max_norm is not None and math.isfinite(norm.item()):
        coefficient = min(1.0, max_norm / (norm.item() + 1e-6))
        if coefficient < 1.0:
            for grad in grads:
                grad.mul_(coefficient)
    return norm
