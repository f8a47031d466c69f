"""Stage `eval`: the trained policy against its starting point on held-out prompts.

The policy is the model of the stage declared as producing the policy (the last such stage of
`pipeline.stages`: PPO's), the baseline the model that stage started from (SFT's), the judge the
run's reward (its reward model by default); `eval.*_model` set any of them instead. Both models
answer the same held-out questions (greedy by default); the reward scores both. For each model:
mean score, share above the decision threshold (for the insult RM: rude answers),
mean length, EOS rate, share of distinct answers and distinct-2 (distinct character bigrams /
all bigrams). Between them: the policy's win rate (ties count half) and its KL to the baseline
on its own answers (Σ log π − log π_ref per answer). A policy whose answers are mostly the same
sentence has collapsed, whatever its score: the stage says so. Writes `eval/samples.md`.
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
from rlhf.rewards.reward_model import decision_threshold
from rlhf.runs.folders import RunPaths
from rlhf.runtime import distributed
from rlhf.runtime.generation import SamplingSettings, joined_inputs, sample_answers
from rlhf.stages.context import stage_context
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


SAMPLE_COLUMNS = ["question", "baseline", "baseline_score", "policy", "policy_score"]


def sample_table(prompts: list[str], answers: dict[str, Answers], scores: dict) -> list[list]:
    """(question, baseline answer, score, policy answer, score) rows."""
    return [
        [p, b, round(sb, 4), a, round(sa, 4)]
        for p, b, sb, a, sa in zip(
            prompts,
            answers["baseline"].texts,
            scores["baseline"].tolist(),
            answers["policy"].texts,
            scores["policy"].tolist(),
            strict=True,
        )
    ]


def write_samples(path: Path, rows: list[list]) -> None:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| question | baseline answer | score | policy answer | score |",
        "|---|---|---|---|---|",
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


def eval_reward(config: Config, paths: RunPaths):
    """The reward both models are scored with, and its decision threshold."""
    run_rm = paths.model_dir(producer(REWARD_MODEL, config.pipeline.stages).name)
    rm_path = config.eval.reward_model or config.reward.model_path or str(run_rm)
    reward_config = config.reward
    if reward_config.kind == "reward_model":
        reward_config = dataclasses.replace(reward_config, model_path=rm_path)
    reward = build_reward(reward_config, Path(rm_path), config.data.system_prompt, config.model)
    threshold = config.eval.threshold
    if threshold is None:
        threshold = (
            decision_threshold(Path(rm_path)) if reward_config.kind == "reward_model" else 0.0
        )
    return reward, threshold


def run(config: Config, paths: RunPaths) -> dict[str, float]:
    with stage_context(config, paths, "eval") as ctx:
        data = load_preference_data(config.data)
        ctx.info["data_fingerprint"] = data.fingerprint
        models = load_models(config, paths)
        tokenizer = models["policy"][1]
        prompts = limit_lengths(data.test, tokenizer, config.data, "test", answers=())["prompt"]
        prompts = list(prompts[: config.eval.num_prompts])
        reward, threshold = eval_reward(config, paths)
        answers = {name: answer(m, tok, prompts, config) for name, (m, tok) in models.items()}
        scores = {name: reward(prompts, a.texts) for name, a in answers.items()}
        metrics = {"eval/threshold": threshold, "eval/num_prompts": len(prompts)}
        for name in ("baseline", "policy"):
            metrics.update(
                model_metrics(
                    name, answers[name], scores[name], threshold, config.eval.collapse_distinct
                )
            )
        ties = (scores["policy"] == scores["baseline"]).float()
        metrics["eval/win_rate"] = (
            ((scores["policy"] > scores["baseline"]).float() + 0.5 * ties).mean().item()
        )
        metrics["eval/kl"] = kl_to_baseline(
            models["policy"][0], models["baseline"][0], answers["policy"]
        )
        rows = sample_table(prompts, answers, scores)
        if distributed.is_main_process():  # every process answered the same questions
            write_samples(ctx.stage_dir / "samples.md", rows)
        ctx.tracker.log_table("eval/samples", SAMPLE_COLUMNS, rows)
        ctx.tracker.log(metrics, step=0)
        ctx.final_metrics = metrics
    return ctx.final_metrics


@torch.no_grad()
def kl_to_baseline(policy_model, baseline_model, policy_answers: Answers) -> float:
    """Mean over answers of Σ (log π − log π_baseline) on the policy's own answers (k1)."""
    differences = [
        sequence_logprobs(policy_model, encoded, responses, mask)
        - sequence_logprobs(baseline_model, encoded, responses, mask)
        for encoded, responses, mask in policy_answers.batches
    ]
    return torch.cat(differences).mean().item()
