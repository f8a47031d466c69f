"""Profile one PPO update of a reference workload (benchmarks/ppo_bench.py) with torch.profiler.

    .venv/bin/python benchmarks/profile_update.py --workload w-small --out /tmp/profile
    .venv/bin/python benchmarks/profile_update.py --host-heap system --out /tmp/profile-system

Runs one warm-up update, then profiles the second. The trainer's phases and its model calls are
labelled (`ppo:*`) by wrapping the instance's methods here, the trainer's code is unchanged.
Writes to --out: `ops.txt` (operators by self CPU time), `labels.txt` (each label's total CPU
time), `by_label.json` (self CPU time of each operator under its nearest label) and
`trace.json` (chrome://tracing) when --trace is given. Profiling adds overhead to small ops.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ppo_bench import WORKLOADS, build_trainer  # noqa: E402

import rlhf.ppo.advantages as advantages_module  # noqa: E402
import rlhf.ppo.core as core  # noqa: E402
import rlhf.ppo.optimiser as optimiser_module  # noqa: E402
import rlhf.ppo.sampling as sampling_module  # noqa: E402
import rlhf.ppo.update as update_module  # noqa: E402
from rlhf.runtime.host_memory import HOST_HEAPS, use_host_heap  # noqa: E402


def labelled(function, label: str):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with record_function(label):
            return function(*args, **kwargs)

    return wrapper


def label_methods(trainer) -> None:
    """`ppo:<name>` ranges around the phases, the model calls and the suspects of issue 15."""
    for name in (
        "sample", "score", "forward_passes", "shape_rewards", "estimate_advantages", "optimise",
        "_micro_batch_step", "_backward", "_optimizer_step", "_value_loss",
    ):  # fmt: skip
        setattr(trainer, name, labelled(getattr(trainer, name), f"ppo:{name.strip('_')}"))
    for module in (advantages_module, update_module):  # functions looked up in their modules
        module.token_logprobs = labelled(module.token_logprobs, "ppo:logprobs")
    for module in (sampling_module, advantages_module, update_module):
        module.check_finite = labelled(module.check_finite, "ppo:check_finite")
    model = trainer.model
    for name in ("policy_forward", "critic_forward", "reference_logits"):
        setattr(model, name, labelled(getattr(model, name), f"ppo:{name}"))
    optimizer = trainer.optimizer
    optimizer.step = labelled(optimizer.step, "ppo:adamw_step")
    optimizer.zero_grad = labelled(optimizer.zero_grad, "ppo:zero_grad")
    optimiser_module.gradient_norm = labelled(optimiser_module.gradient_norm, "ppo:grad_norm")
    for name in ("policy_loss", "gae", "masked_whiten"):
        setattr(core, name, labelled(getattr(core, name), f"ppo:{name}"))


def nearest_label(event) -> str:
    parent = event.cpu_parent
    while parent is not None and not parent.name.startswith("ppo:"):
        parent = parent.cpu_parent
    return parent.name if parent is not None else "(no label)"


def by_label(events) -> dict[str, dict[str, float]]:
    """Self CPU ms of each operator under its nearest ppo: label."""
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for event in events:
        if event.name.startswith("ppo:"):
            continue
        table[nearest_label(event)][event.name] += event.self_cpu_time_total / 1e3
    return {
        label: dict(sorted(ops.items(), key=lambda kv: -kv[1])[:12])
        for label, ops in sorted(table.items(), key=lambda kv: -sum(kv[1].values()))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="w-small", choices=list(WORKLOADS))
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--host-heap", default="reuse", choices=HOST_HEAPS, help="as train.py's")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    use_host_heap(args.host_heap)
    trainer, _ = build_trainer(args.workload, args.mixed_precision)
    trainer.step()  # warm-up: optimiser state
    label_methods(trainer)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        metrics = trainer.step()
    wall = time.perf_counter() - started
    averages = prof.key_averages()
    (args.out / "ops.txt").write_text(
        averages.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=60)
    )
    labels = [e for e in averages if e.key.startswith("ppo:")]
    labels.sort(key=lambda e: -e.cpu_time_total)
    lines = [f"{e.key:28s} {e.cpu_time_total / 1e6:8.3f} s {e.count:6d} calls" for e in labels]
    (args.out / "labels.txt").write_text("\n".join(lines) + "\n")
    (args.out / "by_label.json").write_text(json.dumps(by_label(prof.events()), indent=1))
    if args.trace:
        prof.export_chrome_trace(str(args.out / "trace.json"))
    timing = {k: round(v, 3) for k, v in metrics.items() if k.startswith("timing/")}
    print(json.dumps({"workload": args.workload, "profiled_wall_s": round(wall, 3), **timing}))


if __name__ == "__main__":
    main()
