"""Log-probabilities of sampled tokens without full-vocabulary float32 copies.

    log p(y_t) = z_t[y_t] / T − logsumexp_{v ∈ K_t}(z_t[v] / T)

over the kept set K_t of the distribution actually sampled: every token, or what Hugging Face's
warpers leave (a caller's `keep` mask first, e.g. EOS suppressed by min_new_tokens, then top-k,
then top-p, in generate's order, on the temperature-scaled logits). Shapes: N = B·T positions
(the functions take (B, T, ·) and flatten), V = vocabulary, H = hidden width. `stop_suppressed`
and `sampled_keep` build the min_new_tokens mask; `full_kl` is the exact KL between two such
distributions.

The autograd version of the plain formula (`log_softmax(logits.float() / T)` then gather) keeps
~3 N×V float32 tensors alive at once and one for backward: 335 MB each for Gemma's 262k
vocabulary at N = 8×40. Here the positions are processed in chunks of `chunk_rows` rows (fused
log-softmax kernel per chunk) and the backward recomputes each chunk's log-softmax from the saved
logits, so the only N×V tensors are the logits themselves and their gradient (in their dtype).
This is the one log-prob path of the PPO loop and the eval stage: measured against a plain
log-softmax and gather and against chunked LM-head versions (ours, TRL's) that never hold the
logits, it was the fastest forward and backward on Gemma 3's 262k vocabulary
(benchmarks/logprob_paths_bench.py).

Gradient, per position, with p the (truncated, renormalised) distribution, s = z / T and the
upstream gradients g (of the log-prob) and h (of the entropy H):
    ∂/∂s_v = g·(1[v = y] − p_v) − h·p_v·(log p_v + H),     ∂/∂z = (∂/∂s) / T,
zero outside the kept set (the kept set is piecewise constant in z: no gradient through it).
The entropy is computed only when asked for (`with_entropy`), from the same chunk pass.

Truncation by top-p is represented by a per-position threshold (the smallest kept scaled logit):
exact for top-k (Hugging Face also cuts by value); for top-p, logits tied exactly with the
smallest kept one are all kept, where Hugging Face's sort may drop some of them.
"""

from __future__ import annotations

import math

import torch

from rlhf.errors import ConfigError
from rlhf.runtime import distributed

DEFAULT_CHUNK_ELEMENTS = 2**22  # ~16 MB of float32 per chunk temporary


def default_chunk_rows(vocab_size: int) -> int:
    return max(1, DEFAULT_CHUNK_ELEMENTS // vocab_size)


@torch.no_grad()
def truncation_threshold(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """(n, V) float32 scaled logits (−inf where excluded) → (n,) smallest logit kept by
    Hugging Face's TopKLogitsWarper then TopPLogitsWarper (−inf: nothing cut)."""
    threshold = torch.full(scaled.shape[:1], -math.inf, device=scaled.device)
    if 0 < top_k < scaled.shape[-1]:
        threshold = torch.topk(scaled, top_k, dim=-1).values[:, -1]
        scaled = scaled.masked_fill(scaled < threshold[:, None], -math.inf)
    if top_p < 1.0:
        ascending = scaled.sort(dim=-1).values
        removed = ascending.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
        removed[:, -1] = False  # at least one token is kept
        smallest_kept = ascending.gather(1, removed.sum(-1, keepdim=True)).squeeze(1)
        threshold = torch.maximum(threshold, smallest_kept)
    return threshold


def _compute(tensor: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 → float32 (a copy); float32 and float64 as they are (float64: the
    exactness tests run the whole loop in it)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _scaled(logits, temperature, keep, settings, threshold=None):
    """A chunk's float32 scaled logits with the excluded tokens at −inf, the kept mask (None:
    every token) and the truncation threshold (computed in forward, passed in by backward)."""
    scaled = _compute(logits) if temperature == 1.0 else _compute(logits) / temperature
    if keep is not None:
        scaled = scaled.masked_fill(~keep, -math.inf)
    top_k, top_p = settings
    if threshold is None and (top_k > 0 or top_p < 1.0):
        threshold = truncation_threshold(scaled, top_k, top_p)
    if threshold is None:
        return scaled, keep, None
    cut = scaled >= threshold[:, None]
    kept = cut if keep is None else keep & cut
    return scaled.masked_fill(~cut, -math.inf), kept, threshold


def _chunk_forward(scaled, kept, tokens, with_entropy):
    """(n, V) scaled logits → log-prob (n,), entropy (n,) or None, and the (n, V) log-softmax
    (fused kernel; −inf outside the kept set)."""
    log_p = torch.log_softmax(scaled, dim=-1)
    logprobs = log_p.gather(1, tokens[:, None]).squeeze(1)
    if not with_entropy:
        return logprobs, None, log_p
    finite = log_p if kept is None else log_p.masked_fill(~kept, 0.0)
    return logprobs, -torch.einsum("nv,nv->n", log_p.exp(), finite), log_p


def _chunk_grad(
    scaled, kept, tokens, entropy, grad_logprobs, grad_entropy, temperature, out, saved=None
):
    """Write the (n, V) gradient with respect to the chunk's unscaled logits (formula above)
    into `out` (the logits' dtype). Without the entropy term it is autograd's log-softmax and
    gather backward (the same kernels, so the same bits as the plain path: long runs whose
    sampling amplifies a last-bit difference stay on the plain path's trajectory). The
    log-softmax is recomputed from `scaled` unless `saved` holds it (left unchanged)."""
    log_p = torch.log_softmax(scaled, dim=-1) if saved is None else saved
    if grad_entropy is None:  # the usual case: autograd's own kernels, so bit for bit its result
        if grad_logprobs is None:
            return out.zero_()
        picked = torch.zeros_like(log_p).scatter_(1, tokens[:, None], grad_logprobs[:, None])
        grad = torch._log_softmax_backward_data(picked, log_p, 1, log_p.dtype)
        return out.copy_(grad if temperature == 1.0 else grad.div_(temperature))
    p = log_p.exp()
    grad = (log_p + entropy[:, None]).mul_(p)  # p·(log p + H), NaN outside the kept set
    grad = grad if kept is None else torch.where(kept, grad, 0.0)
    grad.mul_(-grad_entropy[:, None])
    if grad_logprobs is not None:
        grad.sub_(p.mul_(grad_logprobs[:, None]))
        grad.scatter_add_(1, tokens[:, None], grad_logprobs[:, None])
    return out.copy_(grad if temperature == 1.0 else grad.div_(temperature))


def _chunk_rows(rows: torch.Tensor | None, chunk: slice) -> torch.Tensor | None:
    return None if rows is None else rows[chunk]


def _grad_slice(grad: torch.Tensor | None, chunk: slice) -> torch.Tensor | None:
    return None if grad is None else _compute(grad[chunk])


class _LogitsLogprobs(torch.autograd.Function):
    """(N, V) logits → (N,) log-probs and (N,) entropy (empty when not asked for)."""

    @staticmethod
    def forward(ctx, logits, tokens, keep, temperature, settings, with_entropy, rows, save):
        ctx.set_materialize_grads(False)
        n = logits.shape[0]
        rows = n if save else rows  # saving: one chunk, its log-softmax kept for backward
        dtype = _compute(logits[:0]).dtype
        logprobs = torch.empty(n, dtype=dtype, device=logits.device)
        entropy = torch.empty(n if with_entropy else 0, dtype=dtype, device=logits.device)
        thresholds = []
        for start in range(0, n, rows):
            chunk = slice(start, start + rows)
            scaled, kept, threshold = _scaled(
                logits[chunk], temperature, _chunk_rows(keep, chunk), settings
            )
            logprobs[chunk], h, log_p = _chunk_forward(scaled, kept, tokens[chunk], with_entropy)
            if with_entropy:
                entropy[chunk] = h
            thresholds.append(threshold)
        threshold = None if thresholds[0] is None else torch.cat(thresholds)
        saved = (log_p, None) if save else (None, logits)
        ctx.save_for_backward(*saved, tokens, keep, entropy, threshold)
        ctx.temperature, ctx.settings, ctx.rows = temperature, settings, rows
        ctx.logits_meta = (logits.shape, logits.dtype, logits.device)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        log_p, logits, tokens, keep, entropy, threshold = ctx.saved_tensors
        if grad_entropy is not None and grad_entropy.numel() == 0:
            grad_entropy = None
        shape, dtype, device = ctx.logits_meta
        grad = torch.empty(shape, dtype=dtype, device=device)
        if log_p is not None:
            kept = None if keep is None and threshold is None else torch.isfinite(log_p)
            _chunk_grad(
                None, kept, tokens, entropy, _grad_slice(grad_logprobs, slice(None)),
                _grad_slice(grad_entropy, slice(None)), ctx.temperature, grad, saved=log_p,
            )  # fmt: skip
            return grad, None, None, None, None, None, None, None
        for start in range(0, shape[0], ctx.rows):
            chunk = slice(start, start + ctx.rows)
            scaled, kept, _ = _scaled(
                logits[chunk], ctx.temperature, _chunk_rows(keep, chunk), ctx.settings,
                _chunk_rows(threshold, chunk),
            )  # fmt: skip
            _chunk_grad(
                scaled, kept, tokens[chunk], _chunk_rows(entropy, chunk),
                _grad_slice(grad_logprobs, chunk), _grad_slice(grad_entropy, chunk),
                ctx.temperature, grad[chunk],
            )  # fmt: skip
        return grad, None, None, None, None, None, None, None


def _flat(tensor: torch.Tensor | None, leading: int) -> torch.Tensor | None:
    return None if tensor is None else tensor.reshape(leading, *tensor.shape[2:])


def _unflat(logprobs, entropy, shape, with_entropy):
    return logprobs.view(shape), (entropy.view(shape) if with_entropy else None)


def token_logprobs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    *,
    keep: torch.Tensor | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    with_entropy: bool = False,
    chunk_rows: int | None = None,
    save_log_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits (B, T, V) any float dtype, tokens (B, T) long, keep (B, T, V) bool or None →
    (log-probs (B, T), entropy (B, T) or None; float32, or float64 for float64 logits) of the
    tokens under the temperature-scaled distribution truncated to `keep`, then top_k (0: off),
    then top_p (1: off), renormalised. `save_log_probs` keeps the (B·T, V) float32 log-softmax for backward
    instead of recomputing it chunk by chunk: fewer passes, the memory of the plain path."""
    shape, vocab = tokens.shape, logits.shape[-1]
    n = tokens.numel()
    logprobs, entropy = _LogitsLogprobs.apply(
        logits.reshape(n, vocab), tokens.reshape(n), _flat(keep, n), float(temperature),
        (int(top_k), float(top_p)), with_entropy, chunk_rows or default_chunk_rows(vocab),
        save_log_probs,
    )  # fmt: skip
    return _unflat(logprobs, entropy, shape, with_entropy)


def stop_suppressed(
    mask: torch.Tensor, vocab_size: int, stop_token_id: int, min_new_tokens: int
) -> torch.Tensor | None:
    """The `keep` mask of generate's min_new_tokens: mask (B, T) bool, True on real response
    tokens → (B, T, V) bool, the stop token excluded at the real positions among the first
    `min_new_tokens` (padding keeps every token, so its log-probs stay finite); None when
    `min_new_tokens` is 0. One byte per logit: a quarter of float32 logits' memory."""
    if min_new_tokens <= 0:
        return None
    keep = torch.ones((*mask.shape, vocab_size), dtype=torch.bool, device=mask.device)
    restricted = mask.bool().clone()
    restricted[:, min_new_tokens:] = False
    keep[..., stop_token_id] = ~restricted
    return keep


def sampled_keep(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    vocab_size: int,
    stop_token_id: int,
    min_new_tokens: int,
    check: bool = False,
) -> torch.Tensor | None:
    """(B, T, V) bool, the tokens the sampler could draw at each response position: all but
    the stop token among the first `min_new_tokens` (generate suppresses it there); None when
    that is 0. tokens (B, T) and mask (B, T) are the responses and their real positions.
    `check`: refuse answers holding the stop token there (given from outside: their log-prob
    under the distribution sampled is −inf), alike on every process."""
    first = min_new_tokens
    if first == 0:
        return None
    if check:
        early = (tokens[:, :first] == stop_token_id) & mask[:, :first].bool()
        if distributed.any_process(bool(early.any())):
            raise ConfigError(
                f"ppo.min_new_tokens={first}: an answer has the stop token among its first "
                f"{first} tokens, where sampling forbids it (log-probability −inf under the "
                "distribution sampled); give longer answers or lower ppo.min_new_tokens"
            )
    return stop_suppressed(mask, vocab_size, stop_token_id, first)


@torch.no_grad()
def full_kl(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    temperature: float = 1.0,
    *,
    keep: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Exact per-position KL(p ‖ q) = Σ_{v ∈ K} p_v·(log p_v − log q_v) of the policy's and the
    reference's temperature-scaled distributions, both truncated to the kept set K (`keep`
    (B, T, V) bool, None: every token) and renormalised: logits (B, T, V) twice → (B, T)
    float32 (float64 for float64 logits), in chunks of positions. No gradient: the penalty's
    KL enters the rewards."""
    shape, vocab = logits.shape[:-1], logits.shape[-1]
    n = shape.numel()
    flat, ref_flat, keep = logits.reshape(n, vocab), ref_logits.reshape(n, vocab), _flat(keep, n)
    kl = torch.empty(n, dtype=_compute(flat[:0]).dtype, device=flat.device)
    rows = chunk_rows or default_chunk_rows(vocab)
    for start in range(0, n, rows):
        chunk = slice(start, start + rows)
        kept = _chunk_rows(keep, chunk)
        log_p, log_q = (
            torch.log_softmax(_scaled(z[chunk], temperature, kept, (0, 1.0))[0], dim=-1)
            for z in (flat, ref_flat)
        )
        terms = log_p.exp() * (log_p - log_q)  # NaN outside the kept set (0 · (−inf + inf))
        kl[chunk] = (terms if kept is None else terms.masked_fill(~kept, 0.0)).sum(-1)
    return kl.view(shape)
