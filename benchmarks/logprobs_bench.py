"""Micro-benchmark: token log-probs the trainer's way (full float32 log-softmax, then gather, and
a full entropy) against rlhf/ppo/logprobs.py, at SmolLM2's and Gemma 3's vocabulary sizes
(benchmarks/logprob_paths_bench.py compares the chunked LM-head versions too).

    MALLOC_MMAP_THRESHOLD_=65536 .venv/bin/python benchmarks/logprobs_bench.py

Two groups per case. "logits in": the logits (B, T, V) float32 are given (a leaf), the time is
the log-prob operation alone (forward, and backward of the summed log-probs when the case has
`grad`). "hidden in": from the last hidden states (B, T, H) and the LM-head weight (V, H), so
the LM-head matmul and its backward are included; the trainer's path there is matmul + today's
operation. Methods run round-robin (`--rounds` rounds, median), so that a shared machine's
drift hits all of them alike. `peak MiB`: growth of the process's peak RSS over its RSS before
the call (VmHWM reset through /proc/self/clear_refs); with MALLOC_MMAP_THRESHOLD_ set, every
large tensor is its own mapping and freeing it returns the memory, so this is the live peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf.ppo.logprobs import token_logprobs  # noqa: E402

CASES = {  # name: (B, T, V, H, grad)
    "smollm2 micro-step 4×32": (4, 32, 49152, 576, True),
    "smollm2 rollout 8×32": (8, 32, 49152, 576, False),
    "gemma3 micro-step 8×40": (8, 40, 262144, 640, True),
}
TEMPERATURE = 1.0


def today(logits, tokens, entropy: bool):
    """rlhf/ppo/trainer.py today: _log_softmax (T + 1e-7), gather, entropy without a graph."""
    log_probs_all = torch.log_softmax(logits.float() / (TEMPERATURE + 1e-7), dim=-1)
    logprobs = torch.gather(log_probs_all, 2, tokens.unsqueeze(-1)).squeeze(-1)
    if entropy:
        with torch.no_grad():
            -(log_probs_all.exp() * log_probs_all).sum(-1)
    return logprobs


def selective(save: bool, temperature: float):
    def run(logits, tokens, entropy: bool):
        return token_logprobs(
            logits, tokens, temperature, with_entropy=entropy, save_log_probs=save
        )[0]

    return run


# name: (function(logits, tokens, entropy), entropy wanted where the case has a backward, as
# in the micro-step; the rollout case never computes it)
LOGITS_IN = {
    "today: log_softmax + gather (+ entropy)": (today, True),
    "selective, recomputed (+ entropy)": (selective(False, TEMPERATURE + 1e-7), True),
    "selective, recomputed, no entropy": (selective(False, TEMPERATURE + 1e-7), False),
    "selective, saved (+ entropy)": (selective(True, TEMPERATURE + 1e-7), True),
    "selective, saved, no entropy": (selective(True, TEMPERATURE + 1e-7), False),
    "selective, saved, no entropy, T exact": (selective(True, TEMPERATURE), False),
}


def head_today(hidden, weight, tokens, entropy: bool):
    return today(hidden @ weight.T, tokens, entropy)


HIDDEN_IN = {
    "matmul + today (+ entropy)": head_today,
}


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def call(function, leaves, tokens, entropy, grad) -> None:
    with torch.set_grad_enabled(grad):
        logprobs = function(*leaves, tokens, entropy)
        if grad:
            logprobs.sum().backward()
    for leaf in leaves:
        leaf.grad = None


def peak_mib(function, leaves, tokens, entropy, grad) -> float:
    call(function, leaves, tokens, entropy, grad)  # warm-up
    before = rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    call(function, leaves, tokens, entropy, grad)
    return (rss_kib("VmHWM") - before) / 1024


def run_case(name: str, rounds: int) -> list[dict]:
    b, t, v, h, grad = CASES[name]
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, t, h, generator=generator).requires_grad_(grad)
    weight = (torch.randn(v, h, generator=generator) * h**-0.5).requires_grad_(grad)
    tokens = torch.randint(0, v, (b, t), generator=generator)
    with torch.no_grad():
        logits = (hidden @ weight.T).requires_grad_(grad)
    entries = []  # (group, method, function, leaves, entropy)
    for method, (function, entropy) in LOGITS_IN.items():
        entries.append(("logits in", method, function, (logits,), entropy and grad))
    for method, function in HIDDEN_IN.items():
        entries.append(("hidden in", method, function, (hidden, weight), grad))
    peaks = [peak_mib(f, leaves, tokens, e, grad) for _, _, f, leaves, e in entries]
    times: list[list[float]] = [[] for _ in entries]
    for _ in range(rounds):
        for index, (_, _, function, leaves, entropy) in enumerate(entries):
            started = time.perf_counter()
            call(function, leaves, tokens, entropy, grad)
            times[index].append(time.perf_counter() - started)
    return [
        {"case": name, "group": group, "method": method, "entropy": entropy,
         "ms": round(1e3 * statistics.median(spent), 1), "peak_mib": round(peak)}
        for (group, method, _, _, entropy), spent, peak in zip(entries, times, peaks, strict=True)
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cases", default=",".join(CASES), help="comma list of case names")
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, {torch.backends.cpu.get_cpu_capability()}")
    print("| case | input | method | ms (median) | peak MiB over inputs |\n|---|---|---|---|---|")
    for name in args.cases.split(","):
        for row in run_case(name, args.rounds):
            print(
                f"| {name} | {row['group']} | {row['method']} | {row['ms']} | {row['peak_mib']} |"
            )
            print(json.dumps(row), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
