"""A LoRA policy's frozen base held in bf16 under model.mixed_precision=bf16: the same outputs
and adapter gradients as autocast's per-call casts, fp32 adapters, and a merged save from the
fp32 base read back from the folder."""

from __future__ import annotations

import copy
import gc
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file, save_file

from rlhf.errors import ModelLoadError
from rlhf.models.frozen_base import cast_frozen_base, frozen_linears
from rlhf.models.loading import load_model_and_tokenizer, lora_config
from rlhf.models.low_precision import autocast
from tests.helpers.ppo import make_config, make_trainer


def lora_policy(folder, targets=("q_proj", "v_proj")):
    """A LoRA policy on the folder's model with every adapter weight random (a fresh lora_B is
    0, which would hide the adapter path)."""
    config = make_config(folder, lora=True)
    config.model.lora.target_modules = list(targets)
    policy, _ = load_model_and_tokenizer(config.model, config.cache_dir)
    policy = get_peft_model(policy, lora_config(config.model.lora, policy.config.num_hidden_layers))
    torch.manual_seed(3)
    for name, param in policy.named_parameters():
        if "lora_" in name:
            param.data.normal_(0, 0.2)
    return policy.eval()


def adapter_grads(policy, ids):
    with autocast("bf16", "cpu"):
        logits = policy(input_ids=ids).logits
    loss = torch.log_softmax(logits.float(), -1)[..., 5].sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
    return logits.detach(), grads


def test_the_base_cast_once_computes_exactly_what_autocast_computes(tiny_sft_model):
    reference = lora_policy(tiny_sft_model)
    cast = copy.deepcopy(reference)
    frozen = cast_frozen_base(cast, "bf16")
    assert frozen is not None and frozen.folder == tiny_sft_model
    base = cast.get_base_model()
    layers = base.config.num_hidden_layers
    # q, k, v, o, gate, up, down of every layer; the tied LM head stays with the embedding
    assert len(frozen.modules) == 7 * layers
    assert {"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"} <= set(
        frozen.modules
    )
    assert frozen.modules["model.layers.0.self_attn.q_proj"].endswith("q_proj.base_layer")
    for name, param in cast.named_parameters():
        wrapped = ".base_layer." in name or name.endswith(("_proj.weight",))
        if "lora_" in name:
            assert param.dtype == torch.float32 and param.requires_grad, name
        elif wrapped:
            assert param.dtype == torch.bfloat16 and not param.requires_grad, name
        else:  # embedding (tied to the head) and norms
            assert param.dtype == torch.float32, name
    ids = torch.randint(
        0, base.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(1)
    )
    expected_logits, expected_grads = adapter_grads(reference, ids)
    got_logits, got_grads = adapter_grads(cast, ids)
    assert torch.equal(got_logits, expected_logits)
    assert expected_grads.keys() == got_grads.keys() and len(got_grads) == 4 * layers
    for name, grad in expected_grads.items():
        assert grad.abs().sum() > 0, name
        assert torch.equal(got_grads[name], grad), name


def test_nothing_is_cast_in_fp32_or_without_a_folder_to_restore_from(tiny_sft_model, caplog):
    policy = lora_policy(tiny_sft_model)
    assert cast_frozen_base(policy, "no") is None
    policy.get_base_model().config._name_or_path = ""  # a model built in memory
    with caplog.at_level(logging.INFO, logger="rlhf.models.frozen_base"):
        assert cast_frozen_base(policy, "bf16") is None
    assert "kept in float32" in caplog.text and "lacks 14 of its weights" in caplog.text
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    assert cast_frozen_base(torch.nn.Linear(2, 2), "bf16") is None  # not a PEFT model


def test_ppo_with_a_lora_critic_saves_the_merge_of_the_fp32_base(tiny_sft_model, tmp_path):
    """A LoRA policy and critic adapter on a bf16 base train one update; both adapters stay
    fp32 (the critic's is inactive, hence frozen, when the cast runs); the saved model is the
    merge of the trained adapters into the folder's fp32 weights, to the bit."""
    from rlhf.stages.ppo import save_outputs

    config = make_config(tiny_sft_model, lora=True, batch_size=4, micro_batch_size=4)
    config.model.mixed_precision = "bf16"
    config.ppo.critic = "lora"
    trainer = make_trainer(config, tmp_path / "run")
    model = trainer.model
    assert model.frozen_base is not None
    adapters = {n: p for n, p in model.policy.named_parameters() if "lora_" in n}
    assert any(".critic." in n for n in adapters) and any(".default." in n for n in adapters)
    assert all(p.dtype == torch.float32 for p in adapters.values())
    before = {n: p.detach().clone() for n, p in adapters.items()}
    trainer.step()
    moved = [n for n, p in adapters.items() if not torch.equal(p, before[n])]
    assert {n.split(".lora_")[1].split(".")[1] for n in moved} == {"default", "critic"}

    trained = {n: p.detach().clone() for n, p in model.policy.named_parameters() if "lora_" in n}
    ctx = SimpleNamespace(stage_dir=tmp_path / "ppo", model_dir=tmp_path / "ppo" / "model")
    save_outputs(ctx, model, trainer.tokenizer)
    saved = load_file(ctx.model_dir / "model.safetensors")

    expected = lora_policy(tiny_sft_model, config.model.lora.target_modules)
    with torch.no_grad():
        for name, param in expected.named_parameters():
            if "lora_" in name:
                param.copy_(trained[name])
    merged = expected.merge_and_unload().state_dict()
    assert all(t.dtype == torch.float32 for t in saved.values())
    compared = [k for k in saved if k in merged]
    assert len(compared) >= 7 * 2
    for key in compared:
        assert torch.equal(saved[key], merged[key]), key


def test_a_folder_changed_during_the_run_stops_the_merged_save(tiny_sft_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_sft_model, folder)
    policy = lora_policy(folder)
    frozen = cast_frozen_base(policy, "bf16")
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"] += 1.0
    save_file(weights, str(folder / "model.safetensors"), {"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"model\.layers\.1\.mlp\.up_proj\.weight .*changed"):
        frozen.restore(policy)


def test_frozen_linears_leave_out_adapters_saved_modules_and_tied_heads(tiny_sft_model):
    policy = lora_policy(tiny_sft_model)
    names = set(frozen_linears(policy.get_base_model()))
    assert not any("lora" in n or "modules_to_save" in n for n in names)
    assert "lm_head" not in names  # tied to the embedding


def mapped_files() -> set[str]:
    """The files this process has mapped (Linux: /proc/self/maps)."""
    with open("/proc/self/maps") as maps:
        return {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc")
def test_a_cast_model_lets_go_of_the_weights_file_it_was_loaded_from(tiny_sft_model, tmp_path):
    """transformers maps safetensors files and every tensor loaded from one keeps the mapping
    (and the float32 pages the cast read) resident; after a cast nothing of the file is left
    mapped, for the LoRA base and for a frozen model alike, while float32 keeps it mapped."""
    from rlhf.models.low_precision import cast_frozen_linears

    folder = shutil.copytree(tiny_sft_model, tmp_path / "model")  # a file no other test maps
    weights = str((folder / "model.safetensors").resolve())
    kept = lora_policy(folder)
    assert weights in mapped_files()  # loaded mapped, so the check below can fail
    assert cast_frozen_base(kept, "no") is None
    assert weights in mapped_files()
    cast = lora_policy(folder)
    assert cast_frozen_base(cast, "bf16") is not None
    config = make_config(folder)
    frozen, _ = load_model_and_tokenizer(config.model, config.cache_dir)
    cast_frozen_linears(frozen.requires_grad_(False), "bf16")
    del kept
    gc.collect()
    assert weights not in mapped_files()
    base = cast.get_base_model()
    assert base.lm_head.weight is base.get_input_embeddings().weight  # the tie survived the copy
    for model in (cast, frozen):  # every tensor still there, in both dtypes
        dtypes = {p.dtype for p in model.parameters()}
        assert dtypes == {torch.float32, torch.bfloat16}
