"""The PPO primer notebook (`shared/seeds/001`: gpt2, five Chinese prompts, a keyword reward,
TRL 0.7's `ppo_trainer.generate` / `ppo_trainer.step`) ported to rlhf's PPOSession.

    python experiments/keyword_ppo/loop.py                 # SmolLM2-135M-Instruct, 50 updates
    python experiments/keyword_ppo/loop.py --model tiny    # the tiny random model, ~15 s
    python experiments/keyword_ppo/loop.py --model tiny ppo.kl_coef=0.05   # any override

Writes `<out>/ppo/` (run record, metrics.jsonl, samples), `<out>/training_stats.json`,
`<out>/training_curves.png` and the trained model in `<out>/final/model/`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

from rlhf.rewards.text_rules import keyword_reward  # noqa: E402
from rlhf.session import PPOSession, compose  # noqa: E402


def reward_function(texts: list[str]) -> list[float]:
    """The notebook's reward: 0.1, +0.5 for 10–50 characters, +0.3 per positive word
    (好 棒 喜欢 开心 快乐 有趣 学习 成长), −0.2 for heavy repetition."""
    return keyword_reward([""] * len(texts), texts)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, help="updates (default: ppo.total_updates)")
    parser.add_argument("--out", type=Path, default=Path("outputs/keyword_ppo_loop"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. ppo.kl_coef=0.05")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    scale = ["scale=quick"] if args.model == "tiny" else []  # the tiny model, 12 updates
    config = compose(["experiment=keyword_ppo", *scale, *args.overrides], output_dir=args.out)
    training_stats = []
    # the notebook's PPOTrainer(config, model, ref_model=None, tokenizer, dataset)
    with PPOSession(config) as ppo_trainer:
        for epoch in range(args.steps or config.ppo.total_updates):
            queries = ppo_trainer.next_queries()  # a batch of the dataset's prompts
            responses = ppo_trainer.generate(queries)  # sampled, cut at the stop token
            rewards = reward_function(responses.texts)
            stats = ppo_trainer.step(queries, responses, rewards)
            ppo_trainer.log_stats(stats, responses, rewards)
            training_stats.append(
                {
                    "epoch": epoch,
                    "mean_reward": statistics.mean(rewards),
                    "policy_loss": stats["ppo/loss/policy"],
                    "value_loss": stats["ppo/loss/value"],
                    "kl": stats["ppo/objective/kl"],
                }
            )
            print(f"step {epoch + 1}: mean reward {statistics.mean(rewards):.3f}, "
                  f"{queries[0]}{responses.texts[0]!r}")  # fmt: skip
        ppo_trainer.save(args.out / "final")
    (args.out / "training_stats.json").write_text(json.dumps(training_stats, indent=2))
    plot(training_stats, args.out / "training_curves.png")
    return training_stats


def plot(training_stats: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [s["epoch"] for s in training_stats]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [s["mean_reward"] for s in training_stats], "b-o")
    left.set(title="mean reward", xlabel="update", ylabel="reward")
    right.plot(epochs, [s["policy_loss"] for s in training_stats], "r-o")
    right.set(title="policy loss", xlabel="update", ylabel="loss")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    main()
