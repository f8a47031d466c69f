"""Selective log-probs (rlhf/ppo/logprobs.py) against a float64 full log-softmax gather.

Tolerances, derived (Higham's first-order bounds, unit roundoff u = 2⁻²⁴ in float32, s = z / T):
- log-prob s_y − logsumexp(s): u·|s_y| and u·max|s| from the scaling, (V + 1)·u from the sum of
  V exp terms in [0, 1] (recursive summation, the worst order) and its log, u·|log p| from the
  last subtraction: b = u·(3·max|s| + V + 2);
- p = exp(s − lse) has a relative error ≤ r = b + 2u, so each gradient element
  ∂/∂z_v = [g·(1[v = y] − p_v) − h·p_v·(log p_v + H)] / T is off by at most
  p_v·(|g|·r + |h|·(r·|log p_v + H| + b_H)) / T plus 4u of its own size (the few roundings
  that build it), with b_H the entropy's bound;
- entropy H = lse − Σ p·s: b + r·max|s| + (V + 1)·u·max|s| ≤ b·(1 + 2·max|s|) + 3u·max|s|;
- a product of matrices summing n terms adds n·u times the sum of the absolute terms; a bf16
  output (logits, gradients) adds its rounding, 2⁻⁸ of that sum (bf16 keeps 8 significant bits).
bf16 logits are exact inputs of both sides (the reference upcasts the same values).
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from rlhf.ppo.logprobs import token_logprobs, truncation_threshold

U = 2.0**-24  # unit roundoff of float32
BF16 = 2.0**-8  # of bfloat16


def bound(scaled: torch.Tensor) -> float:
    return U * (3 * scaled.abs().max().item() + scaled.shape[-1] + 2)


def reference(logits, tokens, temperature, kept=None):
    """float64 log-probs and entropy of the (truncated) distribution, with autograd."""
    scaled = logits.double() / temperature
    if kept is not None:  # a finite stand-in for −inf: exp underflows to exactly 0 in float64
        scaled = scaled.masked_fill(~kept, -1e4)
    log_p = torch.log_softmax(scaled, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return log_p.gather(-1, tokens[..., None]).squeeze(-1), entropy


def inputs(b=2, t=7, v=300, dtype=torch.float32, seed=0, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, t, v, generator=generator) * scale).to(dtype)
    tokens = torch.randint(0, v, (b, t), generator=generator)
    return logits, tokens


def entropy_bound(b: float, smax: float) -> float:
    return b * (1 + 2 * smax) + 3 * U * smax


def logit_grad_bound(logits64, tokens, temperature, g_lp, g_h, b, kept=None):
    """(N, V) elementwise bound on the error of ∂(g·log p + h·H)/∂z (module docstring)."""
    scaled = logits64.detach().reshape(-1, logits64.shape[-1]) / temperature
    if kept is not None:
        scaled = scaled.masked_fill(~kept.reshape(scaled.shape), -1e4)
    log_p = torch.log_softmax(scaled, dim=-1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1, keepdim=True)
    smax = scaled.masked_fill(scaled == -1e4, 0).abs().max().item()
    r = b + 2 * U
    g = g_lp.reshape(-1, 1).abs()
    h = torch.zeros_like(g) if g_h is None else g_h.reshape(-1, 1).abs()
    spread = (log_p + entropy).abs().masked_fill(p == 0, 0)
    return p * (g * r + h * (r * spread + entropy_bound(b, smax))) / temperature


def ref_logits_grad(logits64, tokens, temperature, g_lp, g_h, kept=None):
    """float64 ∂(g·log p + h·H)/∂z as an (N, V) matrix (h = 0 when g_h is None)."""
    logits = logits64.detach().clone().requires_grad_()
    ref_lp, ref_h = reference(logits, tokens, temperature, kept)
    loss = ref_lp * g_lp + (0 if g_h is None else ref_h * g_h)
    loss.sum().backward()
    return logits.grad.reshape(-1, logits.shape[-1])


def assert_within(ours: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> None:
    error = (ours.double().reshape(bound.shape) - ref.reshape(bound.shape)).abs()
    worst = (error / bound.clamp(min=1e-300)).max().item()
    assert (error <= bound).all(), f"error up to {worst:.3g}× the bound"


def upstream(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
@pytest.mark.parametrize(  # N = 14: 3 and 5 do not divide it; None: saved log-softmax
    "chunk_rows", [1, 3, 5, 14, 100, None]
)
def test_logprobs_entropy_and_gradients_equal_float64_log_softmax(temperature, chunk_rows):
    logits, tokens = inputs()
    g_lp, g_h = upstream(tokens.shape, 1), upstream(tokens.shape, 2)
    ours = logits.clone().requires_grad_()
    logprobs, entropy = token_logprobs(
        ours, tokens, temperature, with_entropy=True, chunk_rows=chunk_rows,
        save_log_probs=chunk_rows is None,
    )  # fmt: skip
    assert logprobs.dtype == entropy.dtype == torch.float32
    (logprobs.double() * g_lp + entropy.double() * g_h).sum().backward()
    ref_lp, ref_h = reference(logits, tokens, temperature)
    scaled = logits.double() / temperature
    b, smax = bound(scaled), scaled.abs().max().item()
    torch.testing.assert_close(logprobs.double(), ref_lp, atol=b, rtol=0)
    torch.testing.assert_close(entropy.double(), ref_h, atol=entropy_bound(b, smax), rtol=0)
    grad = ref_logits_grad(logits.double(), tokens, temperature, g_lp, g_h)
    limit = logit_grad_bound(logits.double(), tokens, temperature, g_lp, g_h, b)
    assert_within(ours.grad, grad, limit + 4 * U * grad.abs())


@pytest.mark.parametrize("save_log_probs", [False, True])
def test_logprob_gradient_alone_and_no_entropy_when_not_asked(save_log_probs):
    logits, tokens = inputs(seed=3)
    ours = logits.clone().requires_grad_()
    logprobs, entropy = token_logprobs(
        ours, tokens, 0.9, chunk_rows=4, save_log_probs=save_log_probs
    )
    assert entropy is None
    logprobs.sum().backward()
    ones = torch.ones_like(tokens, dtype=torch.float64)
    b = bound(logits.double() / 0.9)
    grad = ref_logits_grad(logits.double(), tokens, 0.9, ones, None)
    limit = logit_grad_bound(logits.double(), tokens, 0.9, ones, None, b)
    assert_within(ours.grad, grad, limit + 4 * U * grad.abs())
    # each row's gradient sums to 0 (a softmax Jacobian), to float32 rounding over V terms
    assert ours.grad.sum(-1).abs().max() < logits.shape[-1] * U * 4


@pytest.mark.parametrize("save_log_probs", [False, True])
def test_bf16_logits_give_float32_logprobs_and_a_bf16_gradient(save_log_probs):
    logits, tokens = inputs(dtype=torch.bfloat16, seed=4)
    ours = logits.clone().requires_grad_()
    logprobs, _ = token_logprobs(ours, tokens, 0.7, chunk_rows=3, save_log_probs=save_log_probs)
    logprobs.sum().backward()
    assert logprobs.dtype == torch.float32 and ours.grad.dtype == torch.bfloat16
    ones = torch.ones_like(tokens, dtype=torch.float64)
    ref_lp, _ = reference(logits, tokens, 0.7)
    b = bound(logits.double() / 0.7)
    torch.testing.assert_close(logprobs.double(), ref_lp, atol=b, rtol=0)
    grad = ref_logits_grad(logits.double(), tokens, 0.7, ones, None)
    limit = logit_grad_bound(logits.double(), tokens, 0.7, ones, None, b)
    assert_within(ours.grad, grad, limit * (1 + BF16) + (4 * U + BF16) * grad.abs())


def hf_kept(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Hugging Face's kept set: TopK then TopP warpers on the scaled logits (as in generate)."""
    flat = scaled.reshape(-1, scaled.shape[-1])
    if top_k > 0:
        flat = TopKLogitsWarper(top_k)(None, flat)
    if top_p < 1.0:
        flat = TopPLogitsWarper(top_p)(None, flat)
    return torch.isfinite(flat).reshape(scaled.shape)


def sample_kept(kept: torch.Tensor, seed: int) -> torch.Tensor:
    weights = kept.float().reshape(-1, kept.shape[-1])
    chosen = torch.multinomial(weights, 1, generator=torch.Generator().manual_seed(seed))
    return chosen.reshape(kept.shape[:-1])


@pytest.mark.parametrize(("top_k", "top_p"), [(5, 1.0), (0, 0.9), (20, 0.8), (0, 0.3)])
def test_truncated_distribution_matches_hf_warpers_and_float64(top_k, top_p):
    logits, _ = inputs(seed=5)
    temperature = 0.8
    scaled32 = (logits / temperature).reshape(-1, logits.shape[-1])
    kept = hf_kept(logits / temperature, top_k, top_p)
    threshold = truncation_threshold(scaled32, top_k, top_p)
    assert torch.equal((scaled32 >= threshold[:, None]).reshape(kept.shape), kept)
    tokens = sample_kept(kept, seed=6)
    ours = logits.clone().requires_grad_()
    logprobs, entropy = token_logprobs(
        ours, tokens, temperature, top_k=top_k, top_p=top_p, with_entropy=True, chunk_rows=4
    )
    (logprobs + entropy).sum().backward()
    saved = logits.clone().requires_grad_()  # the saved-log-softmax path: the same gradient
    again = token_logprobs(
        saved, tokens, temperature, top_k=top_k, top_p=top_p, with_entropy=True,
        save_log_probs=True,
    )  # fmt: skip
    (again[0] + again[1]).sum().backward()
    torch.testing.assert_close(saved.grad, ours.grad, atol=4 * U, rtol=4 * U)
    ref_lp, ref_h = reference(logits, tokens, temperature, kept)
    scaled = logits.double() / temperature
    b, smax = bound(scaled), scaled.abs().max().item()
    torch.testing.assert_close(logprobs.double(), ref_lp, atol=b, rtol=0)
    torch.testing.assert_close(entropy.double(), ref_h, atol=entropy_bound(b, smax), rtol=0)
    ones = torch.ones_like(tokens, dtype=torch.float64)
    grad = ref_logits_grad(logits.double(), tokens, temperature, ones, ones, kept)
    limit = logit_grad_bound(logits.double(), tokens, temperature, ones, ones, b, kept)
    assert_within(ours.grad, grad, limit + 4 * U * grad.abs())
    assert (ours.grad[~kept] == 0).all()  # no gradient outside the kept set
    # renormalised: the kept tokens' probabilities sum to 1 at every position
    vocab = logits.shape[-1]
    every_row = logits.reshape(-1, vocab).repeat_interleave(vocab, 0)  # (N·V, V)
    every_token = torch.arange(vocab).repeat(tokens.numel())  # (N·V,)
    every = token_logprobs(
        every_row[:, None], every_token[:, None], temperature, top_k=top_k, top_p=top_p
    )[0].reshape(-1, vocab)
    total = torch.where(kept.reshape(-1, vocab), every.exp(), 0.0).sum(-1)
    torch.testing.assert_close(total, torch.ones_like(total), atol=vocab * U * 4, rtol=0)


def test_keep_mask_then_top_k_as_generate_orders_them():
    """A caller's mask first (EOS suppressed by min_new_tokens), then top-k on what is left."""
    logits, _ = inputs(seed=7)
    eos = int(logits[0, 0].argmax())  # the most likely token of one row is banned
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[..., eos] = False
    kept = hf_kept((logits / 1.2).masked_fill(~keep, -math.inf), 10, 1.0)
    assert not kept[..., eos].any() and (kept.sum(-1) == 10).all()
    tokens = sample_kept(kept, seed=8)
    ours = logits.clone().requires_grad_()
    logprobs, _ = token_logprobs(ours, tokens, 1.2, keep=keep, top_k=10, chunk_rows=6)
    logprobs.sum().backward()
    ref_lp, _ = reference(logits, tokens, 1.2, kept)
    b = bound(logits.double() / 1.2)
    torch.testing.assert_close(logprobs.double(), ref_lp, atol=b, rtol=0)
    ones = torch.ones_like(tokens, dtype=torch.float64)
    grad = ref_logits_grad(logits.double(), tokens, 1.2, ones, None, kept)
    limit = logit_grad_bound(logits.double(), tokens, 1.2, ones, None, b, kept)
    assert_within(ours.grad, grad, limit + 4 * U * grad.abs())


@pytest.mark.parametrize("entropy_in_loss", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_through_an_lm_head_equal_float64(dtype, entropy_in_loss):
    """The loop's shape: logits = hidden·weightᵀ, gradients back into both."""
    generator = torch.Generator().manual_seed(9)
    hidden = torch.randn(2, 7, 16, generator=generator).to(dtype)
    weight = (torch.randn(300, 16, generator=generator) * 0.5).to(dtype)
    tokens = torch.randint(0, 300, (2, 7), generator=generator)
    g_lp = upstream(tokens.shape, 10)
    g_h = upstream(tokens.shape, 11) if entropy_in_loss else None
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logprobs, entropy = token_logprobs(h @ w.T, tokens, 0.7, with_entropy=True, chunk_rows=3)
    loss = logprobs.double() * g_lp + (entropy.double() * g_h if entropy_in_loss else 0)
    loss.sum().backward()
    h64, w64 = hidden.double(), weight.double()
    logits64 = h64 @ w64.T
    ref_lp, ref_h = reference(logits64, tokens, 0.7)
    # each logit sums 16 products in float32 (16·u·Σ|h||w|); a bf16 output rounds it (2⁻⁸·|z|)
    out = BF16 if dtype == torch.bfloat16 else 0.0
    h_abs, w_abs = h64.abs().reshape(-1, 16), w64.abs()
    logit_error = ((16 * U + out) * (h_abs @ w_abs.T)).max().item() / 0.7
    scaled = logits64 / 0.7
    b, smax = bound(scaled) + 2 * logit_error, scaled.abs().max().item() + logit_error
    torch.testing.assert_close(logprobs.double(), ref_lp, atol=b, rtol=0)
    torch.testing.assert_close(entropy.double(), ref_h, atol=entropy_bound(b, smax), rtol=0)
    # ∂/∂z within `limit` (rounded to bf16 before the matmuls), then ∂/∂h = (∂/∂z)·W sums 300
    # terms and ∂/∂W = (∂/∂z)ᵀ·h sums 14, each accumulated in float32, output in `dtype`
    grad_z = ref_logits_grad(logits64, tokens, 0.7, g_lp, g_h)
    limit = logit_grad_bound(logits64, tokens, 0.7, g_lp, g_h, b)
    limit = limit + (4 * U + out) * grad_z.abs()
    grad_h, grad_w = grad_z @ w64, grad_z.T @ h64.reshape(-1, 16)
    assert_within(
        h.grad.reshape(-1, 16), grad_h, limit @ w_abs + (300 * U + out) * (grad_z.abs() @ w_abs)
    )
    assert_within(w.grad, grad_w, limit.T @ h_abs + (14 * U + out) * (grad_z.abs().T @ h_abs))


def test_logprobs_through_an_lm_head_of_a_truncated_distribution():
    """keep mask, top-k and top-p; gradients back into the hidden states and the weight."""
    generator = torch.Generator().manual_seed(12)
    hidden = torch.randn(3, 5, 16, generator=generator)
    weight = torch.randn(300, 16, generator=generator) * 0.5
    logits = hidden @ weight.T
    keep = torch.rand(3, 5, 300, generator=generator) > 0.1
    kept = hf_kept((logits / 0.9).masked_fill(~keep, -math.inf), 40, 0.85)
    tokens = sample_kept(kept, seed=13)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logprobs, entropy = token_logprobs(
        h @ w.T, tokens, 0.9, keep=keep, top_k=40, top_p=0.85, with_entropy=True, chunk_rows=4
    )
    (logprobs + entropy).sum().backward()
    expected_lp, expected_h = token_logprobs(
        logits, tokens, 0.9, keep=keep, top_k=40, top_p=0.85, with_entropy=True
    )
    # both sides hold the same float32 logits up to the matmul's rounding (16·u·Σ|h||w|)
    logit_error = (16 * U * (hidden.abs().reshape(-1, 16) @ weight.abs().T)).max().item() / 0.9
    scaled = logits.double() / 0.9
    b, smax = 2 * bound(scaled) + 2 * logit_error, scaled.abs().max().item()
    torch.testing.assert_close(logprobs, expected_lp, atol=b, rtol=0)
    torch.testing.assert_close(entropy, expected_h, atol=2 * entropy_bound(b, smax), rtol=0)
    ones = torch.ones_like(tokens, dtype=torch.float64)
    grad_z = ref_logits_grad(logits.double(), tokens, 0.9, ones, ones, kept)
    limit = logit_grad_bound(logits.double(), tokens, 0.9, ones, ones, b, kept)
    limit = limit + 4 * U * grad_z.abs()
    h_abs, w_abs = hidden.double().abs().reshape(-1, 16), weight.double().abs()
    grad_h = grad_z @ weight.double()
    grad_w = grad_z.T @ hidden.double().reshape(-1, 16)
    assert_within(h.grad, grad_h, limit @ w_abs + 300 * U * (grad_z.abs() @ w_abs))
    assert_within(w.grad, grad_w, limit.T @ h_abs + 15 * U * (grad_z.abs().T @ h_abs))


def test_logits_version_saves_only_the_logits_in_their_dtype():
    logits = torch.randn(4, 8, 1000, dtype=torch.bfloat16, requires_grad=True)
    tokens = torch.randint(0, 1000, (4, 8))
    saved: list[tuple[torch.Size, torch.dtype]] = []

    def pack(tensor):
        saved.append((tensor.shape, tensor.dtype))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        token_logprobs(logits, tokens, 0.7, with_entropy=True)
    big = [(shape, dtype) for shape, dtype in saved if math.prod(shape) >= 4 * 8 * 1000]
    assert big == [(torch.Size([32, 1000]), torch.bfloat16)]  # no float32 copy
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        token_logprobs(logits, tokens, 0.7, save_log_probs=True)
    big = [(shape, dtype) for shape, dtype in saved if math.prod(shape) >= 4 * 8 * 1000]
    assert big == [(torch.Size([32, 1000]), torch.float32)]  # the log-softmax, not the logits


def test_logprobs_by_hand():
    logits = torch.zeros(1, 2, 4)
    logits[0, 1, 3] = math.log(3)  # probabilities (1, 1, 1, 3) / 6
    logprobs, _ = token_logprobs(logits, torch.tensor([[0, 3]]))
    assert logprobs[0].tolist() == pytest.approx([math.log(0.25), math.log(0.5)])


def test_float64_logits_stay_float64_and_match_to_float64_roundoff():
    """The exactness tests run the loop in float64: no float32 rounding may enter. Bound: the
    float32 derivation with u = 2⁻⁵³ (here ~1e-13)."""
    logits, tokens = inputs(dtype=torch.float64, seed=3)
    logits.requires_grad_()
    logprobs, entropy = token_logprobs(logits, tokens, 0.7, with_entropy=True, chunk_rows=5)
    assert logprobs.dtype == entropy.dtype == torch.float64
    ref_lp, ref_h = reference(logits, tokens, 0.7)
    u64 = 2.0**-53
    b = u64 * (3 * (logits / 0.7).abs().max().item() + logits.shape[-1] + 2)
    assert (logprobs - ref_lp).abs().max().item() <= b
    assert (entropy - ref_h).abs().max().item() <= b * (1 + 2 * (logits / 0.7).abs().max().item())
    (grad,) = torch.autograd.grad(logprobs.sum(), logits)
    (ref_grad,) = torch.autograd.grad(ref_lp.sum(), logits)
    assert grad.dtype == torch.float64
    assert (grad - ref_grad).abs().max().item() <= 10 * b
