"""Stage `eval`: the trained policy against its starting point on held-out prompts.

The policy is the model of the stage declared as producing the policy (the last such stage of
`pipeline.stages`: PPO's), the baseline the model that stage started from (SFT's), the reward
the run's (its reward model by default); `eval.*_model` set any of them instead. Both models
answer the same held-out questions (greedy by default); the reward scores both. For each model:
mean score, share above the decision threshold (for the insult RM: rude answers),
mean length, EOS rate, share of distinct answers, distinct-2 (distinct character bigrams /
all bigrams) and the share of answers holding the most frequent phrase (rlhf/reporting/phrases.py;
the phrase itself in the log and in run_info.json's `top_phrases`). Between them: the policy's
win rate (ties count half) and its KL to the baseline on its own answers (Σ log π − log π_ref
per answer). A policy whose answers are mostly the same sentence has collapsed, whatever its
score: the stage says so. With `eval.judge`, a second, independent reward
(rlhf/rewards/judge.py) scores both models' answers too (`eval/<model>/judge_score` beside
`eval/<model>/score`), and the stage says "reward hacking suspected" when the reward and the
judge disagree, the answers' length drifted or one phrase took over (rlhf/stages/hacking.py).

Where the data has answers, the data's chosen answers to the same questions are measured as a
reference row, `eval/data_rude/*` (`EvalConfig.DATA_ROW`): score, share above the threshold,
length in the policy's tokens (plus the stop token the models' lengths count), distinct,
distinct-2, top-phrase share and the judge's numbers. With `eval.fluency`, every row gets
`fluency_nll`: the mean NLL per character of its non-empty answers after the question and a
newline, under the run's base model as configured, loaded untrained (rlhf/reporting/fluency.py).
Last, `eval.goals` are checked on all of these (rlhf/stages/goals.py). Writes `eval/samples.md`
and `eval/goals.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlhf.config import Config, EvalConfig, ModelConfig
from rlhf.data.loading import limit_lengths, load_preference_data
from rlhf.models.loading import load_model_and_tokenizer
from rlhf.ppo import core
from rlhf.ppo.logprobs import token_logprobs
from rlhf.reporting.fluency import nll_per_character_batch
from rlhf.reporting.phrases import TopPhrase, top_phrase
from rlhf.rewards import build_reward
from rlhf.rewards.judge import build_judge
from rlhf.rewards.reward_model import decision_threshold
from rlhf.runs.folders import RUN_INFO, RunPaths
from rlhf.runtime import distributed
from rlhf.runtime.generation import SamplingSettings, joined_inputs, sample_answers
from rlhf.stages.context import stage_context
from rlhf.stages.goals import report_goals
from rlhf.stages.hacking import MODELS, hacking_check, judge_metrics, judge_row, win_rate
from rlhf.stages.table import POLICY, REWARD_MODEL, STAGES, producer

log = logging.getLogger(__name__)
DATA = EvalConfig.DATA_ROW  # the data's chosen answers, measured beside the two models
FLUENCY_BATCH = 8  # answers a forward pass: logits of a 262k-token vocabulary stay ~0.4 GB


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
    return core.masked_sum(token_logprobs(logits, responses)[0], mask, dim=1)


def answer_metrics(
    name: str, answers: Answers, scores: torch.Tensor, threshold: float
) -> dict[str, float]:
    """What every row measures (the models and the data's answers alike)."""
    n = len(answers.texts)
    return {
        f"eval/{name}/score": scores.mean().item(),
        f"eval/{name}/above_threshold": (scores > threshold).float().mean().item(),
        f"eval/{name}/length": sum(answers.lengths) / n,
        f"eval/{name}/distinct": len(set(answers.texts)) / n,
        f"eval/{name}/distinct_2": distinct_2(answers.texts),
        f"eval/{name}/top_phrase_share": top_phrase(answers.texts).share,
    }


def model_metrics(
    name: str, answers: Answers, scores: torch.Tensor, threshold: float, collapse: float
) -> dict[str, float]:
    """answer_metrics, the EOS rate and whether the model collapsed (said in a warning)."""
    metrics = answer_metrics(name, answers, scores, threshold)
    n, distinct = len(answers.texts), metrics[f"eval/{name}/distinct"]
    if distinct < collapse:
        log.warning(
            "eval: %s has collapsed: %d distinct answers to %d questions",
            name,
            len(set(answers.texts)),
            n,
        )
    metrics[f"eval/{name}/eos_rate"] = sum(answers.ended) / n
    metrics[f"eval/{name}/collapsed"] = float(distinct < collapse)
    return metrics


def data_answers(texts: list[str], tokenizer) -> Answers:
    """The data's answers as a row: lengths in the tokenizer's tokens plus the stop token that
    the models' answer lengths count."""
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]
    return Answers(list(texts), lengths, [True] * len(texts), [])


def top_phrases(answers: dict[str, Answers]) -> dict[str, TopPhrase]:
    """Each row's most frequent phrase, logged."""
    phrases = {name: top_phrase(a.texts) for name, a in answers.items()}
    for name, top in phrases.items():
        log.info(
            "eval: %s: most frequent phrase %r, in %.0f%% of the answers",
            name,
            top.phrase,
            100 * top.share,
        )
    return phrases


def base_model(config: Config, paths: RunPaths) -> ModelConfig:
    """The run's model before any training: `model` as configured or, where the pipeline pointed
    `model` at an earlier stage's folder (eval starts from SFT's), the model that stage started
    from, read back from its run record (and so on to the first stage)."""
    model = config.model
    folders = {str(paths.model_dir(stage)): stage for stage in STAGES}
    while model.name_or_path in folders:
        record = paths.stage_dir(folders.pop(model.name_or_path)) / RUN_INFO
        try:
            saved = json.loads(record.read_text(encoding="utf-8"))["config"]["model"]
            merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), saved)
            model = OmegaConf.to_object(merged)
        except (OSError, KeyError, ValueError, OmegaConfBaseException) as exc:
            reason = " ".join(str(exc).split())[:200]
            log.warning(
                "eval: fluency is measured under %s itself: its run record %s names no readable "
                "model (%s)",
                model.name_or_path,
                record,
                reason,
            )
            break
    return model


def fluency_metrics(
    config: Config, paths: RunPaths, prompts: list[str], answers: dict[str, Answers]
) -> dict[str, float]:
    """`eval/<row>/fluency_nll`: mean NLL per character of each row's non-empty answers after
    the question and a newline, under the untrained base model (none for a row of empty
    answers)."""
    settings = dataclasses.replace(base_model(config, paths), gradient_checkpointing=False)
    log.info("eval: fluency under the untrained base model %s", settings.name_or_path)
    model, tokenizer = load_model_and_tokenizer(settings, config.cache_dir)
    model.eval()
    contexts = [prompt + "\n" for prompt in prompts]
    metrics = {}
    for name, rows in answers.items():
        values = nll_per_character_batch(model, tokenizer, contexts, rows.texts, FLUENCY_BATCH)
        kept = [value for value, text in zip(values, rows.texts, strict=True) if text]
        if kept:
            metrics[f"eval/{name}/fluency_nll"] = sum(kept) / len(kept)
    return metrics


def sample_columns(with_judge: bool, with_data: bool = False) -> list[str]:
    """question, (the data's answer,) then per model: answer, RM score (and judge score)."""
    per_model = ["{}", "{}_score", *(["{}_judge"] if with_judge else [])]
    first = ["question", *(["data"] if with_data else [])]
    return [*first, *(column.format(name) for name in MODELS for column in per_model)]


def sample_table(
    prompts: list[str],
    answers: dict[str, Answers],
    scores: dict[str, torch.Tensor],
    judged: dict[str, torch.Tensor] | None = None,
) -> list[list]:
    """Rows of `sample_columns(judged is not None, DATA in answers)`, one per prompt."""
    rows = []
    for index, prompt in enumerate(prompts):
        row: list = [prompt, *([answers[DATA].texts[index]] if DATA in answers else [])]
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
        if column == "data":
            return "data's answer"
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
        has_answers = "chosen" in data.test.column_names
        config.eval.check_goals(has_answers)  # a goal this data cannot measure stops here
        judge = eval_judge(config, paths)  # first: a bad eval.judge stops the stage at once
        models = load_models(config, paths)
        tokenizer = models["policy"][1]
        test = limit_lengths(data.test, tokenizer, config.data, "test", answers=())
        test = test.select(range(min(len(test), config.eval.num_prompts)))
        prompts = list(test["prompt"])
        reward, threshold = eval_reward(config, paths)
        answers = {name: answer(m, tok, prompts, config) for name, (m, tok) in models.items()}
        if has_answers:
            answers[DATA] = data_answers(list(test["chosen"]), tokenizer)
        scores = {name: reward(prompts, a.texts) for name, a in answers.items()}
        metrics = {"eval/threshold": threshold, "eval/num_prompts": len(prompts)}
        for name in MODELS:
            metrics.update(
                model_metrics(
                    name, answers[name], scores[name], threshold, config.eval.collapse_distinct
                )
            )
        if has_answers:
            metrics.update(answer_metrics(DATA, answers[DATA], scores[DATA], threshold))
        metrics["eval/win_rate"] = win_rate(scores["policy"], scores["baseline"])
        metrics["eval/kl"] = kl_to_baseline(
            models["policy"][0], models["baseline"][0], answers["policy"]
        )
        del models  # the fluency model loads next
        judged = None
        if judge is not None:
            judged = {name: judge.score(prompts, a.texts) for name, a in answers.items()}
            metrics.update(judge_metrics(judged, judge.threshold))
            if has_answers:
                metrics.update(judge_row(DATA, judged[DATA], judge.threshold))
        if config.eval.fluency:
            metrics.update(fluency_metrics(config, paths, prompts, answers))
        phrases = top_phrases(answers)
        ctx.info["top_phrases"] = {n: dataclasses.asdict(top) for n, top in phrases.items()}
        named = {name: top.phrase for name, top in phrases.items()}
        ctx.info["hacking_suspected"] = report_hacking(metrics, config, named)
        main = distributed.is_main_process()  # every process answered the same questions
        goals_file = ctx.stage_dir / "goals.json" if main else None
        metrics.update(report_goals(config.eval.goals, metrics, goals_file))
        columns = sample_columns(judged is not None, has_answers)
        rows = sample_table(prompts, answers, scores, judged)
        if main:
            write_samples(ctx.stage_dir / "samples.md", columns, rows)
        ctx.tracker.log_table("eval/samples", columns, rows)
        ctx.tracker.log(metrics, step=0)
        ctx.final_metrics = metrics
    return ctx.final_metrics


def report_hacking(
    metrics: dict[str, float], config: Config, phrases: dict[str, str] | None = None
) -> list[str]:
    """Add the hacking check's numbers to `metrics`, warn when suspected; returns the reasons.
    `phrases`: each model's most frequent phrase, named in the reason."""
    cfg = config.eval
    numbers, reasons = hacking_check(
        metrics, cfg.hacking_margin, cfg.length_drift_factor, cfg.phrase_margin, phrases
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
