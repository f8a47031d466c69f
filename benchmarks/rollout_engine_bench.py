"""The main job's PPO updates with each rollout engine, in one sitting: seconds per phase and
per update (medians over updates 2..N), the engine's start, and the hf / vllm ratios.

    .venv/bin/python benchmarks/rollout_engine_bench.py --stage-cache outputs/stage_cache
    .venv/bin/python benchmarks/rollout_engine_bench.py --updates 6 --rounds 2 --threads 2

Runs `train.py experiment=insult_ppo` with `pipeline.stages=[sft,rm,ppo]` (SFT and RM from the
stage cache: trained once if the cache is empty), `ppo.total_updates=N`, alternating the engines
(hf, vllm, hf, vllm, ... for --rounds rounds), each in a fresh process with OMP_NUM_THREADS
threads. Prints one JSON line per run and a summary line with the ratios of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("generate", "score", "forward", "update", "total")


def run(engine: str, updates: int, threads: int, cache: str, extra: list[str]) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"rollout_bench_{engine}_"))
    command = [
        sys.executable, str(ROOT / "train.py"), "experiment=insult_ppo", "logger=none",
        "pipeline.stages=[sft,rm,ppo]", f"pipeline.stage_cache_dir={cache}",
        f"ppo.total_updates={updates}", f"ppo.rollout.engine={engine}",
        f"hydra.run.dir={folder}", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"engine": engine, "error": done.stderr.strip().splitlines()[-3:]}
    rows = [json.loads(line) for line in (folder / "ppo" / "metrics.jsonl").open()]
    steps = [row for row in rows if "timing/total" in row][1:]  # updates 2..N
    result = {"engine": engine, "threads": threads, "updates": updates, "wall_s": round(wall, 1)}
    for phase in PHASES:
        result[phase] = round(statistics.median(row[f"timing/{phase}"] for row in steps), 3)
    gaps = [
        row["ppo/rollout/logprob_gap_mean"]
        for row in steps
        if "ppo/rollout/logprob_gap_mean" in row
    ]
    if gaps:
        result["logprob_gap_mean"] = round(statistics.mean(gaps), 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stage-cache", default="outputs/stage_cache")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides")
    args = parser.parse_args()
    if args.updates < 2:
        print("error: --updates: must be >= 2 (the median is over updates 2..N)", file=sys.stderr)
        sys.exit(2)
    results: dict[str, list[dict]] = {"hf": [], "vllm": []}
    for _ in range(args.rounds):
        for engine in results:
            result = run(engine, args.updates, args.threads, args.stage_cache, args.overrides)
            print(json.dumps(result), flush=True)
            if "error" in result:
                sys.exit(1)
            results[engine].append(result)
    summary = {"cpu": cpu_name(), "threads": args.threads}
    for phase in PHASES:
        hf = statistics.median(r[phase] for r in results["hf"])
        vllm = statistics.median(r[phase] for r in results["vllm"])
        summary[f"{phase}_hf_over_vllm"] = round(hf / vllm, 2)
    print(json.dumps(summary), flush=True)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
