"""The stage table: every stage declared once, read by everything that needs to know stages.

A declaration says what the rest of the code needs to know about a stage: its runner, the
model it starts from in a pipeline (the hand-off), what it leaves for the stages after it, the
config sections its cache is keyed by, its default objective, how it checkpoints and resumes,
whether it runs under a sharding launch, and what it adds to a pipeline's closing summary. The
pipeline (rlhf/pipeline.py), resume (rlhf/runs/resume.py layouts), the stage cache, the objective
lookup, config validation (`stage`, `pipeline.stages`) and the eval stage read it; no other
module spells a stage's name.

Light on imports (no torch, no transformers): config validation reads it. A runner is named as
"module:function" and imported only when its stage runs: `function(config, paths)` with the
typed `Config` and the run's `RunPaths`, returning the stage's final metrics.

`stage=pipeline` runs `pipeline.stages` in order; the pipeline is not a row of this table.
Adding a stage: its runner module, one declaration here, and its config section if it has knobs
(docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rlhf.runs.resume import NO_CHECKPOINTS, PPO_CHECKPOINTS, TRL_CHECKPOINTS, CheckpointLayout

PIPELINE = "pipeline"  # stage=pipeline: the stages of pipeline.stages, in order
SHARDING_ENGINES = ("deepspeed-zero2", "deepspeed-zero3", "fsdp1", "fsdp2")

# What a stage leaves in `<run>/<stage>/model/` for the stages after it.
POLICY = "policy"  # a causal LM that answers prompts (what eval judges)
REWARD_MODEL = "reward model"  # a one-output sequence classifier (PPO's default reward)


@dataclass(frozen=True)
class StageDeclaration:
    name: str  # `stage=<name>`, its folder `<run>/<name>/` and, by convention, its config section
    runner: str  # "module:function" run as function(config, paths) -> final metrics
    objective: str  # final metric returned to a sweeper when `objective` is not set
    produces: str | None = None  # what its `model/` holds for later stages: POLICY, REWARD_MODEL
    starts_from: str | None = None  # in a pipeline that ran this stage first: start from its model
    cache_sections: tuple[str, ...] = ()  # config sections keying its cache; () = never cached
    checkpoints: CheckpointLayout = NO_CHECKPOINTS  # how it checkpoints and resumes
    # the sharding launches it runs under (rlhf.runtime.distributed.launch_engine names);
    # () = plain processes only (single or DDP)
    sharded_engines: tuple[str, ...] = SHARDING_ENGINES
    # shards its models itself (not through accelerate's prepare): loads them on every
    # process, and gathers whole weights to merge LoRA for saving
    own_sharding: bool = False
    summary: str | None = None  # "module:function" → its lines of a pipeline's closing summary
    # the final metrics it returns (fnmatch patterns), so that `objective` is checked before
    # anything trains; () = not declared: checked when the stage ends
    final_metrics: tuple[str, ...] = ()

    def returns_metric(self, name: str) -> bool:
        """Whether `name` is one of the final metrics this stage declares."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.final_metrics)

    def load_runner(self) -> Callable[..., dict[str, float]]:
        """The runner: function(config: Config, paths: RunPaths) -> final metrics."""
        return _imported(self.runner)

    def load_summary(self) -> Callable[..., list[tuple[int, str]]] | None:
        """function(config: Config, metrics) -> [(logging level, line)] from the run's final
        metrics, logged at the end of a pipeline that ran the stage; None: it adds none."""
        return _imported(self.summary) if self.summary else None


def _imported(name: str) -> Callable:
    """The function named "module:function", imported now."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


RM_TEST_METRICS = (
    "accuracy", "margin", "chosen_score", "rejected_score", "score_std",
    "length_corr", "short_length_corr", "short_accuracy", "short_above_threshold",  # brevity
    "ece",  # calibration of sigmoid(score difference) (rlhf/reporting/rm_report.py)
)  # fmt: skip
EVAL_MODEL_METRICS = (
    "score", "above_threshold", "length", "eos_rate", "distinct", "distinct_2", "collapsed",
)  # fmt: skip

STAGES: dict[str, StageDeclaration] = {
    declaration.name: declaration
    for declaration in (
        StageDeclaration(
            "sft",
            runner="rlhf.stages.sft:run",
            objective="sft/test/loss",
            final_metrics=(
                "sft/test/loss",
                "sft/test/mean_token_accuracy",
                "sft/test_rows",
                "sft/train_rows",
            ),  # fmt: skip
            produces=POLICY,
            cache_sections=("model", "data", "sft"),
            checkpoints=TRL_CHECKPOINTS,
        ),
        StageDeclaration(
            "rm",
            runner="rlhf.stages.rm:run",
            objective="rm/test/accuracy",
            final_metrics=(
                *(f"rm/test/{name}" for name in RM_TEST_METRICS),
                "rm/train_rows",
                "rm/flipped_pairs",  # rm.label_noise
            ),  # fmt: skip
            produces=REWARD_MODEL,
            cache_sections=("model", "data", "rm"),
            checkpoints=TRL_CHECKPOINTS,
        ),
        StageDeclaration(  # declared before ppo: a run with neither judges PPO's policy
            "dpo",
            runner="rlhf.stages.dpo:run",
            objective="dpo/test/loss",
            final_metrics=("dpo/test/*", "dpo/test_rows", "dpo/train_rows"),
            produces=POLICY,
            starts_from="sft",
            cache_sections=("model", "data", "dpo"),
            checkpoints=TRL_CHECKPOINTS,
        ),
        StageDeclaration(
            "ppo",
            runner="rlhf.stages.ppo:run",
            objective="ppo/objective/scores",
            final_metrics=(
                "ppo/objective/scores",
                "ppo/objective/kl",
                "ppo/objective/rlhf_reward",
                # only when the last update evaluates (PPOConfig checks eval_every)
                *(
                    f"ppo/eval/{name}"
                    for name in (
                        "score",
                        "length",
                        "eos_rate",
                        "distinct",
                        "above_threshold",
                        "top_phrase_share",
                    )
                ),
                "ppo/eval/judge_*",  # with eval.judge and eval.judge_in_ppo
                # the checkpoint handed on (ppo.checkpoint.hand_on) and the hacking guard
                "ppo/kept_update",
                "ppo/kept/*",
                "ppo/guard/stopped_at",
            ),  # fmt: skip
            produces=POLICY,
            starts_from="sft",
            checkpoints=PPO_CHECKPOINTS,
            # FSDP2 only: our loop shards policy and critic itself (rlhf/runtime/sharding.py)
            sharded_engines=("fsdp2",),
            own_sharding=True,
        ),
        StageDeclaration(
            "eval",
            runner="rlhf.stages.eval:run",
            objective="eval/policy/score",
            final_metrics=(
                "eval/threshold",
                "eval/num_prompts",
                "eval/win_rate",
                "eval/kl",
                *(
                    f"eval/{model}/{name}"
                    for model in ("baseline", "policy")
                    for name in EVAL_MODEL_METRICS
                ),
                # with eval.judge (rlhf/stages/hacking.py)
                "eval/judge_*",
                "eval/*/judge_*",
                "eval/*/rm_judge_gap",
                "eval/policy/rm_judge_excess",
                "eval/length_ratio",
                "eval/hacking_suspected",
                # phrases, fluency, the data's own answers and eval.goals (rlhf/stages/goals.py)
                "eval/*/top_phrase_share",
                "eval/*/fluency_nll",
                "eval/data_rude/*",
                "eval/top_phrase_gap",
                "eval/goals/*",
                "eval/goals_met",
            ),  # fmt: skip
            starts_from="sft",
            summary="rlhf.stages.hacking:closing_summary",  # "reward hacking suspected" or not
        ),
    )
}


def stages_to_run(stage: str, pipeline_stages: Sequence[str]) -> list[StageDeclaration]:
    """The declarations of `stage` (one), or of `pipeline.stages` for stage=pipeline."""
    names = pipeline_stages if stage == PIPELINE else [stage]
    return [STAGES[name] for name in names]


def start_of(declaration: StageDeclaration, earlier: Sequence[str]) -> str | None:
    """The stage whose model `declaration` starts from, when that stage ran before it (in
    `earlier`); None: it starts from `model.*`."""
    return declaration.starts_from if declaration.starts_from in earlier else None


def producer(kind: str, order: Sequence[str]) -> StageDeclaration:
    """The stage whose model is the run's `kind`: the last of `order` producing it, else the last
    declared one (a single-stage run reads what the default pipeline would have left)."""
    for name in reversed(order):
        if STAGES[name].produces == kind:
            return STAGES[name]
    return [d for d in STAGES.values() if d.produces == kind][-1]
