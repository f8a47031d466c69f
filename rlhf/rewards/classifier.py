"""Reward from a text-classification model (e.g. lvwerra/distilbert-imdb): one label's logit
(use_logit) or probability for prompt + completion, as in TRL's sentiment example."""

from __future__ import annotations

from transformers import pipeline

from rlhf.errors import ConfigError
from rlhf.runtime import distributed


class ClassifierScorer:
    def __init__(self, model: str, label: str | None, use_logit: bool, section: str = "reward"):
        """`section`: where the config sits (reward, eval.judge), named in errors."""
        try:
            self.pipe = pipeline(
                "text-classification",
                model=model,
                top_k=None,
                function_to_apply="none" if use_logit else "softmax",
                device=distributed.device(),  # this process's GPU (cuda:<local rank>), or the CPU
            )
        except (OSError, ValueError) as exc:  # no such folder, or not reachable offline
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
            raise ConfigError(
                f"{section}.classifier: cannot load {model!r} ({first_line})"
            ) from exc
        labels = list(self.pipe.model.config.id2label.values())
        self.label = label if label is not None else labels[-1]
        if self.label not in labels:
            raise ConfigError(f"{section}.label: {self.label!r} is not one of {', '.join(labels)}")

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        outputs = self.pipe(texts, truncation=True)
        return [next(o["score"] for o in row if o["label"] == self.label) for row in outputs]
