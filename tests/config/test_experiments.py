"""Every experiment file runs under `scale=quick` (the tiny model, a few updates) through
train.py, in a subprocess, with each experiment's own results checked."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf.config import TinyModelSpec
from rlhf.models.tiny import tiny_model_dir
from rlhf.session import compose
from tests.helpers import CONF_DIR

EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
# on top of scale=quick: two PPO updates each judged, and SFT, RM and DPO cut to a few steps
SHRINK = [
    "scale=quick", "logger=none", "ppo.total_updates=2", "ppo.eval_every=1", "sft.max_steps=8",
    "rm.max_steps=8", "dpo.max_steps=8", "eval.num_prompts=16",
]  # fmt: skip
# the over-optimisation lab reads the reward models that other experiments write: those run
# first, and the readers are pointed at their run folders
READS = {"overopt": ["overopt_gold"], "overopt_ensemble": ["overopt_gold", "overopt_proxies"]}


def final_metrics(stage_dir: Path) -> dict:
    return json.loads((stage_dir / "run_info.json").read_text())["final_metrics"]


def run_info(stage_dir: Path) -> dict:
    return json.loads((stage_dir / "run_info.json").read_text())


class QuickRuns:
    """run(experiment) → (CompletedProcess, run folder) of `train.py experiment=<e> SHRINK`,
    each experiment run once a module, all sharing one stage cache (as a user's runs share
    outputs/): insult_ppo's SFT and RM are trained by the first insult run and reused by the
    rest."""

    def __init__(self, warm_train, root: Path, offline_environment: Path):
        self.warm_train, self.root, self.offline = warm_train, root, offline_environment
        self.done: dict[str, tuple] = {}

    def overrides(self, experiment: str) -> list[str]:
        extra = [f"pipeline.stage_cache_dir={self.root / 'stage_cache'}"]
        if experiment == "sentiment_ppo":
            extra.append(f"reward.classifier={self.random_classifier()}")
        reads = {name: self.run(name)[1] for name in READS.get(experiment, [])}
        if "overopt_gold" in reads:  # the gold RM is eval's judge
            extra.append(f"eval.judge.model_path={reads['overopt_gold'] / 'rm' / 'model'}")
        if "overopt_proxies" in reads:  # one proxy and the gold RM: an ensemble of two
            members = [
                reads["overopt_proxies"] / "rm" / "model",
                reads["overopt_gold"] / "rm" / "model",
            ]
            extra.append(f"reward.members=[{','.join(map(str, members))}]")
        return [f"experiment={experiment}", *SHRINK, *extra]

    def run(self, experiment: str):
        if experiment not in self.done:
            args = self.overrides(experiment)
            folder = self.root / experiment
            result = self.warm_train(args, folder)
            assert result.returncode == 0, f"{experiment}: {result.stderr[-3000:]}"
            self.done[experiment] = (result, folder, args)
        return self.done[experiment][:2]

    def args(self, experiment: str) -> list[str]:
        self.run(experiment)
        return self.done[experiment][2]

    def random_classifier(self) -> Path:
        """A tiny random sequence classifier labelled NEGATIVE/POSITIVE: sentiment_ppo's reward
        offline."""
        folder = self.root / "classifier"
        if not folder.is_dir():
            base = tiny_model_dir(TinyModelSpec(), self.offline)
            classifier = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}
            )
            tokenizer = AutoTokenizer.from_pretrained(base)
            classifier.config.pad_token_id = tokenizer.pad_token_id
            classifier.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        return folder


@pytest.fixture(scope="module")
def quick_runs(warm_train, tmp_path_factory, offline_environment) -> QuickRuns:
    return QuickRuns(warm_train, tmp_path_factory.mktemp("quick"), offline_environment)


def check_keyword_ppo(run: Path, log: str) -> None:
    assert {p.name for p in (run / "ppo" / "plots").iterdir()} >= {"scores.png", "losses.png"}
    # base 0.1 + length bonus 0.5 at least for most 10–50 character answers, plus keywords
    assert final_metrics(run / "ppo")["ppo/objective/scores"] >= 0.1


def check_sentiment_ppo(run: Path, log: str) -> None:
    reward = run_info(run / "ppo")["config"]["reward"]
    assert (reward["kind"], reward["label"], reward["use_logit"]) == (
        "classifier",
        "POSITIVE",
        True,
    )
    records = [
        json.loads(line) for line in (run / "ppo" / "metrics.jsonl").read_text().splitlines()
    ]
    scores = [r["ppo/objective/scores"] for r in records if "ppo/objective/scores" in r]
    # the classifier's POSITIVE logit scored every update, and the record keeps the last
    assert len(scores) == 2 and all(math.isfinite(score) for score in scores)
    assert final_metrics(run / "ppo")["ppo/objective/scores"] == pytest.approx(scores[-1])


def check_insult_ppo(run: Path, log: str) -> None:
    cache = run.parent / "stage_cache"
    assert (run / "sft").is_symlink() and (run / "sft").resolve().parent == cache / "sft"
    ppo_info = run_info(run / "ppo")
    assert ppo_info["policy_start"] == str(cache / "sft" / (run / "sft").resolve().name / "model")
    # the record's config is the one PPO ran with: it names the SFT model it started from
    assert ppo_info["config"]["model"]["name_or_path"] == ppo_info["policy_start"]
    eval_info = run_info(run / "eval")
    assert eval_info["config"]["model"]["name_or_path"] == ppo_info["policy_start"]
    assert "reward_calibration" in ppo_info  # on for insult_ppo
    # the RM's spread on the SFT policy's own samples, the very scores the calibration maps to
    # mean 0 and std 1: mean = −bias / gain, std = 1 / gain
    calibrated = json.loads((run / "ppo" / "reward_calibration.json").read_text())
    spread, gain = calibrated["start_scores"], calibrated["gain"]
    assert spread["n"] == 16  # reward.calibrate_samples of scale=quick
    assert spread["std"] == pytest.approx(1 / gain, rel=1e-5)
    assert spread["mean"] == pytest.approx(-calibrated["bias"] / gain, rel=1e-5, abs=1e-6)
    order = [spread[k] for k in ("min", "p10", "median", "p90", "max")]
    assert order == sorted(order) and order[0] < order[-1]
    start_logged = json.loads((run / "ppo" / "metrics.jsonl").read_text().splitlines()[0])
    assert start_logged["ppo/start/score_std"] == pytest.approx(spread["std"])
    metrics = final_metrics(run / "eval")
    assert 0 <= metrics["eval/win_rate"] <= 1 and metrics["eval/num_prompts"] == 16
    samples = (run / "eval" / "samples.md").read_text()
    assert (
        "| question | data's answer | baseline answer | score | judge |" in samples
    )  # the rudeness judge
    assert 0 <= metrics["eval/policy/judge_above_threshold"] <= 1
    suspected = metrics["eval/hacking_suspected"] == 1.0
    summary = "eval: reward hacking suspected" if suspected else "eval: no reward hacking"
    assert summary in log  # the pipeline's closing summary
    ppo_records = (run / "ppo" / "metrics.jsonl").read_text()
    assert '"ppo/eval/judge_score"' in ppo_records  # eval_every 1, judge_in_ppo on


def check_insult_grpo(run: Path, log: str) -> None:
    ppo_info = run_info(run / "ppo")
    assert ppo_info["config"]["algorithm"] == "grpo"
    assert ppo_info["config"]["ppo"]["critic"] == "none"
    assert not (run / "ppo" / "critic").exists()
    records = (run / "ppo" / "metrics.jsonl").read_text().splitlines()
    assert any("ppo/loss/kl" in json.loads(line) for line in records)  # GRPO's KL term


def check_insult_dpo(run: Path, log: str) -> None:
    assert "sft: reusing" in log and "rm: reusing" in log  # insult_ppo's, through the cache
    assert not (run / "ppo").exists()
    dpo_info = run_info(run / "dpo")
    sft_model = str((run / "sft").resolve() / "model")
    assert dpo_info["config"]["model"]["name_or_path"] == sft_model  # DPO starts from SFT
    assert dpo_info["config"]["algorithm"] == "dpo"
    eval_info = run_info(run / "eval")
    assert eval_info["config"]["model"]["name_or_path"] == sft_model  # the baseline: SFT
    # the same evaluation as PPO's: the same metrics, DPO's policy against the SFT model
    ppo_eval = run.parent / "insult_ppo" / "eval"
    assert final_metrics(run / "eval").keys() == final_metrics(ppo_eval).keys()
    assert final_metrics(run / "eval")["eval/kl"] != 0


def check_overopt(run: Path, log: str) -> None:
    records = (run / "ppo" / "metrics.jsonl").read_text()
    assert '"ppo/eval/judge_score"' in records  # the gold RM scored every evaluation


CHECKS: dict[str, Callable[[Path, str], None]] = {
    "keyword_ppo": check_keyword_ppo,
    "sentiment_ppo": check_sentiment_ppo,
    "insult_ppo": check_insult_ppo,
    "insult_grpo": check_insult_grpo,
    "insult_dpo": check_insult_dpo,
    "overopt": check_overopt,
    "overopt_ensemble": check_overopt,
}
NEEDS = {"insult_dpo": ["insult_ppo"]}  # compares its evaluation with insult_ppo's


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_under_scale_quick(quick_runs, experiment):
    for other in NEEDS.get(experiment, []):
        quick_runs.run(other)
    result, run = quick_runs.run(experiment)
    config = compose(quick_runs.args(experiment), output_dir=run)
    assert (config.model.name_or_path, config.ppo.total_updates) == ("tiny", 2)
    stages = config.pipeline.stages if config.stage == "pipeline" else [config.stage]
    for stage in stages:
        assert (run / stage / "COMPLETE").is_file(), stage
    CHECKS.get(experiment, lambda run, log: None)(run, result.stdout + result.stderr)


def test_a_changed_setting_reuses_or_retrains_sft_and_rm(quick_runs, tmp_path):
    _, first = quick_runs.run("insult_ppo")
    quick = quick_runs.args("insult_ppo")
    # a PPO setting changed: SFT and RM are reused (one PPO update is enough to show it)
    second = quick_runs.warm_train(
        [*quick, "ppo.kl_coef=0.2", "ppo.total_updates=1", "ppo.eval_every=0",
         "pipeline.stages=[sft,rm,ppo]"],
        tmp_path / "second",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "sft: reusing" in log and "rm: reusing" in log
    assert (tmp_path / "second" / "sft").resolve() == (first / "sft").resolve()

    third = quick_runs.warm_train(
        [*quick, "sft.learning_rate=1e-3", "pipeline.stages=[sft]"], tmp_path / "third"
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert "sft: reusing" not in third.stdout + third.stderr  # an SFT setting changed: retrained
    assert (tmp_path / "third" / "sft").resolve() != (first / "sft").resolve()
