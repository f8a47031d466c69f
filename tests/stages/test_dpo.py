"""Stage dpo end to end through train.py on the tiny SFT model: TRL's DPOTrainer against the
model it starts from as reference, full weights and LoRA, its metrics and its saved policy."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import read_jsonl

DPO_TINY = [
    "stage=dpo", "logger=none", "dpo.max_train_samples=64", "dpo.max_eval_samples=32",
    "dpo.logging_steps=1", "dpo.per_device_train_batch_size=8",
]  # fmt: skip


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_starts_at_its_reference_and_learns_the_preferences(
    warm_train, tiny_sft_model, tmp_path, lora
):
    """The first logged step is computed before any update, with the policy equal to its
    reference (a frozen copy, or the adapters off with LoRA): every implicit reward β·(log π −
    log π_ref) is 0 there. One run, because the spread leaves wide margins: 8 steps of 8 pairs,
    per dpo.seed on a 2-core AMD EPYC, seeds 42 (this run),0,1,2, identical with 1 and 2 torch
    threads: last margin 5.6 6.3 6.5 5.3 (full, lr 1e-3), 6.8 7.3 5.5 4.3 (LoRA, lr 1e-2); loss
    log 2 → ≤ 0.05; held-out pair accuracy 1.0 1.0 1.0 1.0 (full), 0.97 0.94 1.0 1.0 (LoRA)."""
    lr = "1e-2" if lora else "1e-3"
    overrides = [
        *DPO_TINY, f"model.name_or_path={tiny_sft_model}", f"dpo.learning_rate={lr}",
        f"model.lora.enabled={str(lora).lower()}",
    ]  # fmt: skip
    result = warm_train(overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    stage = tmp_path / "dpo"
    assert (stage / "COMPLETE").is_file()
    logged = [r for r in read_jsonl(stage / "metrics.jsonl") if "dpo/train/rewards/margins" in r]
    assert len(logged) == 8  # 64 pairs / 8
    first, last = logged[0], logged[-1]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert first[f"dpo/train/{key}"] == pytest.approx(0.0, abs=1e-5), key
    assert last["dpo/train/rewards/margins"] > 0.5
    assert last["dpo/train/loss"] < first["dpo/train/loss"]  # log 2 at the start
    final = json.loads((stage / "run_info.json").read_text())["final_metrics"]
    assert final["dpo/test/rewards/accuracies"] >= 0.7 and final["dpo/test_rows"] == 32
    # the saved policy: merged full weights, every tensor the step should move moved
    start, saved = (
        load_file(tiny_sft_model / "model.safetensors"),
        load_file(stage / "model" / "model.safetensors"),
    )
    assert saved.keys() == start.keys()
    trained = [name for name in start if "layers" in name] if not lora else list(start)
    moved = [name for name in trained if not torch.equal(start[name], saved[name])]
    if lora:  # LoRA on every linear layer: the merged projections moved, nothing else
        assert moved and all("proj" in name for name in moved)
    else:
        assert moved == trained
