"""What the job folders of a sweep hold, read from files only (no W&B, no network).

Per job: `job.json` (rlhf/sweeps/jobs.py: status, label, error, wall time), `.hydra/config.yaml`,
`ppo/metrics.jsonl` (every PPO update, so a running job shows its latest) and the `run_info.json`
of each stage folder (its `final_metrics`: the eval stage's scores, judge share, hacking flag and
goals among them). A missing file is a job not that far yet; a file that is there but cannot be
read (corrupt, cut short, another encoding, not a mapping) makes the job `unreadable`, with the
file and the reason in `JobResult.unreadable`, and nothing else of it is reported.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlhf.config import recorded_algorithm
from rlhf.runs.folders import RUN_INFO
from rlhf.runs.tracking import read_jsonl
from rlhf.sweeps.jobs import JOB_FILE, job_dirs
from rlhf.sweeps.overopt import split_seed

SCORE = "ppo/objective/scores"
KL = "ppo/objective/kl"
ENTROPY = "ppo/objective/entropy"
LENGTH = "ppo/response_length"
BETA = "ppo/kl_coef"
EVAL_SCORE = "eval/policy/score"  # the run's reward (the RM) on the policy's held-out answers
JUDGE_SHARE = "eval/policy/judge_above_threshold"  # the judge's share of them above threshold
HACKING = "eval/hacking_suspected"  # 1: reward hacking suspected (rlhf/stages/hacking.py)
EVAL_KL = "eval/kl"
WIN_RATE = "eval/win_rate"
GOALS_MET = "eval/goals_met"  # 1: every goal of the experiment passed; absent: no goals
GOAL = "eval/goals/"  # eval/goals/<goal name>: 1 passed, 0 failed
UNREADABLE = "unreadable"


@dataclass
class JobResult:
    """What one job folder holds; `history` is the PPO metrics records that carry a score."""

    num: int | None
    folder: Path
    label: str
    status: str  # complete, failed, running (no job.json yet, or not finished) or unreadable
    algorithm: str | None = None  # what trains the job's policy (None: not in its config)
    error: str | None = None
    wall_seconds: float | None = None
    kl_coef: float | None = None  # ppo.kl_coef of the job's config
    cliprange: float | None = None  # ppo.cliprange of the job's config
    history: list[dict[str, float]] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)  # every stage's final ones
    logger: dict[str, Any] | None = None  # the logger settings the job's own stages ran with
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)

    def unreadable_lines(self) -> list[str]:
        return [f"{path} cannot be read ({why})" for path, why in self.unreadable]

    @property
    def setting(self) -> str:
        """The job's swept overrides without its seed keys ("(all)": only seeds vary)."""
        return split_seed(self.label)[0]

    @property
    def seed(self) -> str | None:
        return split_seed(self.label)[1]

    @property
    def who(self) -> str:
        """How a report names the job: `seed 3 (job 3)`, or `job 3` without a seed key."""
        return f"seed {self.seed} (job {self.num})" if self.seed is not None else f"job {self.num}"

    def goals(self) -> dict[str, bool] | None:
        """{goal name: passed} from the eval stage's final metrics; None: the job has no goals."""
        if GOALS_MET not in self.final_metrics:
            return None
        return {
            key[len(GOAL) :]: value >= 1.0
            for key, value in self.final_metrics.items()
            if key.startswith(GOAL)
        }

    def failed_goals(self) -> list[str] | None:
        """The goals the job failed ([] when it met them; None without goals). `goals_met` 0 with
        no single goal failing names the whole: ["goals_met"]."""
        goals = self.goals()
        if goals is None:
            return None
        failed = [name for name, passed in goals.items() if not passed]
        if not failed and self.final_metrics[GOALS_MET] < 1.0:
            failed = [GOALS_MET.rsplit("/", 1)[-1]]
        return failed


def stage_of(metric: str) -> str:
    """The stage that logs `metric` (metrics are namespaced `<stage>/...`): its folder's name."""
    return metric.split("/", 1)[0]


def _config_value(config: dict, dotted: str) -> float | None:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"


def read_mapping(path: Path, parse: Any, unreadable: list[tuple[Path, str]]) -> dict | None:
    """The mapping in a JSON or YAML file; None when it does not exist (yet) and, with the file
    and the reason added to `unreadable`, when it cannot be read."""
    if not path.is_file():
        return None
    try:
        found = parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:  # UnicodeDecodeError is a ValueError
        unreadable.append((path, _why(exc)))
        return None
    if not isinstance(found, dict):
        unreadable.append((path, f"it holds {type(found).__name__}, not a mapping"))
        return None
    return found


def _records(path: Path, unreadable: list[tuple[Path, str]]) -> list[dict[str, Any]]:
    """A metrics.jsonl's records (a line cut short by a running job is skipped by read_jsonl);
    a file in another encoding, or one that cannot be opened, is unreadable."""
    try:
        return read_jsonl(path)
    except (OSError, ValueError) as exc:
        unreadable.append((path, _why(exc)))
        return []


def _stage_records(
    folder: Path, unreadable: list[tuple[Path, str]]
) -> tuple[dict[str, float], dict | None]:
    """The final metrics of every stage folder of a job (numbers only), and the logger settings
    of the job's own stages (a cached stage is a link to a folder another job may have run)."""
    final: dict[str, float] = {}
    logger = None
    try:
        stage_dirs = sorted(p for p in folder.iterdir() if (p / RUN_INFO).is_file())
    except OSError as exc:
        unreadable.append((folder, _why(exc)))
        return final, logger
    for stage_dir in stage_dirs:
        info = read_mapping(stage_dir / RUN_INFO, json.loads, unreadable) or {}
        metrics = info.get("final_metrics")
        if isinstance(metrics, dict):
            final.update({k: float(v) for k, v in metrics.items() if _is_number(v)})
        config = info.get("config")
        if logger is None and not stage_dir.is_symlink() and isinstance(config, dict):
            found = config.get("logger")
            logger = found if isinstance(found, dict) else None
    return final, logger


def load_job(folder: Path, now: float) -> JobResult:
    unreadable: list[tuple[Path, str]] = []
    record = read_mapping(folder / JOB_FILE, json.loads, unreadable)
    config = read_mapping(folder / ".hydra" / "config.yaml", yaml.safe_load, unreadable) or {}
    history = _records(folder / stage_of(SCORE) / "metrics.jsonl", unreadable)
    final, logger = _stage_records(folder, unreadable)
    head = folder.name.split("_", 1)[0]
    num = int(head) if head.isdigit() else None
    # a folder name in another encoding holds surrogates, which no report file can take
    label = folder.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    label = label.split("_", 1)[-1]
    if unreadable:  # never a normal row: its numbers may belong to a half-written state
        if record is not None and isinstance(record.get("label"), str):
            label = record["label"]
        return JobResult(num, folder, label, UNREADABLE, unreadable=unreadable)
    record = record or {}  # no job.json yet: the job has started, nothing more
    wall = record.get("wall_seconds")
    if wall is None and _is_number(record.get("started_unix")):
        wall = round(now - record["started_unix"], 2)  # still running: time so far
    return JobResult(
        num=record.get("job", num),
        folder=folder,
        label=record.get("label") or label,
        status=record.get("status", "running"),
        algorithm=recorded_algorithm(config),
        error=record.get("error"),
        wall_seconds=wall,
        kl_coef=_config_value(config, "ppo.kl_coef"),
        cliprange=_config_value(config, "ppo.cliprange"),
        history=[r for r in history if SCORE in r],
        final_metrics=final,
        logger=logger,
    )


def load_sweep(sweep_dir: Path) -> list[JobResult]:
    now = time.time()
    return [load_job(folder, now) for folder in job_dirs(sweep_dir)]
