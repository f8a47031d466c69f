"""What each suspected loop cost of issue 15 costs on this machine, measured on a reference
workload's real models and last rollout (benchmarks/ppo_bench.py), each item alone.

    MALLOC_MMAP_THRESHOLD_=65536 .venv/bin/python benchmarks/loop_costs.py --workload w-small

Prints one JSON line per item: milliseconds (median of --repeats) of each variant, and the peak
RSS growth where memory is the point. "per update" multiplies by how often the loop does it in
one update of the workload (8 micro-steps and 8 optimiser steps; 1 rollout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from logprobs_bench import rss_kib  # noqa: E402
from ppo_bench import WORKLOADS, build_trainer  # noqa: E402

from rlhf.models.scoring import score_token_batch  # noqa: E402
from rlhf.ppo.logprobs import token_logprobs  # noqa: E402
from rlhf.ppo.optimiser import optimised_parameters  # noqa: E402
from rlhf.runtime.generation import EncodedPrompts, joined_inputs  # noqa: E402


def timed(function, repeats: int) -> tuple[float, float]:
    """(median ms, peak RSS growth MiB of the first call)."""
    function()  # warm-up
    before = rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    times = []
    for index in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
        if index == 0:
            peak = (rss_kib("VmHWM") - before) / 1024
    return 1e3 * statistics.median(times), peak


def report(item: str, per_update: int, **variants: tuple[float, float]) -> None:
    row = {"item": item, "per_update": per_update}
    for name, (ms, peak) in variants.items():
        row[name] = {"ms": round(ms, 1), "peak_mib": round(peak), "per_update_s": None}
        row[name]["per_update_s"] = round(ms * per_update / 1e3, 3)
    print(json.dumps(row), flush=True)


def gather(log_probs, tokens):
    """(B, T, V) log-probabilities, (B, T) tokens → (B, T): the plain formula's gather."""
    return torch.gather(log_probs, 2, tokens.unsqueeze(-1)).squeeze(-1)


def micro_inputs(rollout, index):
    encoded = EncodedPrompts(
        rollout.encoded.input_ids[index], rollout.encoded.attention_mask[index]
    )
    widths = (encoded.input_ids.shape[1], rollout.responses.shape[1])
    return joined_inputs(encoded, rollout.responses[index], rollout.mask[index]), widths


def measure_all(trainer, scorer, repeats: int) -> None:
    rollout, model, c = trainer._last_rollout, trainer.model, trainer.config
    micro = torch.arange(c.micro_batch_size)
    inputs, widths = micro_inputs(rollout, micro)
    responses = rollout.responses[micro]
    with torch.no_grad():
        logits = model.policy_forward(inputs, *widths)[0]
    temperature = c.temperature + 1e-7

    def today_logprobs():  # _micro_step: one log-softmax, gather, entropy (no graph)
        leaf = logits.detach().requires_grad_()
        log_probs_all = torch.log_softmax(leaf.float() / temperature, dim=-1)
        gather(log_probs_all, responses).sum().backward()
        with torch.no_grad():
            (-(log_probs_all.exp() * log_probs_all).sum(-1)).mean().item()

    def today_without_entropy():
        leaf = logits.detach().requires_grad_()
        log_probs_all = torch.log_softmax(leaf.float() / temperature, dim=-1)
        gather(log_probs_all, responses).sum().backward()

    def selective(with_entropy: bool, save: bool = False):
        def run():
            leaf = logits.detach().requires_grad_()
            logprobs, entropy = token_logprobs(
                leaf, responses, temperature, with_entropy=with_entropy, save_log_probs=save
            )
            logprobs.sum().backward()
            if with_entropy:
                entropy.mean().item()

        return run

    def exact_temperature():  # T itself (1.0) instead of T + 1e-7: no scaling pass
        leaf = logits.detach().requires_grad_()
        token_logprobs(leaf, responses, c.temperature, save_log_probs=True)[0].sum().backward()

    report(
        "micro-step log-probs + entropy on (4, 32, V) logits, forward + backward", 8,
        today=timed(today_logprobs, repeats),
        today_without_entropy=timed(today_without_entropy, repeats),
        selective_with_entropy=timed(selective(True), repeats),
        selective_no_entropy=timed(selective(False), repeats),
        selective_saved_with_entropy=timed(selective(True, save=True), repeats),
        selective_saved_no_entropy=timed(selective(False, save=True), repeats),
        selective_saved_no_entropy_exact_t=timed(exact_temperature, repeats),
    )  # fmt: skip
    all_inputs, all_widths = micro_inputs(rollout, torch.arange(rollout.responses.shape[0]))

    @torch.no_grad()
    def rollout_batched():
        model.policy_forward(all_inputs, *all_widths)

    @torch.no_grad()
    def rollout_micro():
        for index in torch.arange(rollout.responses.shape[0]).split(c.micro_batch_size):
            part, part_widths = micro_inputs(rollout, index)
            model.policy_forward(part, *part_widths)

    report(
        "rollout policy forward, 8 rows at once vs 2 × 4", 3,
        batched=timed(rollout_batched, repeats), micro_batched=timed(rollout_micro, repeats)
    )  # fmt: skip

    @torch.no_grad()
    def hidden_states(keep: bool):
        return lambda: model.policy(**inputs, output_hidden_states=keep, use_cache=False)

    report(
        "policy forward (4 rows) with output_hidden_states (value_head critic only)", 0,
        without=timed(hidden_states(False), repeats), with_all_layers=timed(hidden_states(True), repeats)
    )  # fmt: skip
    params = optimised_parameters(trainer.optimizer)
    for p in params:
        p.grad = torch.zeros_like(p)
    report(
        "optimiser step pieces over policy + critic parameters", 8,
        grad_norm_inf=timed(lambda: torch.nn.utils.clip_grad_norm_(params, float("inf")), repeats),
        norm_only=timed(lambda: torch.nn.utils.get_total_norm([p.grad for p in params]), repeats),
        zero_grad_keep=timed(lambda: trainer.optimizer.zero_grad(set_to_none=False), repeats),
        adamw_fused_step=timed(trainer.optimizer.step, repeats),
    )  # fmt: skip
    trainer.optimizer.zero_grad(set_to_none=True)
    report_reward(trainer, scorer, rollout, repeats)
    report_autocast(model, inputs, widths, repeats)
    report_syncs(rollout, repeats)


def report_reward(trainer, scorer, rollout, repeats: int) -> None:
    texts = [
        scorer.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": t}], tokenize=False
        )
        for p, t in zip(rollout.prompts, rollout.texts, strict=True)
    ]
    batch = scorer.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def text_work():
        trainer.tokenizer.batch_decode(rollout.responses, skip_special_tokens=True)
        rows = [
            scorer.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": t}],
                tokenize=False,
            )
            for p, t in zip(rollout.prompts, rollout.texts, strict=True)
        ]
        scorer.tokenizer(rows, return_tensors="pt", padding=True, add_special_tokens=False)

    report(
        "reward model: decode + template + tokenise vs its forward", 1,
        text_work=timed(text_work, repeats),
        forward=timed(lambda: score_token_batch(scorer.model, batch["input_ids"], batch["attention_mask"]), repeats),
        whole_scorer=timed(lambda: scorer(rollout.prompts, rollout.texts), repeats),
    )  # fmt: skip


def report_autocast(model, inputs, widths, repeats: int) -> None:
    params = [p for p in model.policy.parameters()]

    @torch.no_grad()
    def cast():
        for p in params:
            p.to(torch.bfloat16)

    @torch.no_grad()
    def forward(dtype):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                model.policy_forward(inputs, *widths)

        return run

    report(
        "bf16 autocast on this CPU: weight casts and a 4-row policy forward", 8,
        cast_policy_weights=timed(cast, repeats),
        forward_fp32=timed(forward(None), repeats),
        forward_bf16_autocast=timed(forward(torch.bfloat16), repeats),
    )  # fmt: skip


def report_syncs(rollout, repeats: int) -> None:
    values = rollout.logprobs

    def syncs():
        for _ in range(9):
            values.sum().item()

    report("9 host syncs (.item()) per micro-step", 8, item_calls=timed(syncs, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="w-small", choices=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trainer, scorer = build_trainer(args.workload)
    trainer.step()  # a rollout, optimiser state
    measure_all(trainer, scorer, args.repeats)


if __name__ == "__main__":
    main()
