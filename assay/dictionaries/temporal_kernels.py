"""Kernels of the temporal SAE's training pass, each with a hand-written sparse backward and an eager reference.

Lubana et al. 2025, "Priors in Time: Missing Inductive Biases for Language Model Interpretability" (arXiv
2511.01836); the model is :mod:`assay.dictionaries.temporal`. Per window (tied dictionary D ∈ ℝ^{n×d}, bias b):

- :func:`centred_encode`: the context codes u = TopK_k(ReLU(λ (x − b) Dᵀ)). The input takes no gradient (the
  activations), so b's is λ (Σ per latent of the code gradient) D — an n-vector times D, not N × k rows.
- :func:`context_values`: the per-head partial decodes of the past codes (one ``embedding_bag``).
- :func:`past_attention`: causal attention of every head over those values as one slot-major product in
  blocks of queries (about half the work of the summed ``scaled_dot_product_attention``);
  :func:`past_prediction` runs both in chunks of windows (no value tensor of 32 MiB or more).
- :func:`fit_past`: the per-token scale s_t = ⟨ẑD, x⟩ / ‖ẑD‖² and the residual λ (x − s ẑD), in one node.
- :func:`novel_code`: the novel code's encoder and decoder in one node, whose two dictionary gradients share
  one sort of the indices.

Every dictionary gradient is a :func:`~assay.dictionaries.sparse.scatter_rows` (sort the entries by latent, one ``embedding_bag`` over
the rows): measured (one thread, 4096 × 32 entries, n = 4608, d = 576) 5.7 ms vs 10 ms for the COO sparse
product of :func:`assay.dictionaries.sparse.scatter_rows`, with no zero-filled n × d output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from assay.dictionaries.sparse import bag_dot, gather_dot, scatter_rows, to_dense, topk_encode

__all__ = ["context_values", "context_values_reference", "dense_context_values", "past_attention",
           "past_attention_reference", "past_prediction", "centred_encode", "fit_past", "novel_code",
           "ATTENTION_BLOCK", "VALUES_CHUNK_BYTES"]


class _Bags(torch.autograd.Function):
    """Σ of weighted dictionary rows per bag (an ``embedding_bag`` with offsets) with a sparse backward:
    ``grad_values`` by :func:`bag_dot`, ``grad_D`` by :func:`~assay.dictionaries.sparse.scatter_rows` — the kernels of
    :mod:`assay.dictionaries.sparse` with variable-size bags."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, D: Tensor, counts: Tensor):  # type: ignore[override]
        crow = F.pad(counts.cumsum(0), (1, 0))
        ctx.save_for_backward(values, indices, D, crow)
        return F.embedding_bag(indices, D, crow[:-1], per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        values, indices, D, crow = ctx.saved_tensors
        grad_values = grad_D = None
        if ctx.needs_input_grad[0]:
            grad_values = bag_dot(indices, D, grad_out, crow)
        if ctx.needs_input_grad[2]:
            bag_of = torch.repeat_interleave(torch.arange(grad_out.shape[0], device=D.device), crow.diff())
            grad_D = scatter_rows(indices, values, grad_out, D.shape[0], row_of=bag_of)
        return grad_values, None, grad_D, None


def context_values(values: Tensor, indices: Tensor, D: Tensor, heads: int, windows: int) -> Tensor:
    """The attention's values ``[B, T, H, d]`` (slot-major): slot j of head h holds token j − 1's partial decode
    Σ_{m: head(indices[m]) = h} values[m] D[indices[m]] (head h owns latents [h·n/H, (h+1)·n/H)); slot 0 is empty.

    ``values``/``indices`` ``[B·T, k]`` are each token's code. The entries are ordered by (window, slot, head)
    and decoded as one ``embedding_bag`` with one bag per (slot, head), written straight into the attention's
    layout: forward and backward cost what one sparse decode of the window costs."""
    N, k = indices.shape
    T = N // windows
    n = D.shape[0]
    head_of = torch.div(indices, n // heads, rounding_mode="floor").view(windows, T, k)
    t = torch.arange(T, device=indices.device).view(1, T, 1)
    slot = (torch.arange(windows, device=indices.device).view(-1, 1, 1) * T + t + 1) * heads + head_of
    keep = (t < T - 1).expand_as(slot).reshape(-1)  # the last token is no one's context
    slot = slot.reshape(-1)[keep]
    slot, order = slot.sort(stable=True)
    counts = torch.bincount(slot, minlength=windows * T * heads)
    out = _Bags.apply(values.reshape(-1)[keep][order], indices.reshape(-1)[keep][order], D, counts)
    return out.view(windows, T, heads, D.shape[1])


def dense_context_values(u: Tensor, D: Tensor, heads: int, windows: int) -> Tensor:
    """The attention's values ``[B, T, H, d]`` from dense codes ``u [B·T, n]`` by plain autograd: slot j of head h
    is Σ_{i ∈ head h} u_{j−1}[i] D[i], slot 0 empty (the reference's dense context code, and the eager reference of
    :func:`context_values`)."""
    n, d = D.shape
    ctx = F.pad(u.view(windows, -1, n)[:, :-1], (0, 0, 1, 0))
    return torch.einsum("btha,had->bthd", ctx.view(windows, -1, heads, n // heads), D.view(heads, n // heads, d))


def context_values_reference(values: Tensor, indices: Tensor, D: Tensor, heads: int, windows: int) -> Tensor:
    """Eager dense reference of :func:`context_values`: dense codes shifted by one token, per head times D."""
    return dense_context_values(to_dense(values, indices, D.shape[0]), D, heads, windows)


ATTENTION_BLOCK = 32
"""Queries per block of :func:`past_attention`: block [t0, t1) reads only the slots before t1, which skips
3/8 of the T × T square (the future) at T = 128. Measured (one thread, T = 128, 4 heads, d = 576): forward
and backward ≈ 95 ms vs ≈ 175 ms for the summed ``scaled_dot_product_attention``; blocks of 16 or 64 were no
faster."""


class _PastAttention(torch.autograd.Function):
    """Forward and backward of :func:`past_attention` by hand: the heads' weights laid out slot-major
    ``[B, T, T·H]`` so that all heads are one product with the values, in causal blocks of queries."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, values: Tensor, allowed: Tensor):  # type: ignore[override]
        B, H, T, dh = q.shape
        with torch.autocast(q.device.type, enabled=False):  # one dtype throughout: the values' (products with out=)
            q, k = q.to(values.dtype), k.to(values.dtype)
            logits = (q @ k.transpose(-1, -2)).mul_(1 / math.sqrt(dh)).masked_fill_(~allowed, float("-inf"))
            a = logits.softmax(-1).permute(0, 2, 3, 1).reshape(B, T, T * H)  # [b, query, slot·H + head]
            v = values.reshape(B, T * H, -1)
            out = v.new_empty(B, T, v.shape[-1])
            for t0 in range(0, T, ATTENTION_BLOCK):
                t1 = min(t0 + ATTENTION_BLOCK, T)
                torch.bmm(a[:, t0:t1, : t1 * H], v[:, : t1 * H], out=out[:, t0:t1])
        ctx.save_for_backward(q, k, v, a)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q, k, v, a = ctx.saved_tensors
        B, H, T, dh = q.shape
        grad_out = grad_out.to(v.dtype).contiguous()
        grad_a = torch.zeros_like(a)
        grad_v = torch.empty_like(v)
        for t0 in range(0, T, ATTENTION_BLOCK):
            t1 = min(t0 + ATTENTION_BLOCK, T)
            torch.bmm(grad_out[:, t0:t1], v[:, : t1 * H].transpose(1, 2), out=grad_a[:, t0:t1, : t1 * H])
            # slots [t0, t1) are read by the queries t ≥ t0 only
            torch.bmm(a[:, t0:, t0 * H : t1 * H].transpose(1, 2), grad_out[:, t0:], out=grad_v[:, t0 * H : t1 * H])
        # softmax backward in place on grad_a: a ⊙ (∂a − Σ_j a ∂a), per query and head
        a4, g4 = a.view(B, T, T, H), grad_a.view(B, T, T, H)
        g4.sub_(torch.linalg.vecdot(a4, g4, dim=2).unsqueeze(2)).mul_(a4)
        grad_logits = g4.permute(0, 3, 1, 2).contiguous()
        c = 1 / math.sqrt(dh)
        return ((grad_logits @ k).mul_(c), (grad_logits.transpose(-1, -2) @ q).mul_(c), grad_v.view(B, T, H, -1),
                None)


def past_attention(q: Tensor, k: Tensor, values: Tensor, allowed: Tensor) -> Tensor:
    """``out[b, t] = Σ_h Σ_j a^h_tj values[b, j, h]`` → ``[B, T, d]``, with a^h_t = softmax_j(q^h_t · k^h_j / √dh)
    over the slots ``allowed[b, 0, t]`` (which must be j ≤ t — a slot after the query is skipped, not masked — and
    hold at least one slot per query).

    ``q``, ``k`` ``[B, H, T, dh]``, ``values`` ``[B, T, H, d]`` (slot-major, :func:`context_values`). The sum over
    heads of ``scaled_dot_product_attention`` (:func:`past_attention_reference`), in about half its work."""
    return _PastAttention.apply(q, k, values, allowed)


def past_attention_reference(q: Tensor, k: Tensor, values: Tensor, allowed: Tensor) -> Tensor:
    """Eager reference of :func:`past_attention`: ``scaled_dot_product_attention`` per head, summed over heads."""
    return F.scaled_dot_product_attention(q, k, values.transpose(1, 2), attn_mask=allowed).sum(1)


VALUES_CHUNK_BYTES = 24 << 20
"""Most bytes of attention values (and of their gradient) :func:`past_prediction` builds at once. glibc's
malloc serves blocks of 32 MiB and more by a fresh ``mmap`` each time, whose pages then fault in one by one;
smaller blocks are reused from the heap. Measured (one thread, 32 windows of 128 tokens, 4 heads, d = 576,
values 37.7 MB in one piece): values and attention, forward and backward, 126–130 ms in two chunks of 16
windows vs 154–179 ms in one."""


def past_prediction(values: Tensor, indices: Tensor, D: Tensor, q: Tensor, k: Tensor, allowed: Tensor) -> Tensor:
    """ẑD per token ``[B, T, d]``: :func:`past_attention` over the :func:`context_values` of the codes
    ``values``/``indices`` ``[B·T, k]``, with ``q``, ``k`` ``[B, H, T, dh]`` and ``allowed`` ``[B, 1, T, T]``,
    in chunks of whole windows of at most :data:`VALUES_CHUNK_BYTES` of values."""
    B, H, T, _ = q.shape
    per_window = T * H * D.shape[1] * D.element_size()
    chunks = max(1, -(-B * per_window // VALUES_CHUNK_BYTES))
    size = -(-B // chunks)
    out = []
    for w0 in range(0, B, size):
        w1 = min(w0 + size, B)
        v = context_values(values[w0 * T : w1 * T], indices[w0 * T : w1 * T], D, H, w1 - w0)
        out.append(past_attention(q[w0:w1], k[w0:w1], v, allowed[w0:w1]))
    return out[0] if len(out) == 1 else torch.cat(out)


class _CentredEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, b: Tensor, D: Tensor, lam: float, k: int):  # type: ignore[override]
        inputs = torch.sub(x, b).mul_(lam)  # λ (x − b), the encoder's input and the rows of D's gradient
        values, indices = topk_encode(inputs, D.t(), D.new_zeros(D.shape[0]), k)  # forward only: no graph here
        ctx.save_for_backward(inputs, D, values, indices)
        ctx.lam = lam
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, grad_indices: Tensor | None):  # type: ignore[override]
        inputs, D, values, indices = ctx.saved_tensors
        g = grad_values * (values > 0)  # ReLU gate
        grad_b = grad_D = None
        if ctx.needs_input_grad[1]:  # pre_bi = λ ⟨x_b − b, D_i⟩: Σ_b ∂/∂b = −λ Σ_i (Σ_b g_bi) D_i
            per_latent = g.new_zeros(D.shape[0]).index_add_(0, indices.reshape(-1), g.reshape(-1))
            grad_b = -ctx.lam * (per_latent @ D)
        if ctx.needs_input_grad[2]:
            grad_D = scatter_rows(indices, g, inputs, D.shape[0])
        return None, grad_b, grad_D, None, None


def centred_encode(x: Tensor, b: Tensor, D: Tensor, lam: float, k: int) -> tuple[Tensor, Tensor]:
    """TopK_k(ReLU(λ (x − b) Dᵀ)) as ``(values [N, k], indices [N, k])`` for a tied dictionary ``D [n, d]``;
    ``x [N, d]`` takes no gradient, ``b [d]`` and ``D`` do. Equal to ``topk_encode(λ (x − b), Dᵀ, 0, k)``
    (:func:`assay.dictionaries.sparse.topk_encode`) in values and gradients, without its ``[N, d]`` input
    gradient."""
    if x.requires_grad:
        raise ValueError("centred_encode gives no gradient to x (the activations); detach it, or use "
                         "assay.dictionaries.sparse.topk_encode when x needs one")
    return _CentredEncode.apply(x, b, D, lam, k)


class _FitPast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred: Tensor, x: Tensor, b: Tensor, lam: float):  # type: ignore[override]
        xc = x - b
        norm = pred.norm(dim=-1, keepdim=True)
        den = (norm + 1e-6).square()
        scale = torch.linalg.vecdot(pred, xc).unsqueeze(-1) / den
        fit = scale * pred
        residual = torch.sub(xc, fit).mul_(lam)
        ctx.save_for_backward(pred, xc, norm, den, scale)
        ctx.lam = lam
        ctx.mark_non_differentiable(scale)
        return fit, residual, scale

    @staticmethod
    def backward(ctx, grad_fit: Tensor, grad_residual: Tensor, grad_scale: Tensor | None):  # type: ignore[override]
        # in place on one [N, d] temporary: a fresh one costs as much as the arithmetic (page faults)
        pred, xc, norm, den, scale = ctx.saved_tensors
        lam = ctx.lam
        g = torch.sub(grad_fit, grad_residual, alpha=lam)  # total gradient of the fit s·pred
        ds_den = torch.linalg.vecdot(g, pred).unsqueeze(-1) / den
        # ∂s/∂pred = xc/den − 2 s/((‖pred‖ + ε) ‖pred‖) pred  (0 where pred = 0, as autograd's norm)
        along = torch.where(norm > 0, 2 * scale * ds_den * den / ((norm + 1e-6) * norm), torch.zeros_like(norm))
        grad_pred = g.mul_(scale).addcmul_(xc, ds_den).addcmul_(pred, along, value=-1)
        grad_b = None
        if ctx.needs_input_grad[2]:  # xc = x − b enters the residual and ⟨pred, xc⟩
            grad_b = -(lam * grad_residual.sum(0) + ds_den.squeeze(-1) @ pred)
        return grad_pred, None, grad_b, None


def fit_past(pred: Tensor, x: Tensor, b: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """The predictable reconstruction and the novel encoder's input, per token of ``pred [N, d]`` (ẑD) and
    ``x [N, d]`` (no gradient): ``(s·pred, λ (x − b − s·pred), s [N, 1])`` with
    s = ⟨pred, x − b⟩ / (‖pred‖ + 10⁻⁶)² (s takes no gradient of its own; the first two carry it). One node with
    a hand-written backward in place of eight elementwise ones."""
    if x.requires_grad:
        raise ValueError("fit_past gives no gradient to x (the activations); detach it")
    return _FitPast.apply(pred, x, b, lam)


class _NovelCode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: Tensor, D: Tensor, k: int):  # type: ignore[override]
        values, indices = topk_encode(inputs, D.t(), D.new_zeros(D.shape[0]), k)  # forward only: no graph here
        ctx.save_for_backward(inputs, D, values, indices)
        ctx.mark_non_differentiable(values, indices)
        return F.embedding_bag(indices, D, per_sample_weights=values, mode="sum"), values, indices

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_values: Tensor | None, grad_indices: Tensor | None):  # type: ignore[override]
        inputs, D, values, indices = ctx.saved_tensors
        g = gather_dot(indices, D, grad_out) * (values > 0)  # the code's gradient, ReLU-gated
        grad_inputs = F.embedding_bag(indices, D, per_sample_weights=g, mode="sum") if ctx.needs_input_grad[0] else None
        grad_D = None
        if ctx.needs_input_grad[1]:  # decoder (rows grad_out) and encoder (rows inputs) terms, one sort
            n, k = D.shape[0], indices.shape[1]
            flat, order = indices.reshape(-1).sort()
            offsets = F.pad(torch.bincount(flat, minlength=n).cumsum(0), (1, 0))[:-1]
            row = torch.div(order, k, rounding_mode="floor")
            grad_D = F.embedding_bag(row, grad_out.contiguous(), offsets, per_sample_weights=values.reshape(-1)[order], mode="sum")
            grad_D += F.embedding_bag(row, inputs, offsets, per_sample_weights=g.reshape(-1)[order], mode="sum")
        return grad_inputs, grad_D, None


def novel_code(inputs: Tensor, D: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """z = TopK_k(ReLU(inputs Dᵀ)) and its decode z D for a tied dictionary ``D [n, d]``: ``(z D [N, d], values,
    indices)`` (``[N, k]``; the code itself takes no gradient, only its decode). Equal in values and gradients
    to ``sparse_decode(*topk_encode(inputs, Dᵀ, 0, k), D)`` (:mod:`assay.dictionaries.sparse`)."""
    return _NovelCode.apply(inputs, D, k)

