"""TRL's PPOTrainer guide (`shared/seeds/002`: reward = a sentiment classifier's POSITIVE logit
from a `transformers` text-classification pipeline, TRL 0.7's `generate` / `step` /
`log_stats` / `save_model`) ported to rlhf's PPOSession.

    python experiments/sentiment_ppo/loop.py --classifier lvwerra/distilbert-imdb   # hub
    python experiments/sentiment_ppo/loop.py --classifier path/to/local/classifier  # offline
    python experiments/sentiment_ppo/loop.py --model tiny    # tiny model, random classifier

With `--model tiny` and no `--classifier`, the classifier is a random 2-label one built on the
tiny model (no hub needed): PPO then raises whatever that classifier calls POSITIVE, which shows
the loop working, not sentiment. Writes `<out>/ppo/`, `<out>/training_stats.json` and the
trained model in `<out>/final/model/`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

from transformers import pipeline  # noqa: E402

from rlhf.session import PPOSession, compose  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--classifier", help="a sentiment classifier: hub id or folder")
    parser.add_argument("--label", default="POSITIVE", help="the label whose logit is the reward")
    parser.add_argument("--steps", type=int, help="updates (default: ppo.total_updates)")
    parser.add_argument("--out", type=Path, default=Path("outputs/sentiment_ppo_loop"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. ppo.kl_coef=0.05")
    return parser.parse_args(argv)


def scale(model: str) -> list[str]:
    """The tiny model: scale=quick (12 updates), without the system prompt (the tiny model reads
    no instructions; its rise was measured without) and on 5 held-out prompts."""
    if model != "tiny":
        return []
    return ["scale=quick", "data.system_prompt=null", "ppo.eval_prompts=5"]


def random_tiny_classifier(folder: Path, cache_dir: str) -> Path:
    """A 2-label sequence classifier (NEGATIVE, POSITIVE) with random weights on the tiny model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.config import TinyModelSpec
    from rlhf.models.tiny import tiny_model_dir

    base = tiny_model_dir(TinyModelSpec(), Path(cache_dir).expanduser())
    tokenizer = AutoTokenizer.from_pretrained(base)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}
    )
    classifier.config.pad_token_id = tokenizer.pad_token_id
    # transformers' head init (std 0.02) leaves every logit near 0: spread them to unit scale
    generator = torch.Generator().manual_seed(0)
    weight = classifier.score.weight
    weight.data = torch.randn(weight.shape, generator=generator) / weight.shape[1] ** 0.5
    classifier.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    config = compose(["experiment=sentiment_ppo", *scale(args.model), *args.overrides], args.out)
    classifier = args.classifier
    if classifier is None and args.model == "tiny":
        classifier = random_tiny_classifier(args.out / "random_classifier", config.cache_dir)
    classifier = classifier or config.reward.classifier
    # the guide's reward model: pipeline("text-classification", model=...)
    sentiment_pipe = pipeline("text-classification", model=str(classifier))
    sent_kwargs = {"top_k": None, "function_to_apply": "none", "batch_size": 16}
    training_stats = []
    with PPOSession(config) as ppo_trainer:
        for epoch in range(args.steps or config.ppo.total_updates):
            queries = ppo_trainer.next_queries()
            responses = ppo_trainer.generate(queries)
            texts = [q + r for q, r in zip(queries, responses.texts, strict=True)]
            pipe_outputs = sentiment_pipe(texts, **sent_kwargs)
            rewards = [
                next(o["score"] for o in output if o["label"] == args.label)
                for output in pipe_outputs
            ]
            stats = ppo_trainer.step(queries, responses, rewards)
            ppo_trainer.log_stats(stats, responses, rewards)
            training_stats.append(
                {"epoch": epoch, "mean_reward": statistics.mean(rewards),
                 "kl": stats["ppo/objective/kl"]}
            )  # fmt: skip
            print(f"step {epoch + 1}: mean {args.label} logit {statistics.mean(rewards):.3f}")
        ppo_trainer.save(args.out / "final")  # the guide's ppo_trainer.save_model(...)
    (args.out / "training_stats.json").write_text(json.dumps(training_stats, indent=2))
    return training_stats


if __name__ == "__main__":
    main()
