"""The eval stage of every job of over-optimisation sweeps: proxy and gold score of the SFT
baseline and the PPO policy on the eval stage's held-out prompts (more than ppo.eval_prompts,
so less noisy than the frontier's points), the policy's KL and the gold win rate
(experiments/overopt/REPORT.md).

    PYTHONPATH=. python experiments/overopt/eval_stage.py <sweep dir> [<sweep dir> ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from rlhf.runs.tracking import read_jsonl
from rlhf.sweeps.jobs import job_dirs, read_job_file


def main(sweep_dirs: list[str]) -> None:
    print(
        "| sweep | job | prompts | eval KL | proxy: SFT → PPO | gold: SFT → PPO | gold gain "
        "| gold win rate |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for sweep in map(Path, sweep_dirs):
        for job in job_dirs(sweep):
            records = read_jsonl(job / "eval" / "metrics.jsonl")
            label = (read_job_file(job) or {}).get("label", job.name)
            if not records:
                print(f"| {sweep.name} | {label} | no eval stage yet | | | | | |")
                continue
            record = records[-1]
            base, policy = record["eval/baseline/judge_score"], record["eval/policy/judge_score"]
            print(
                f"| {sweep.name} | {label} | {record['eval/num_prompts']:.0f} "
                f"| {record['eval/kl']:.2f} "
                f"| {record['eval/baseline/score']:.3f} → {record['eval/policy/score']:.3f} "
                f"| {base:.3f} → {policy:.3f} | {policy - base:+.3f} "
                f"| {record['eval/judge_win_rate']:.2f} |"
            )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
