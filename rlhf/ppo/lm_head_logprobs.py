"""Token log-probs straight from the last hidden states and the LM-head weight: no N×V tensor.

Same distribution, truncation and gradient as rlhf/ppo/logprobs.py (see its docstring); the
difference is where the logits come from. The vocabulary is cut into column blocks of
`chunk_cols` tokens: forward computes each block's logits z_c = h·W_cᵀ (N × chunk_cols), folds
it into a running (online) logsumexp, and the entropy's Σ p·s, and picks the sampled tokens'
logits out of the block that holds them; backward recomputes each block and adds
∂/∂h += G_c·W_c and writes ∂/∂W_c = G_cᵀ·h, so every block of the weight gradient is written
once. Cost: one more LM-head matmul than the plain path (the recomputation), in exchange for
memory: N × chunk_cols float32 instead of N × V (Gemma 3: 262,144 columns).

Top-k / top-p need whole rows: their per-position thresholds come from one extra no-grad pass
over row chunks (rows × V at a time). Heads with a bias or logit soft-capping are not covered.
Shapes: hidden (B, T, H), weight (V, H), tokens (B, T).
"""

from __future__ import annotations

import math

import torch

from rlhf.ppo.logprobs import DEFAULT_CHUNK_ELEMENTS, default_chunk_rows, truncation_threshold


def _block(hidden, head, cols, temperature, keep, threshold):
    """(N, c) float32 scaled logits of one vocabulary block, excluded tokens at −inf."""
    scaled = (hidden @ head[cols].T).float()
    if temperature != 1.0:
        scaled /= temperature
    if keep is not None:
        scaled.masked_fill_(~keep[:, cols], -math.inf)
    if threshold is not None:
        scaled.masked_fill_(scaled < threshold[:, None], -math.inf)
    return scaled


@torch.no_grad()
def _thresholds(hidden, head, temperature, keep, settings):
    """(N,) top-k / top-p thresholds from row chunks of full logits, or None when off."""
    top_k, top_p = settings
    if top_k <= 0 and top_p >= 1.0:
        return None
    rows = default_chunk_rows(head.shape[0])
    parts = []
    for start in range(0, hidden.shape[0], rows):
        chunk = slice(start, start + rows)
        rows_keep = None if keep is None else keep[chunk]
        scaled = _block(hidden[chunk], head, slice(None), temperature, rows_keep, None)
        parts.append(truncation_threshold(scaled, top_k, top_p))
    return torch.cat(parts)


def _blocks(vocab: int, cols: int):
    return [slice(start, min(start + cols, vocab)) for start in range(0, vocab, cols)]


def _in_block(tokens, cols):
    """Rows whose token lies in the block, and its column inside the block."""
    rows = ((tokens >= cols.start) & (tokens < cols.stop)).nonzero().squeeze(1)
    return rows, (tokens[rows] - cols.start)[:, None]


def _block_grad(log_p, entropy, g, h, tokens, block):
    """(N, c) float32 gradient of one block w.r.t. its scaled logits (already divided by T in
    g and h): −g·p − h·p·(log p + H), plus g at the sampled tokens; `log_p` is consumed."""
    p = log_p.exp()
    if h is None:
        grad = p.mul_(-g[:, None]) if g is not None else p.zero_()
    else:
        term = log_p.add_(entropy[:, None]).mul_(p)  # NaN where excluded (0·−inf)
        grad = torch.where(p > 0, term, 0.0).mul_(-h[:, None])
        if g is not None:
            grad.sub_(p.mul_(g[:, None]))
    if g is not None:
        rows, column = _in_block(tokens, block)
        grad.index_put_((rows, column.squeeze(1)), g[rows], accumulate=True)
    return grad


class _HeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, tokens, keep, temperature, settings, with_entropy, cols):
        ctx.set_materialize_grads(False)
        n = hidden.shape[0]
        with torch.autocast(hidden.device.type, enabled=False):
            head = weight.to(hidden.dtype)
            threshold = _thresholds(hidden, head, temperature, keep, settings)
            peak = torch.full((n,), -math.inf, device=hidden.device)
            total, weighted = (
                torch.zeros(n, device=hidden.device),
                torch.zeros(n, device=hidden.device),
            )
            target = torch.full((n,), -math.inf, device=hidden.device)
            for block in _blocks(weight.shape[0], cols):
                scaled = _block(hidden, head, block, temperature, keep, threshold)
                rows, column = _in_block(tokens, block)
                target[rows] = scaled[rows].gather(1, column).squeeze(1)
                new_peak = torch.maximum(peak, scaled.amax(-1))
                shift = torch.where(torch.isfinite(new_peak), new_peak, 0.0)
                rescale = torch.exp(peak - shift)
                exp = (scaled - shift[:, None]).exp_()  # 0 where excluded
                total = total * rescale + exp.sum(-1)
                if with_entropy:
                    finite = torch.where(torch.isfinite(scaled), scaled, 0.0)
                    weighted = weighted * rescale + torch.einsum("nv,nv->n", exp, finite)
                peak = new_peak
            lse = torch.where(torch.isfinite(peak), peak, 0.0) + total.log()
        entropy = lse - weighted / total if with_entropy else torch.empty(0)
        ctx.save_for_backward(hidden, weight, tokens, keep, lse, entropy, threshold)
        ctx.temperature, ctx.cols = temperature, cols
        return target - lse, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, tokens, keep, lse, entropy, threshold = ctx.saved_tensors
        t = ctx.temperature
        g = None if grad_logprobs is None else grad_logprobs.float() / t
        h = None if grad_entropy is None or grad_entropy.numel() == 0 else grad_entropy.float() / t
        grad_hidden = torch.zeros(hidden.shape, device=hidden.device)
        grad_weight = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        with torch.autocast(hidden.device.type, enabled=False):
            head = weight.to(hidden.dtype)
            for block in _blocks(weight.shape[0], ctx.cols):
                log_p = _block(hidden, head, block, t, keep, threshold).sub_(lse[:, None])
                grad = _block_grad(log_p, entropy, g, h, tokens, block).to(hidden.dtype)
                grad_hidden += grad @ head[block]
                if grad_weight is None:
                    continue
                if grad_weight.dtype == grad.dtype:  # written in place: no c×H temporary
                    torch.matmul(grad.T, hidden, out=grad_weight[block])
                else:
                    grad_weight[block] = grad.T @ hidden
        return grad_hidden.to(hidden.dtype), grad_weight, None, None, None, None, None, None


def default_chunk_cols(positions: int) -> int:
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(positions, 1))


def head_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    *,
    keep: torch.Tensor | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    with_entropy: bool = False,
    chunk_cols: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """hidden (B, T, H) last hidden states at the positions that predict `tokens` (B, T), weight
    (V, H) of a bias-free LM head, keep (B, T, V) bool or None → (log-probs (B, T) float32,
    entropy (B, T) float32 or None), as rlhf.ppo.logprobs.token_logprobs of hidden·weightᵀ.
    Matmuls in the hidden states' dtype with float32 accumulation, autocast off."""
    shape, n = tokens.shape, tokens.numel()
    flat_keep = None if keep is None else keep.reshape(n, -1)
    logprobs, entropy = _HeadLogprobs.apply(
        hidden.reshape(n, hidden.shape[-1]), weight, tokens.reshape(n), flat_keep,
        float(temperature), (int(top_k), float(top_p)), with_entropy,
        chunk_cols or default_chunk_cols(n),
    )  # fmt: skip
    return logprobs.view(shape), (entropy.view(shape) if with_entropy else None)
