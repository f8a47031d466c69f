"""Which token log-prob path the PPO loop keeps: each candidate on the main job's LM head
(Gemma 3 270M: vocabulary 262,144 × hidden 640), one micro-batch of 16 sequences × 40 response
tokens, float32 on the CPU, one thread.

    nice .venv/bin/python benchmarks/logprob_paths_bench.py [--repeats 3] [--threads 1]

Inputs are random last hidden states (B, T, H) and a random LM-head weight (V, H), so every path
pays the LM-head matmul (and its backward): the logits paths compute `hidden @ weightᵀ` and
take log-probs of the logits, the LM-head paths never hold the (B·T, V) logits. Two workloads,
as the loop runs them:
- `old/ref`: the forward passes of phase 3 (log-probs of the sampled tokens, no gradient, no
  entropy);
- `micro-batch`: one forward/backward of phase 6 (log-probs with the entropy logged, backward of
  the summed log-probs into the hidden states and the weight; entropy_coef = 0, so no entropy
  gradient).
Paths: `plain` (a full float32 log-softmax, then gather; entropy from a second full pass
without a graph: what core.logprobs_of was), `logprobs.token_logprobs` (chunks of positions,
the backward recomputes each chunk's log-softmax: the loop's path) and, when the installed TRL
has it, `trl.kernels.ChunkedLogProbFunction` (vocabulary tiles from the hidden states, TRL's
default 32,768-column tiles). Each workload runs once to warm up, then `--repeats` times per
path round-robin; the median is printed, with the largest log-prob difference from the first
path (the same numbers, up to rounding).

Measured (AMD EPYC, 2 cores shared with other jobs, 1 thread, torch 2.13.0+cpu, TRL 1.16.0,
median of 3; also rlhf/ppo/lm_head_logprobs.py, our chunked LM-head version, since removed):

| workload | plain | token_logprobs | our LM-head chunks | TRL LM-head chunks |
|---|---|---|---|---|
| old/ref (forward), s | 11.8 | 14.9 | 15.4 | 19.4 |
| micro-batch (fwd+bwd), s | 62.7 | 56.3 | 70.6 | 93.4 |

The LM-head versions pay one more LM-head matmul in backward (the recomputation) for never
holding the logits; the plain path holds three float32 (B·T, V) tensors at once (0.67 GB each
here). One update takes two forward passes (policy, reference) and ppo_epochs forward/backward
passes per micro-batch: at ppo_epochs=1 token_logprobs and plain tie (86.1 s against 86.3 s),
from 2 epochs token_logprobs is the fastest, and it holds no float32 copy of the logits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf.ppo import core  # noqa: E402
from rlhf.ppo.logprobs import token_logprobs  # noqa: E402

B, T, V, H = 16, 40, 262144, 640


def via_plain(hidden, weight, tokens, entropy: bool):
    logits = hidden @ weight.T
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    logprobs = torch.gather(log_probs, 2, tokens.unsqueeze(-1)).squeeze(-1)
    if entropy:
        with torch.no_grad():
            core.entropy_from_logits(logits)
    return logprobs


def via_logits_chunks(hidden, weight, tokens, entropy: bool):
    return token_logprobs(hidden @ weight.T, tokens, with_entropy=entropy)[0]


def trl_path():
    """TRL's chunked LM-head log-probs, or None where the installed TRL has no trl.kernels."""
    try:
        from trl.kernels import ChunkedLogProbFunction
    except ImportError:
        return None

    def via_trl(hidden, weight, tokens, entropy: bool):
        outputs = ("entropy",) if entropy else ()
        flat = hidden.reshape(-1, hidden.shape[-1])
        logprobs = ChunkedLogProbFunction.apply(
            flat, weight, None, tokens.reshape(-1), 1.0, 32768, None, 1.0, outputs
        )[0]
        return logprobs.view(tokens.shape)

    return via_trl


def run(path, hidden, weight, tokens, grad: bool) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    with torch.set_grad_enabled(grad):
        logprobs = path(hidden, weight, tokens, grad)
        if grad:
            logprobs.sum().backward()
    spent = time.perf_counter() - started
    hidden.grad = weight.grad = None
    return spent, logprobs.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = {
        "plain log-softmax + gather": via_plain,
        "logprobs.token_logprobs": via_logits_chunks,
    }
    trl = trl_path()
    if trl is not None:
        paths["trl.kernels.ChunkedLogProbFunction"] = trl
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?")
    print(f"{cpu}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(f"B×T = {B}×{T}, V = {V}, H = {H}, float32, median of {args.repeats} after a warm-up")
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, T, H, generator=generator).requires_grad_(True)
    weight = (torch.randn(V, H, generator=generator) * H**-0.5).requires_grad_(True)
    tokens = torch.randint(0, V, (B, T), generator=generator)
    print("| workload | path | seconds (median) | max |Δ log-prob| vs first |\n|---|---|---|---|")
    for workload, grad in (("old/ref (forward)", False), ("micro-batch (fwd+bwd)", True)):
        times: dict[str, list[float]] = {name: [] for name in paths}
        results = {name: run(path, hidden, weight, tokens, grad)[1] for name, path in paths.items()}
        for _ in range(args.repeats):
            for name, path in paths.items():
                times[name].append(run(path, hidden, weight, tokens, grad)[0])
        first = next(iter(results.values()))
        for name in paths:
            difference = (results[name] - first).abs().max().item()
            median = statistics.median(times[name])
            print(f"| {workload} | {name} | {median:.3f} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
