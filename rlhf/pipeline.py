"""stage=pipeline: sft → rm → ppo → eval in one run, reusing finished stages by config hash.

Each of sft and rm is keyed by a hash of the config sections that shape it (model, data, its own
section, seed) and of the data files' bytes. A finished stage lives in
`<pipeline.stage_cache_dir>/<stage>/<key>/` and the run folder links to it, so a second run, or
a sweep over `ppo.*`, trains SFT and RM once and says so in one log line; changing any SFT
setting retrains SFT and everything after it (ppo and eval are never cached: they are what
sweeps vary). A file lock keeps parallel sweep jobs from training the same stage twice.
PPO starts from the SFT model; eval compares the PPO policy with the SFT model.

Resume (`resume=true` or a run folder): complete stages are skipped, the first unfinished one
continues from its newest checkpoint (or starts over when it has none), then the rest run. A
cached stage counts only with its COMPLETE marker: an interrupted one is never reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from rlhf.config import Config
from rlhf.judge import hacking_summary
from rlhf.paths import resolve_path
from rlhf.ppo import distributed
from rlhf.resume import resume_point
from rlhf.stages.common import RunPaths, is_complete

log = logging.getLogger(__name__)

CACHE_SECTIONS = {"sft": ("model", "data", "sft"), "rm": ("model", "data", "rm")}


def data_hash(config: Config) -> str:
    """Hash of the data files' bytes (or the hub id and splits)."""
    data = config.data
    digest = hashlib.sha256()
    for name in (data.train_file, data.test_file):
        if name is not None and resolve_path(name).is_file():
            digest.update(resolve_path(name).read_bytes())
    digest.update(f"{data.hub_id}:{data.hub_train_split}:{data.hub_test_split}".encode())
    return digest.hexdigest()


def stage_key(config: Config, stage: str) -> str:
    """What a cached stage depends on, hashed."""
    content = {
        section: dataclasses.asdict(getattr(config, section)) for section in CACHE_SECTIONS[stage]
    }
    content.update(stage=stage, seed=config.seed, data_bytes=data_hash(config))
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive file lock. In a multi-process job only the main process takes it and the
    others wait for it, so every process sees the cache in the same state."""
    if not distributed.is_main_process():
        distributed.barrier()
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        distributed.barrier()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def link(run_stage_dir: Path, target: Path) -> None:
    """`<run>/<stage>` → the cached folder (replacing what was there)."""
    run_stage_dir.parent.mkdir(parents=True, exist_ok=True)
    if run_stage_dir.is_symlink() or run_stage_dir.is_file():
        run_stage_dir.unlink()
    elif run_stage_dir.exists():
        return  # a real folder from an older run layout: leave it alone
    os.symlink(target, run_stage_dir, target_is_directory=True)


def run_or_reuse(
    stage: str,
    config: Config,
    paths: RunPaths,
    resolved: dict,
    stages: dict[str, Callable[[Config, RunPaths, dict], dict[str, float]]],
) -> dict[str, float]:
    """Run a stage; when resuming, skip it if complete and start it over if it has no checkpoint."""
    stage_dir = paths.stage_dir(stage)
    if config.resume and is_complete(stage_dir):
        log.info("%s: complete in %s, skipped on resume", stage, stage_dir)
        return json.loads((stage_dir / "run_info.json").read_text())["final_metrics"]
    if config.resume and resume_point(stage, stage_dir) is None:
        log.info("%s: no checkpoint in %s, starting it over", stage, stage_dir)
        config = dataclasses.replace(config, resume=False)
    return stages[stage](config, paths, resolved)


def run_pipeline(
    config: Config,
    paths: RunPaths,
    resolved: dict,
    stages: dict[str, Callable[[Config, RunPaths, dict], dict[str, float]]],
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    cache_root = (
        resolve_path(config.pipeline.stage_cache_dir) if config.pipeline.stage_cache_dir else None
    )
    for stage in config.pipeline.stages:
        stage_config = config
        if stage in ("ppo", "eval"):
            sft_model = dataclasses.replace(config.model, name_or_path=str(paths.model_dir("sft")))
            stage_config = dataclasses.replace(config, model=sft_model)
        if stage not in CACHE_SECTIONS or cache_root is None:
            metrics.update(run_or_reuse(stage, stage_config, paths, resolved, stages))
            continue
        key = stage_key(config, stage)
        cached = cache_root / stage / key
        paths.stage_dirs[stage] = cached
        with locked(cache_root / stage / f"{key}.lock"):
            if distributed.is_main_process():  # first, so an interrupted run can be resumed
                cached.mkdir(parents=True, exist_ok=True)
                link(paths.run_dir / stage, cached)
            if is_complete(cached):
                log.info("%s: reusing %s (config hash %s)", stage, cached, key)
                metrics.update(json.loads((cached / "run_info.json").read_text())["final_metrics"])
            else:
                metrics.update(run_or_reuse(stage, stage_config, paths, resolved, stages))
    run = paths.run_dir
    if "eval" in config.pipeline.stages:
        summary = hacking_summary(metrics, config.eval)
        (log.warning if summary.startswith("reward hacking") else log.info)("eval: %s", summary)
    log.info("done. models: %s/{sft,rm,ppo}/model; metrics: %s/*/metrics.jsonl", run, run)
    log.info("plots: %s/ppo/plots/; samples: %s/eval/samples.md", run, run)
    log.info("talk to it: python -m rlhf.chat %s/ppo/model", run)
    return metrics
