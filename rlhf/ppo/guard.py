"""The hacking guard (`ppo.hacking_guard`): acts on PPO's held-out evaluations when the reward
and an independent judge (eval.judge) disagree, instead of only warning after training.

At each evaluation the gap is the share of answers above the reward's threshold minus the share
above the judge's (`ppo/guard/gap`: the eval stage's `rm_judge_gap`, rlhf/stages/hacking.py). An
evaluation of a trained policy (update >= 1) whose gap is above `margin` counts; `patience`
counted evaluations in a row make the guard act:
- `stop`: training ends after this update (the stage then hands on the policy that
  ppo.checkpoint.hand_on names: the best checkpoint by default);
- `raise_kl`: kl_coef is multiplied by `kl_factor` (an adaptive controller steers on from the
  new value) and the count starts again.
The evaluation of the starting policy (update 0) logs its gap but does not count: the guard
judges what training did, not a disagreement that was there before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.config import HackingGuardConfig

RM_SHARE = "ppo/eval/above_threshold"
JUDGE_SHARE = "ppo/eval/judge_above_threshold"


@dataclass(frozen=True)
class GuardAction:
    action: str  # stop or raise_kl
    message: str  # one line saying why, with the numbers


class HackingGuard:
    """Counts consecutive evaluations over the margin; `observe` adds `ppo/guard/*` to the
    evaluation's metrics and returns the action when the guard acts."""

    def __init__(self, config: HackingGuardConfig | None):
        self.config = config
        self.streak = 0  # counted evaluations in a row so far
        self.acted: list[int] = []  # updates at which the guard acted
        self.stopped: str | None = None  # why training stopped (action stop), else None

    def observe(self, update: int, metrics: dict[str, float]) -> GuardAction | None:
        """Read the evaluation in `metrics` (which gains ppo/guard/gap and ppo/guard/streak)."""
        if RM_SHARE not in metrics or JUDGE_SHARE not in metrics:
            return None
        gap = metrics[RM_SHARE] - metrics[JUDGE_SHARE]
        metrics["ppo/guard/gap"] = gap
        c = self.config
        if c is None:
            return None
        if update >= 1:
            self.streak = self.streak + 1 if gap > c.margin else 0
        metrics["ppo/guard/streak"] = float(self.streak)
        if self.streak < c.patience:
            return None
        self.streak = 0
        self.acted.append(update)
        metrics["ppo/guard/acted"] = 1.0
        because = (
            f"the reward puts {metrics[RM_SHARE]:.0%} of the held-out answers above its "
            f"threshold, the judge {metrics[JUDGE_SHARE]:.0%}: gap {gap:.2f} > "
            f"ppo.hacking_guard.margin {c.margin:g} at {c.patience} evaluation(s) in a row"
        )
        message = f"hacking guard at update {update}: {because}"
        if c.action == "stop":
            self.stopped = message
        return GuardAction(c.action, message)

    def state_dict(self) -> dict:
        return {"streak": self.streak, "acted": list(self.acted), "stopped": self.stopped}

    def load_state_dict(self, state: dict | None) -> None:
        state = state or {}  # checkpoints written before the guard existed
        self.streak = int(state.get("streak", 0))
        self.acted = list(state.get("acted", []))
        self.stopped = state.get("stopped")
