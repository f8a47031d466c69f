"""Several PPO runs in one `accelerate launch` (tests/distributed/test_fsdp.py): the process group, torch and
transformers are set up once for all of them instead of once per launch (~8 s each).

    accelerate launch --config_file accelerate/fsdp.yaml ... tests/helpers/fsdp_runs.py <runs.json>

<runs.json>: a list of {"run_dir", "overrides", "variant"}; each run is `rlhf.pipeline.run` on
the composed config, as train.py runs it, on every process. Variants:
- null: as a user runs it;
- "local_whitening": advantages and rewards whitened with each process's own moments (the
  mistake the comparison must catch);
- "crash_after_checkpoint_1": every process stops with an exception right after checkpoint 1
  is published, where the resume tests kill the process (a SIGKILL would end the launch);
- "resume": `resume=true` in an earlier run's folder.
The stage's plots are left out (matplotlib costs ~1.5 s a run; tests/pipeline/test_pipeline.py covers them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project, not tests/helpers/

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from rlhf.app import typed_config  # noqa: E402
from rlhf.config import register_schemas  # noqa: E402
from rlhf.paths import PROJECT_ROOT  # noqa: E402
from rlhf.pipeline import run  # noqa: E402
from rlhf.ppo import advantages, checkpoint, core  # noqa: E402
from rlhf.stages import ppo  # noqa: E402


class Crashed(Exception):
    """Raised on every process where a crash is staged."""


def local_whiten(values, mask, shift_mean=True):
    return core.masked_whiten(values, mask, shift_mean=shift_mean)


def crash_after_checkpoint_1(stage, point, step):
    if (stage, point, step) == ("ppo", "after_checkpoint", 1):
        raise Crashed


@contextlib.contextmanager
def patched(module, name, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


@functools.cache
def composed(overrides: tuple[str, ...]):
    """The typed config of conf/ with `overrides` (composing costs ~1 s: once per config)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return typed_config(compose("config", overrides=list(overrides)))


def one_run(run_dir: Path, overrides: list[str], variant: str | None) -> None:
    config = composed((f"output_dir={run_dir}", *overrides))
    if variant == "resume":
        config = dataclasses.replace(config, resume=True)
    if variant == "local_whitening":
        with patched(advantages, "global_masked_whiten", local_whiten):
            run(config, run_dir)
    elif variant == "crash_after_checkpoint_1":
        with patched(checkpoint, "maybe_kill", crash_after_checkpoint_1):
            try:
                run(config, run_dir)
            except Crashed:
                return
        raise AssertionError("the staged crash did not happen")
    else:
        run(config, run_dir)


def main() -> None:
    register_schemas()
    ppo.plot_ppo_run = lambda stage_dir: []
    for spec in json.loads(Path(sys.argv[1]).read_text()):
        one_run(Path(spec["run_dir"]), spec["overrides"], spec["variant"])


if __name__ == "__main__":
    main()
