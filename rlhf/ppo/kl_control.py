"""KL coefficient β: fixed, or adapted towards a target KL (Ziegler et al. 2019, eq. 2)."""

from __future__ import annotations


class FixedKLController:
    """β stays at its initial value."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_samples: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """β ← β · (1 + clip(KL / target − 1, ±0.2) · n / horizon) after each batch of n samples."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        super().__init__(kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_samples: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon


def make_kl_controller(
    kl_coef: float, adaptive: bool, target: float, horizon: int
) -> FixedKLController:
    return (
        AdaptiveKLController(kl_coef, target, horizon) if adaptive else FixedKLController(kl_coef)
    )
