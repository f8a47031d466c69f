"""`release_whole_weights` (rlhf/runtime/sharding.py) through torch's public state-dict API, on
two gloo CPU processes: after a sharded forward the main process holds plain whole tensors equal
to the weights before sharding (tied weights still one parameter), its `state_dict` and
`save_pretrained` see no shard, and the other process keeps its shards. Bitwise equality: the
gather copies values, it computes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf.runtime import sharding
from tests.helpers import free_port


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def release_on(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = tiny_model()
        before = {name: param.detach().clone() for name, param in model.named_parameters()}
        sharding.shard_per_layer(model)
        with torch.no_grad():  # the root unit stays gathered after forward
            model(input_ids=torch.arange(6)[None])
        sharding.release_whole_weights(model)
        params = dict(model.named_parameters(remove_duplicate=False))
        if rank != 0:
            assert all(isinstance(p, DTensor) for p in params.values())
            return
        assert not any(isinstance(v, DTensor) for v in model.state_dict().values())
        assert params["lm_head.weight"] is params["model.embed_tokens.weight"]
        for name, param in model.named_parameters():
            assert torch.equal(param.detach(), before[name]), name
        model.save_pretrained(folder)
    finally:
        dist.destroy_process_group()


def test_the_main_process_gets_plain_whole_weights_from_the_public_api(tmp_path: Path):
    mp.spawn(release_on, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    saved = load_file(str(tmp_path / "model.safetensors"))
    for name, value in tiny_model().state_dict().items():
        if name != "lm_head.weight":  # tied: saved once, as the embedding
            assert torch.equal(saved[name], value), name
