"""Critic-free advantage estimators as pure tensor functions (GAE, which needs a critic, is in
core.py; `ppo.advantage_estimator` picks one, each declared with what follows from it in
rlhf/algorithms.py).

Shapes: B = P × G sequences, the G answers to each of P prompts in consecutive rows (the
trainer's rollout order: a prompt's group is whole on one process, so every group statistic
here is the global one); T = response tokens; `mask` (B, T) True on real response tokens.
`rewards` (B, T) are the per-token rewards of core.per_token_rewards: the score on the last
response token plus −β·KL on every token when the KL is in the reward (`ppo.kl_in=reward`),
the score alone when it is in the loss. A sequence's reward R = Σ_t rewards_t.

Each estimator returns `(advantages, returns)`, both (B, T) and 0 on padding: the group
estimators put one value on every token of a sequence and return R broadcast (what their
baseline is subtracted from); REINFORCE++ returns its discounted returns-to-go. Whitening over
the batch is the trainer's step (global moments), on or off per estimator.

References: Shao et al. 2024 (DeepSeekMath: GRPO), Liu et al. 2025 ("Understanding R1-Zero-like
training": Dr. GRPO), Ahmadian et al. 2024 ("Back to basics": RLOO), Hu 2025 (REINFORCE++ and
REINFORCE++-baseline), Yu et al. 2025 (DAPO: dynamic sampling drops uniform groups).
"""

from __future__ import annotations

import inspect

import torch

from rlhf import algorithms
from rlhf.ppo import core
from rlhf.runtime.masks import last_true_index

GROUP_EPS = 1e-6  # GRPO's ε in (R − mean) / (std + ε): a group of equal rewards gets 0


def grouped(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) → (B / G, G): row p holds the answers to prompt p."""
    if group_size < 1 or values.shape[0] % group_size:
        raise ValueError(f"{values.shape[0]} sequences do not split into groups of {group_size}")
    return values.reshape(-1, group_size)


def group_mean(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) → (B,): the mean of each sequence's group."""
    return grouped(values, group_size).mean(1).repeat_interleave(group_size)


def group_std(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) → (B,): the Bessel-corrected standard deviation of each sequence's group (G ≥ 2)."""
    if group_size < 2:
        raise ValueError("a group's standard deviation needs at least 2 answers")
    return grouped(values, group_size).std(1).repeat_interleave(group_size)


def on_tokens(per_sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, T): each sequence's value on its response tokens, 0 on padding."""
    values = per_sequence[:, None].expand(mask.shape)
    return torch.where(mask.bool(), values, torch.zeros_like(values))


def sequence_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) → (B,): R = Σ_t rewards_t over the response."""
    return core.masked_sum(rewards, mask, dim=1)


def grpo(
    rewards: torch.Tensor, mask: torch.Tensor, group_size: int, eps: float = GROUP_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: A = (R − group mean) / (group std + ε) on every token of the sequence."""
    total = sequence_rewards(rewards, mask)
    centred = total - group_mean(total, group_size)
    return on_tokens(centred / (group_std(total, group_size) + eps), mask), on_tokens(total, mask)


def dr_grpo(
    rewards: torch.Tensor, mask: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr. GRPO: A = R − group mean (no division by the group's std, which favours prompts
    whose answers all score alike); its loss sums tokens over a constant length (core.aggregate,
    seq_mean_token_sum_norm) instead of dividing by each answer's length."""
    total = sequence_rewards(rewards, mask)
    return on_tokens(total - group_mean(total, group_size), mask), on_tokens(total, mask)


def rloo(
    rewards: torch.Tensor, mask: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO: A_i = R_i − mean of the other G − 1 rewards of the group (a baseline that does not
    depend on the answer itself) = G / (G − 1) · (R_i − group mean)."""
    if group_size < 2:
        raise ValueError("leave-one-out needs at least 2 answers per prompt")
    total = sequence_rewards(rewards, mask)
    group_sum = grouped(total, group_size).sum(1).repeat_interleave(group_size)
    others = (group_sum - total) / (group_size - 1)
    return on_tokens(total - others, mask), on_tokens(total, mask)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + γ G_{t+1} over right-padded responses (0 past the last real token), (B, T)."""
    keep = mask.bool()
    rewards = torch.where(keep, rewards, torch.zeros_like(rewards))
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(keep[:, t], rewards[:, t] + gamma * running, running)
        returns[:, t] = torch.where(keep[:, t], running, torch.zeros_like(running))
    return returns


def reinforce_pp(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++: A_t = discounted return-to-go of the per-token rewards (KL in the reward),
    before the whitening over the global batch that the trainer applies."""
    returns = discounted_returns(rewards, mask, gamma)
    return returns.clone(), returns


def reinforce_pp_baseline(
    rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, group_size: int, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline: the group's mean score (B,) is subtracted where the score sits (the
    last response token), then REINFORCE++; the KL stays per token, outside the baseline."""
    baseline = torch.zeros_like(rewards)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    baseline[rows, last_true_index(mask)] = group_mean(scores, group_size).to(rewards.dtype)
    return reinforce_pp(rewards - baseline, mask, gamma)


def advantages(
    name: str,
    rewards: torch.Tensor,
    scores: torch.Tensor,
    values: torch.Tensor | None,
    mask: torch.Tensor,
    group_size: int,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The advantage estimator `name` (ppo.advantage_estimator, declared in rlhf/algorithms.py)
    on one process's rollout: its function gets the inputs it names among `rewards` (B, T),
    `scores` (B,), `values` (B, T) (None without a critic), `mask` (B, T), `group_size`,
    `gamma` and `lam`, and returns `(advantages, returns)`, both (B, T)."""
    declaration = algorithms.estimator(name)
    if declaration.critic != algorithms.NO_CRITIC and values is None:
        raise ValueError(f"ppo.advantage_estimator: {name!r} needs a critic's values")
    function = declaration.load()
    given = {
        "rewards": rewards, "scores": scores, "values": values, "mask": mask,
        "group_size": group_size, "gamma": gamma, "lam": lam,
    }  # fmt: skip
    wanted = inspect.signature(function).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in wanted.values()):
        given = {key: value for key, value in given.items() if key in wanted}
    return function(**given)


def uniform_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) → (B,) bool: True on the rows of groups whose scores are all equal (no signal for a
    group baseline: DAPO's dynamic sampling leaves them out)."""
    groups = grouped(scores, group_size)
    uniform = groups.max(1).values == groups.min(1).values
    return uniform.repeat_interleave(group_size)
