"""PPO maths as pure tensor functions: KL estimators, reward shaping, GAE, whitening, losses.

Shapes: B = sequences, T = response tokens. `mask` is the response mask, True (1) on real
response tokens; values at masked positions never change a result. Functions take tensors and
scalars, never config objects; losses return `(loss, stats)` with stats as detached 0-d
tensors: no host sync inside, the caller reduces them to numbers once, where it logs them.

References: Schulman et al. 2017 (PPO), Schulman et al. 2016 (GAE), Ziegler et al. 2019 (KL
penalty in the reward), Ye et al. 2020 (dual clip), Schulman 2020 "Approximating KL divergence"
(k1, k2, k3), Huang et al. 2024 "The N+ implementation details of RLHF with PPO".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf import algorithms
from rlhf.runtime.masks import last_true_index

Stats = dict[str, torch.Tensor]  # name → detached 0-d tensor, reduced to a number where logged


def upcast(values: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 → float32; float32 and float64 stay as they are (exactness tests run
    the whole loop in float64)."""
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


# --- masked statistics ---------------------------------------------------------------------


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum over positions where mask is set; inf or NaN in padding stays out (where, not ×)."""
    kept = torch.where(mask.bool(), values, torch.zeros_like(values))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over positions where mask is set (all of them, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return masked_sum(values, mask) / mask.sum().clamp(min=1)
    return masked_sum(values, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over masked positions (Bessel-corrected by default)."""
    mean = masked_mean(values, mask)
    centred = torch.where(mask.bool(), values - mean, torch.zeros_like(values))
    count = mask.sum()
    variance = masked_mean(centred**2, mask)
    if unbiased:
        if count < 2:
            raise ValueError("masked_var: unbiased variance needs at least 2 masked values")
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x − mean) / std over masked positions; with shift_mean=False the mean is added back
    (scale only, as for rewards). Padded positions come out as 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# --- KL ---------------------------------------------------------------------------------------


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log p − log q per token, (B, T): unbiased, high variance, can be negative."""
    return logprobs - ref_logprobs


def kl_abs(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """|log p − log q| per token, (B, T)."""
    return (logprobs - ref_logprobs).abs()


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log p − log q)² per token, (B, T)."""
    return 0.5 * (logprobs - ref_logprobs).square()


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r − 1) − log r with r = q / p per token, (B, T): unbiased, ≥ 0, low variance."""
    log_ratio = logprobs - ref_logprobs
    return torch.expm1(-log_ratio) + log_ratio


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy ‖ reference) from sampled-token log-probs, (B, T), by the
    KL estimator `estimator` of the registry (rlhf/algorithms.py: k1, k2, k3, abs above)."""
    declaration = algorithms.kl_estimator(estimator)
    if declaration.from_logits:
        raise ValueError(f"ppo.kl_estimator: {estimator!r} needs the logits of both models")
    return declaration.load()(logprobs, ref_logprobs)


def full_kl_from_logits(
    logits: torch.Tensor, ref_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Exact per-token KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)) of the distributions
    softmax(logits / temperature), (B, T, V) → (B, T)."""
    logp = F.log_softmax(upcast(logits) / temperature, dim=-1)
    logq = F.log_softmax(upcast(ref_logits) / temperature, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the categorical distribution, (B, T, V) → (B, T)."""
    logp = F.log_softmax(upcast(logits), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# --- rewards and advantages -----------------------------------------------------------------


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (B, T): −β·KL on every response token, plus the sequence score (B,) on the last
    real response token. Returns (rewards, non_score_rewards); both are 0 on padding."""
    non_score = torch.where(mask.bool(), -kl_coef * kl, torch.zeros_like(kl))
    rewards = non_score.clone()
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_true_index(mask)] += scores.to(rewards.dtype)
    return rewards, non_score


def overlong_penalty(
    lengths: torch.Tensor, max_length: int, buffer: int, penalty: float
) -> torch.Tensor:
    """Soft penalty (B,) for answers running into the length limit (DAPO, Yu et al. 2025):
    0 up to max_length − buffer, then falling linearly to −penalty at max_length."""
    excess = (lengths.float() - (max_length - buffer)).clamp(min=0)
    return -penalty * (excess / buffer).clamp(max=1.0)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses, back to front.

    δ_t = r_t + γ V_{t+1} − V_t (V past the last real token is 0),
    A_t = δ_t + γλ A_{t+1}; returns = A + V. Both (B, T), 0 on padding.
    """
    keep = mask.bool()
    rewards = torch.where(keep, rewards, torch.zeros_like(rewards))
    values = torch.where(keep, values, torch.zeros_like(values))
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    length = values.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


# --- losses -----------------------------------------------------------------------------------


def token_mean(loss: torch.Tensor, mask: torch.Tensor, horizon: int | None = None) -> torch.Tensor:
    """(B, T) → scalar: the mean over all masked tokens, each weighing the same."""
    return masked_mean(loss, mask)


def _sequence_mean(per_row: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) → scalar: the mean over the rows with at least one masked token, so a row left out
    of the loss entirely (a dropped group) does not dilute it."""
    return masked_mean(per_row, mask.sum(1) > 0)


def seq_mean_token_mean(
    loss: torch.Tensor, mask: torch.Tensor, horizon: int | None = None
) -> torch.Tensor:
    """(B, T) → scalar: each sequence weighs the same (GRPO's 1/|o|)."""
    return _sequence_mean(masked_mean(loss, mask, dim=1), mask)


def seq_mean_token_sum(
    loss: torch.Tensor, mask: torch.Tensor, horizon: int | None = None
) -> torch.Tensor:
    """(B, T) → scalar: the mean of each sequence's token sum (longer sequences weigh more)."""
    return _sequence_mean(masked_sum(loss, mask, dim=1), mask)


def seq_mean_token_sum_norm(
    loss: torch.Tensor, mask: torch.Tensor, horizon: int | None = None
) -> torch.Tensor:
    """(B, T) → scalar: token sums over a constant `horizon` instead of each length (Dr. GRPO)."""
    if horizon is None or horizon < 1:
        raise ValueError("seq_mean_token_sum_norm needs a constant horizon >= 1")
    return _sequence_mean(masked_sum(loss, mask, dim=1) / horizon, mask)


def aggregate(
    loss: torch.Tensor, mask: torch.Tensor, mode: str, horizon: int | None = None
) -> torch.Tensor:
    """Per-token loss (B, T) → scalar by the loss aggregation `mode` of the registry
    (rlhf/algorithms.py: token_mean, seq_mean_token_mean, seq_mean_token_sum,
    seq_mean_token_sum_norm above); `horizon` is the constant length of the last."""
    return algorithms.aggregation(mode).load()(loss, mask.to(loss.dtype), horizon)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
    aggregation: str = "token_mean",
    horizon: int | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Clipped surrogate: max(−A·r, −A·clip(r, 1−ε_low, 1+ε_high)) per token, with r the
    probability ratio; with dual_clip = c > 1, tokens with A < 0 are capped at −c·A.
    `horizon`: the constant length of aggregation seq_mean_token_sum_norm; `weights` (B, T):
    per-token importance weights multiplied into the loss (another engine's samples:
    rlhf/ppo/rollout_correction.py)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        capped = torch.minimum(per_token, -advantages * dual_clip)
        per_token = torch.where(advantages < 0, capped, per_token)
    if weights is not None:
        per_token = per_token * weights
    loss = aggregate(per_token, mask, aggregation, horizon)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approxkl": masked_mean(-log_ratio, mask),  # k1 of old ‖ new
            "approxkl_k3": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": ratio.masked_fill(~mask.bool(), 0).max(),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
    aggregation: str = "token_mean",
    horizon: int | None = None,
) -> tuple[torch.Tensor, Stats]:
    """½·max((V − R)², (V_clipped − R)²), V_clipped = old V + clip(V − old V, ±ε_v)."""
    clipped_values = old_values + torch.clamp(
        values - old_values, -cliprange_value, cliprange_value
    )
    unclipped_error = (values - returns).square()
    clipped_error = (clipped_values - returns).square()
    errors = torch.maximum(unclipped_error, clipped_error)
    loss = 0.5 * aggregate(errors, mask, aggregation, horizon)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped_error > unclipped_error).float(), mask),
            "mean": masked_mean(values, mask),
            "explained_variance": explained_variance(values, returns, mask),
        }
    return loss, stats


def entropy_bonus(
    entropy: torch.Tensor, mask: torch.Tensor, aggregation: str, horizon: int | None = None
) -> torch.Tensor:
    """Aggregated entropy; the trainer subtracts entropy_coef × this from the loss."""
    return aggregate(entropy, mask, aggregation, horizon)


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """1 − Var(R − V) / Var(R) over masked positions: 1 is a perfect critic, ≤ 0 a useless one."""
    variance = masked_var(returns, mask, unbiased=False)
    residual = masked_var(returns - values, mask, unbiased=False)
    return 1 - residual / variance.clamp(min=1e-8)
