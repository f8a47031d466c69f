"""Stage `eval`: the trained policy against its starting point on held-out prompts.

The policy is the model of the stage declared as producing the policy (the last such stage of
`pipeline.stages`: PPO's), the baseline the model that stage started from (SFT's), the reward
the run's (its reward model by default); `eval.*_model` set any of them instead. Both models
answer the same held-out questions (greedy by default); the reward scores both. For each model:
mean score, share above the decision threshold (for the insult RM: rude answers),
mean length, EOS rate, share of distinct answers and distinct-2 (distinct character bigrams /
all bigrams). Between them: the policy's win rate (ties count half) and its KL to the baseline
on its own answers (Σ log π − log π_ref per answer). A policy whose answers are mostly the same
sentence has collapsed, whatever its score: the stage says so. With `eval.judge`, a second,
independent reward (rlhf/rewards/judge.py) scores both models' answers too
(`eval/<model>/judge_score` beside `eval/<model>/score`), and the stage says "reward hacking
suspected" when the reward and the judge disagree or the answers' length drifted
(rlhf/stages/hacking.py). Writes `eval/samples.md`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from rlhf.config import Config
from rlhf.data.loading import limit_lengths, load_preference_data
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.ppo import core
from rlhf.rewards import build_reward
from rlhf.rewards.judge import build_judge
from rlhf.rewards.reward_model import decision_threshold
from rlhf.runs.folders import RunPaths
from rlhf.runtime import distributed
from rlhf.runtime.generation import SamplingSettings, joined_inputs, sample_answers
from rlhf.stages.context import stage_context
from rlhf.stages.hacking import MODELS, hacking_check, judge_metrics, win_rate
from rlhf.stages.table import POLICY, REWARD_MODEL, producer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Answers:
    texts: list[str]
    lengths: list[int]
    ended: list[bool]
    batches: list[tuple]  # (encoded prompts, responses, mask) as generated, for KL


def distinct_2(texts: list[str]) -> float:
    """Distinct character bigrams over all bigrams of all answers (0 when there are none)."""
    bigrams = [text[i : i + 2] for text in texts for i in range(len(text) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


@torch.no_grad()
def answer(model, tokenizer, prompts: list[str], config: Config) -> Answers:
    settings = SamplingSettings(config.eval.max_new_tokens, do_sample=config.eval.do_sample)
    result = Answers([], [], [], [])
    size = config.eval.batch_size
    for start in range(0, len(prompts), size):
        encoded, responses, mask, ended, texts = sample_answers(
            model, tokenizer, prompts[start : start + size], config.data.system_prompt, settings
        )
        result.texts += texts
        result.lengths += mask.sum(1).tolist()
        result.ended += ended.tolist()
        result.batches.append((encoded, responses, mask))
    return result


def sequence_logprobs(model, encoded, responses, mask) -> torch.Tensor:
    """(B,) Σ_t log p(response token t) under `model`."""
    inputs = joined_inputs(encoded, responses, mask)
    logits = model(**inputs, use_cache=False, logits_to_keep=responses.shape[1] + 1).logits[:, :-1]
    return core.masked_sum(core.logprobs_of(logits, responses), mask, dim=1)


def model_metrics(
    name: str, answers: Answers, scores: torch.Tensor, threshold: float, collapse: float
) -> dict[str, float]:
    n = len(answers.texts)
    distinct = len(set(answers.texts)) / n
    if distinct < collapse:
        log.warning(
            "eval: %s has collapsed: %d distinct answers to %d questions",
            name,
            len(set(answers.texts)),
            n,
        )
    return {
        f"eval/{name}/score": scores.mean().item(),
        f"eval/{name}/above_threshold": (scores > threshold).float().mean().item(),
        f"eval/{name}/length": sum(answers.lengths) / n,
        f"eval/{name}/eos_rate": sum(answers.ended) / n,
        f"eval/{name}/distinct": distinct,
        f"eval/{name}/distinct_2": distinct_2(answers.texts),
        f"eval/{name}/collapsed": float(distinct < collapse),
    }


def sample_columns(with_judge: bool) -> list[str]:
    """question, then per model: answer, RM score (and judge score)."""
    per_model = ["{}", "{}_score", *(["{}_judge"] if with_judge else [])]
    return ["question", *(column.format(name) for name in MODELS for column in per_model)]


def sample_table(
    prompts: list[str],
    answers: dict[str, Answers],
    scores: dict[str, torch.Tensor],
    judged: dict[str, torch.Tensor] | None = None,
) -> list[list]:
    """Rows of `sample_columns(judged is not None)`, one per prompt."""
    rows = []
    for index, prompt in enumerate(prompts):
        row: list = [prompt]
        for name in MODELS:
            row += [answers[name].texts[index], round(scores[name][index].item(), 4)]
            if judged is not None:
                row.append(round(judged[name][index].item(), 4))
        rows.append(row)
    return rows


def write_samples(path: Path, columns: list[str], rows: list[list]) -> None:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    def label(column: str) -> str:
        if column == "question":
            return column
        return column.rsplit("_", 1)[1] if "_" in column else f"{column} answer"

    lines = [
        "| " + " | ".join(label(c) for c in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def model_sources(config: Config, paths: RunPaths) -> dict[str, str]:
    """baseline and policy → model folder: `eval.*_model` where set, else the run's policy (the
    model of the stage declared as producing it) and the model that stage started from."""
    policy = producer(POLICY, config.pipeline.stages)
    start = paths.model_dir(policy.starts_from) if policy.starts_from else None
    return {
        "baseline": config.eval.baseline_model or str(start or config.model.name_or_path),
        "policy": config.eval.policy_model or str(paths.model_dir(policy.name)),
    }


def load_models(config: Config, paths: RunPaths) -> dict[str, tuple]:
    """baseline and policy (`model_sources`): name → (model, tokenizer)."""
    sources = model_sources(config, paths)
    models = {}
    for name, path in sources.items():
        settings = dataclasses.replace(config.model.pointing_to(path), gradient_checkpointing=False)
        models[name] = load_model_and_tokenizer(settings, config.cache_dir)
    return models


def scored_reward_model(config: Config, paths: RunPaths) -> Path:
    """The reward-model folder the models are scored with: `eval.reward_model`, else
    `reward.model_path`, else the run's RM (the stage declared as producing one)."""
    run_rm = paths.model_dir(producer(REWARD_MODEL, config.pipeline.stages).name)
    return Path(config.eval.reward_model or config.reward.model_path or str(run_rm))


def eval_reward(config: Config, paths: RunPaths):
    """The reward both models are scored with, and its decision threshold."""
    rm_path = scored_reward_model(config, paths)
    reward_config = config.reward
    if reward_config.kind == "reward_model":
        reward_config = dataclasses.replace(reward_config, model_path=str(rm_path))
    reward = build_reward(reward_config, rm_path, config.data.system_prompt, config.model)
    threshold = config.eval.threshold
    if threshold is None:
        threshold = decision_threshold(rm_path) if reward_config.kind == "reward_model" else 0.0
    return reward, threshold


def eval_judge(config: Config, paths: RunPaths):
    """`eval.judge` (None when unset); a judge RM must not be the RM the models are scored with."""
    scored = scored_reward_model(config, paths) if config.reward.kind == "reward_model" else None
    return build_judge(config.eval, config.data.system_prompt, config.model, scored)


def run(config: Config, paths: RunPaths) -> dict[str, float]:
    with stage_context(config, paths, "eval") as ctx:
        data = load_preference_data(config.data)
        ctx.info["data_fingerprint"] = data.fingerprint
        judge = eval_judge(config, paths)  # first: a bad eval.judge stops the stage at once
        models = load_models(config, paths)
        tokenizer = models["policy"][1]
        prompts = limit_lengths(data.test, tokenizer, config.data, "test", answers=())["prompt"]
        prompts = list(prompts[: config.eval.num_prompts])
        reward, threshold = eval_reward(config, paths)
        answers = {name: answer(m, tok, prompts, config) for name, (m, tok) in models.items()}
        scores = {name: reward(prompts, a.texts) for name, a in answers.items()}
        metrics = {"eval/threshold": threshold, "eval/num_prompts": len(prompts)}
        for name in MODELS:
            metrics.update(
                model_metrics(
                    name, answers[name], scores[name], threshold, config.eval.collapse_distinct
                )
            )
        metrics["eval/win_rate"] = win_rate(scores["policy"], scores["baseline"])
        metrics["eval/kl"] = kl_to_baseline(
            models["policy"][0], models["baseline"][0], answers["policy"]
        )
        judged = None
        if judge is not None:
            judged = {name: judge.score(prompts, a.texts) for name, a in answers.items()}
            metrics.update(judge_metrics(judged, judge.threshold))
        ctx.info["hacking_suspected"] = report_hacking(metrics, config)
        columns, rows = (
            sample_columns(judged is not None),
            sample_table(prompts, answers, scores, judged),
        )
        if distributed.is_main_process():  # every process answered the same questions
            write_samples(ctx.stage_dir / "samples.md", columns, rows)
        ctx.tracker.log_table("eval/samples", columns, rows)
        ctx.tracker.log(metrics, step=0)
        ctx.final_metrics = metrics
    return ctx.final_metrics


def report_hacking(metrics: dict[str, float], config: Config) -> list[str]:
    """Add the hacking check's numbers to `metrics`, warn when suspected; returns the reasons."""
    numbers, reasons = hacking_check(
        metrics, config.eval.hacking_margin, config.eval.length_drift_factor
    )
    metrics.update(numbers)
    if reasons:
        log.warning("eval: reward hacking suspected: %s", "; ".join(reasons))
    return reasons


@torch.no_grad()
def kl_to_baseline(policy_model, baseline_model, policy_answers: Answers) -> float:
    """Mean over answers of Σ (log π − log π_baseline) on the policy's own answers (k1)."""
    differences = [
        sequence_logprobs(policy_model, encoded, responses, mask)
        - sequence_logprobs(baseline_model, encoded, responses, mask)
        for encoded, responses, mask in policy_answers.batches
    ]
    return torch.cat(differences).mean().item()
