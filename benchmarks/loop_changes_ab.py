"""Paired A/B of two PPO loop changes of issue 15 on W-small's shapes (alternating rounds).

    .venv/bin/python benchmarks/loop_changes_ab.py

1. The gradient norm of one optimiser step without clipping, 2 × 135M float32 gradients (policy
   and critic, 30 tensors each): `clip_grad_norm_(…, inf)` (the old path: the norm, then every
   gradient × 1.0) against `get_total_norm` (the norm only).
2. Log-probs + entropy of one micro-step (logits 4 × 32 × 49152, entropy_coef = 0), forward and
   backward: log_softmax + gather (entropy without a graph) against rlhf.ppo.logprobs.
Prints the best of 3 rounds of the median of 7 (3 for the norms) of each, in milliseconds.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf.ppo.logprobs import token_logprobs  # noqa: E402


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def paired(a, b, repeats: int) -> tuple[float, float]:
    rounds = [(median_seconds(a, repeats), median_seconds(b, repeats)) for _ in range(3)]
    return min(r[0] for r in rounds) * 1e3, min(r[1] for r in rounds) * 1e3


def gradient_norms() -> tuple[float, float]:
    params = [torch.nn.Parameter(torch.zeros(4_500_000)) for _ in range(60)]
    for p in params:
        p.grad = torch.randn_like(p)
    groups = (params[:30], params[30:])
    return paired(
        lambda: [torch.nn.utils.clip_grad_norm_(g, math.inf) for g in groups],
        lambda: [torch.nn.utils.get_total_norm([p.grad for p in g]) for g in groups],
        repeats=3,
    )


def logprobs() -> tuple[float, float]:
    logits, tokens = torch.randn(4, 32, 49152) * 3, torch.randint(0, 49152, (4, 32))

    def plain() -> None:
        z = logits.clone().requires_grad_()
        log_p = torch.log_softmax(z, dim=-1)
        chosen = torch.gather(log_p, 2, tokens[..., None]).squeeze(-1)
        with torch.no_grad():
            entropy = -(log_p.exp() * log_p).sum(-1)
        chosen.sum().backward()
        entropy.mean().item()

    def selective() -> None:
        z = logits.clone().requires_grad_()
        chosen, entropy = token_logprobs(z, tokens, 1.0, with_entropy=True)
        chosen.sum().backward()
        entropy.mean().item()

    return paired(plain, selective, repeats=7)


if __name__ == "__main__":
    torch.manual_seed(0)
    old, new = gradient_norms()
    print(
        f"gradient norm, one optimiser step: clip_grad_norm_(inf) {old:.0f} ms, norm only {new:.0f} ms"
    )
    old, new = logprobs()
    print(f"log-probs + entropy, one micro-step: plain {old:.0f} ms, selective {new:.0f} ms")
