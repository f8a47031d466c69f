"""Score post-processing before PPO: missing-EOS penalty, scale, running normalisation, clip."""

from __future__ import annotations

from collections.abc import Callable

import torch


class RunningMoments:
    """Mean and standard deviation of every score seen so far (parallel Welford/Chan update)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, values: torch.Tensor) -> None:
        values = values.double()
        n = values.numel()
        batch_mean, batch_var = values.mean().item(), values.var(unbiased=False).item()
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> float:
        return max(self.var, 1e-12) ** 0.5

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], int(state["count"])


class ScoreProcessor:
    """raw scores (B,) → scores PPO optimises, in this order: calibration (gain, bias), missing-EOS
    penalty, scale, running normalisation, clip. `gather` collects the scores of every process
    (data-parallel PPO), so that the running moments are those of the global batch."""

    def __init__(
        self,
        scale: float,
        normalize: bool,
        clip: float | None,
        missing_eos_penalty: float | None,
        gain: float = 1.0,
        bias: float = 0.0,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.scale, self.normalize, self.clip = scale, normalize, clip
        self.missing_eos_penalty = missing_eos_penalty
        self.gain, self.bias = gain, bias
        self.moments = RunningMoments()
        self.gather = gather or (lambda scores: scores)

    def __call__(self, raw: torch.Tensor, ended_with_eos: torch.Tensor) -> torch.Tensor:
        scores = raw.float() * self.gain + self.bias
        if self.missing_eos_penalty is not None:
            scores = scores - self.missing_eos_penalty * (~ended_with_eos).float()
        scores = scores * self.scale
        if self.normalize:
            self.moments.update(self.gather(scores))
            scores = (scores - self.moments.mean) / self.moments.std
        if self.clip is not None:
            scores = scores.clamp(-self.clip, self.clip)
        return scores


def calibration(scores: torch.Tensor) -> tuple[float, float]:
    """Gain and bias that map these scores to mean 0 and standard deviation 1."""
    mean, std = scores.float().mean().item(), scores.float().std().clamp(min=1e-6).item()
    return 1.0 / std, -mean / std
