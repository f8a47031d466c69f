"""Running stages: `stage=<name>` runs one, `stage=pipeline` runs `pipeline.stages` in order.

Everything a stage's declaration says (rlhf/stages/table.py) is applied here: in a pipeline a
stage that `starts_from` another one that ran before it starts from that stage's model (PPO and
eval from the SFT model); a stage with `cache_sections` (sft, rm) is keyed by a hash of those
config sections, the seed, the data files' bytes and the key of the stage it starts from. A
finished cached stage lives in `<pipeline.stage_cache_dir>/<stage>/<key>/` and the run folder
links to it, so a second run, or a sweep over `ppo.*`, trains SFT and RM once and says so in one
log line; changing any SFT setting retrains SFT and everything after it (ppo and eval are never
cached: they are what sweeps vary). A file lock keeps parallel sweep jobs from training the same
stage twice. The run returns its objective: `objective`, else the last stage's declared one.

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
from collections.abc import Iterator, Sequence
from pathlib import Path

from rlhf.config import Config
from rlhf.errors import ConfigError
from rlhf.paths import resolve_path
from rlhf.runs.folders import RunPaths, completed_metrics
from rlhf.runtime import distributed
from rlhf.stages.table import (
    PIPELINE,
    POLICY,
    STAGES,
    StageDeclaration,
    producer,
    stages_to_run,
    start_of,
)

log = logging.getLogger(__name__)


def run(config: Config, run_dir: Path) -> tuple[str | None, float | None]:
    """Run `config.stage` (or the pipeline); return the objective's name and final value
    (train.py returns the value to the sweeper)."""
    declarations = stages_to_run(config.stage, config.pipeline.stages)
    check_launch_engine(
        config,
        distributed.launch_engine(os.environ),
        os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "").lower() == "true",
    )
    paths = RunPaths(run_dir)
    if config.stage == PIPELINE:
        metrics = run_pipeline(config, paths)
    else:
        metrics = run_or_reuse(declarations[0], config, paths)
    if config.objective is not None and config.objective not in metrics:
        raise ConfigError(
            f"objective: {config.objective!r} is not a final metric of stage {config.stage} "
            f"(final metrics: {', '.join(sorted(metrics))})"
        )
    objective = config.objective or declarations[-1].objective
    return objective, metrics.get(objective)


def check_launch_engine(
    config: Config, engine: str | None, ram_efficient_loading: bool = False
) -> None:
    """Stop before training what the accelerate engine cannot run: a stage not declared for it
    (PPO runs on plain processes or FSDP2 only), a LoRA model sharded by ZeRO-3 / FSDP in a
    stage that cannot merge it for saving, PPO's vLLM rollouts under FSDP2 (the engine follows
    a whole policy), and PPO under FSDP with weights loaded on the main process only
    (`ram_efficient_loading`: PPO loads its models itself, on every process)."""
    declarations = stages_to_run(config.stage, config.pipeline.stages)
    if engine is None:
        return
    refused = [d for d in declarations if engine not in d.sharded_engines]
    if refused:
        stage = refused[0]
        if stage.sharded_engines:
            where = "accelerate/ddp.yaml (models that fit one device) or accelerate/fsdp.yaml"
        else:
            where = "accelerate/ddp.yaml"
        raise ConfigError(f"stage {stage.name} does not run under {engine}: launch it with {where}")
    unmerged = [d.name for d in declarations if not d.own_sharding]
    if engine in ("deepspeed-zero3", "fsdp1", "fsdp2") and config.model.lora.enabled and unmerged:
        raise ConfigError(
            f"model.lora.enabled: LoRA models sharded by {engine} are not merged for saving in "
            f"stage {unmerged[0]}; use accelerate/zero2.yaml or ddp.yaml"
        )
    own = [d.name for d in declarations if d.own_sharding]  # PPO: it shards its own models
    if engine == "fsdp2" and config.ppo.rollout.engine == "vllm" and own:
        raise ConfigError(
            "ppo.rollout.engine=vllm: FSDP2 shards the policy that vLLM would follow; use "
            "ppo.rollout.engine=hf under accelerate/fsdp.yaml, or accelerate/ddp.yaml"
        )
    if ram_efficient_loading and own:
        raise ConfigError(
            "fsdp_cpu_ram_efficient_loading: true leaves the weights on the main process only, "
            f"and stage {own[0]} builds its models on every process; set it to false "
            "(accelerate/fsdp.yaml)"
        )


def run_or_reuse(
    declaration: StageDeclaration, config: Config, paths: RunPaths
) -> dict[str, float]:
    """Run a stage; when resuming, skip it if complete and start it over if it has no checkpoint."""
    stage, stage_dir = declaration.name, paths.stage_dir(declaration.name)
    if config.resume:
        finished = completed_metrics(stage_dir)
        if finished is not None:
            log.info("%s: complete in %s, skipped on resume", stage, stage_dir)
            return finished
        if declaration.checkpoints.resume_point(stage_dir) is None:
            for problem in declaration.checkpoints.broken(stage_dir):
                log.warning("%s: checkpoint %s, not resumable", stage, problem)
            log.info("%s: no whole checkpoint in %s, starting it over", stage, stage_dir)
            config = dataclasses.replace(config, resume=False)
    return declaration.load_runner()(config, paths)


def handed_over(
    config: Config, declaration: StageDeclaration, earlier: Sequence[str], paths: RunPaths
) -> Config:
    """The stage's config: `model.name_or_path` is the model of the stage it starts from, when
    that one ran earlier in this pipeline."""
    start = start_of(declaration, earlier)
    if start is None:
        return config
    model = config.model.pointing_to(str(paths.model_dir(start)))
    return dataclasses.replace(config, model=model)


def run_pipeline(config: Config, paths: RunPaths) -> dict[str, float]:
    metrics: dict[str, float] = {}
    cache_root = (
        resolve_path(config.pipeline.stage_cache_dir) if config.pipeline.stage_cache_dir else None
    )
    order = list(config.pipeline.stages)
    for index, stage in enumerate(order):
        declaration = STAGES[stage]
        stage_config = handed_over(config, declaration, order[:index], paths)
        key = stage_key(config, stage) if cache_root is not None else None
        if key is None:
            metrics.update(run_or_reuse(declaration, stage_config, paths))
            continue
        cached = cache_root / stage / key
        paths.stage_dirs[stage] = cached
        with locked(cache_root / stage / f"{key}.lock"):
            if distributed.is_main_process():  # first, so an interrupted run can be resumed
                cached.mkdir(parents=True, exist_ok=True)
                link(paths.run_dir / stage, cached)
            finished = completed_metrics(cached)
            if finished is not None:
                log.info("%s: reusing %s (config hash %s)", stage, cached, key)
                metrics.update(finished)
            else:
                metrics.update(run_or_reuse(declaration, stage_config, paths))
    for stage in order:  # each stage's lines of the closing summary (eval: reward hacking?)
        summary = STAGES[stage].load_summary()
        if summary is not None:
            for level, line in summary(config, metrics):
                log.log(level, "%s", line)
    models = [str(paths.model_dir(s)) for s in order if STAGES[s].produces is not None]
    log.info("done. models: %s; metrics: %s/*/metrics.jsonl", ", ".join(models), paths.run_dir)
    log.info("talk to it: python -m rlhf.chat %s", paths.model_dir(producer(POLICY, order).name))
    return metrics


def data_hash(config: Config) -> str:
    """Hash of the data files' bytes (or the hub id and splits)."""
    data = config.data
    digest = hashlib.sha256()
    for name in (data.train_file, data.test_file):
        if name is not None and resolve_path(name).is_file():
            digest.update(resolve_path(name).read_bytes())
    digest.update(f"{data.hub_id}:{data.hub_train_split}:{data.hub_test_split}".encode())
    return digest.hexdigest()


def stage_key(config: Config, stage: str) -> str | None:
    """What a cached stage depends on, hashed; None for a stage that is never cached (no cache
    sections, or it starts from the model of a stage that is never cached)."""
    declaration = STAGES[stage]
    if not declaration.cache_sections:
        return None
    content = {
        section: dataclasses.asdict(getattr(config, section))
        for section in declaration.cache_sections
    }
    content.update(stage=stage, seed=config.seed, data_bytes=data_hash(config))
    order = list(config.pipeline.stages)
    start = start_of(declaration, order[: order.index(stage)] if stage in order else [])
    if start is not None:
        content["starts_from"] = stage_key(config, start)
        if content["starts_from"] is None:
            return None
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
