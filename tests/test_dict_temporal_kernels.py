"""The temporal SAE's kernels (assay.dictionaries.temporal_kernels) against eager references, in values and
gradients: the dense and SDPA references, and the generic sparse kernels of assay.dictionaries.sparse."""

import dataclasses

import pytest
import torch

from assay.dictionaries.sparse import bag_dot, scatter_rows, sparse_decode, topk_encode
from assay.dictionaries.temporal import TemporalConfig, TemporalSAE
from assay.dictionaries.temporal_kernels import (
    centred_encode,
    context_values,
    context_values_reference,
    fit_past,
    novel_code,
    past_attention,
    past_attention_reference,
    past_prediction,
)

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = TemporalConfig(d_in=8, d_sae=16, k=3, n_heads=2, d_attn=6, context=3, seed=1)


def _f64(*shape, g, grad=True):
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)


def _same_grads(out, ref, inputs, up):
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad((out * up).sum(), inputs), torch.autograd.grad((ref * up).sum(), inputs)):
        torch.testing.assert_close(a, b)


def test_scatter_rows_with_flat_entries_and_their_rows_matches_a_loop():
    g = torch.Generator().manual_seed(4)
    idx = torch.stack([torch.randperm(10, generator=g)[:3] for _ in range(6)])
    idx[2, 0] = idx[1, 0]  # a latent hit by two rows; latent set is not all of 0..n−1 (empty bags)
    w, rows = torch.randn(6, 3, generator=g), torch.randn(6, 5, generator=g)
    ref = torch.zeros(12, 5)
    for b in range(6):
        for j in range(3):
            ref[idx[b, j]] += w[b, j] * rows[b]
    torch.testing.assert_close(scatter_rows(idx, w, rows, 12), ref)
    row_of = torch.arange(6).repeat_interleave(3).flip(0)  # flat entries with explicit rows
    torch.testing.assert_close(scatter_rows(idx.reshape(-1), w.reshape(-1), rows.flip(0), 12, row_of=row_of), ref)


def test_centred_encode_matches_topk_encode_in_values_and_gradients():
    g = torch.Generator().manual_seed(5)
    x, b, D = _f64(20, 6, g=g, grad=False), _f64(6, g=g), _f64(15, 6, g=g)
    x[0] = b.detach()  # a row with no positive pre-activation: the ReLU gate closes
    val, idx = centred_encode(x, b, D, 0.3, 4)
    rval, ridx = topk_encode(0.3 * (x - b), D.t(), torch.zeros(15, dtype=torch.float64), 4)
    assert torch.equal(idx, ridx) and (val == 0).any()  # the ReLU gate is exercised
    _same_grads(val, rval, [b, D], torch.randn(20, 4, generator=g, dtype=torch.float64))
    with pytest.raises(ValueError, match="no gradient to x"):
        centred_encode(x.requires_grad_(), b, D, 0.3, 4)


def test_fit_past_matches_the_eager_formula_in_values_and_gradients():
    g = torch.Generator().manual_seed(6)
    pred, x, b = _f64(7, 5, g=g), _f64(7, 5, g=g, grad=False), _f64(5, g=g)
    with torch.no_grad():
        pred[2] = 0  # a token with only the empty slot in its context: ẑD = 0
    fit, res, scale = fit_past(pred, x, b, 0.25)
    xc = x - b
    s_ref = (pred * xc).sum(-1, keepdim=True) / (pred.norm(dim=-1, keepdim=True) + 1e-6).square()
    torch.testing.assert_close(scale, s_ref.detach())
    up_f, up_r = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    out = (fit * up_f).sum() + (res * up_r).sum()
    ref = (s_ref * pred * up_f).sum() + (0.25 * (xc - s_ref * pred) * up_r).sum()
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out, [pred, b])
    for a, r in zip(grads, torch.autograd.grad(ref, [pred, b])):
        torch.testing.assert_close(a, r)
    assert torch.isfinite(grads[0]).all()


def test_novel_code_matches_topk_encode_then_sparse_decode():
    g = torch.Generator().manual_seed(7)
    inputs, D = _f64(9, 6, g=g, grad=False), _f64(14, 6, g=g)
    inputs[0] = 0  # a row with no positive pre-activation: the ReLU gate closes
    inputs.requires_grad_()
    out, val, idx = novel_code(inputs, D, 3)
    rval, ridx = topk_encode(inputs, D.t(), torch.zeros(14, dtype=torch.float64), 3)
    assert torch.equal(idx, ridx) and torch.equal(val, rval.detach()) and (val == 0).any()
    _same_grads(out, sparse_decode(rval, ridx, D), [inputs, D], torch.randn(9, 6, generator=g, dtype=torch.float64))


def test_context_values_match_the_dense_reference_in_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    D = torch.randn(12, 5, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(12, generator=g)[:4] for _ in range(2 * 6)])
    val = torch.rand(2 * 6, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    up = torch.randn(2, 6, 3, 5, generator=g, dtype=torch.float64)
    out = context_values(val, idx, D, 3, 2)
    ref = context_values_reference(val, idx, D, 3, 2)
    assert out.shape == (2, 6, 3, 5) and torch.equal(out[:, 0], torch.zeros(2, 3, 5, dtype=torch.float64))
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad((out * up).sum(), [val, D])
    for a, b in zip(grads, torch.autograd.grad((ref * up).sum(), [val, D])):
        torch.testing.assert_close(a, b)


def test_past_attention_matches_the_summed_sdpa_in_values_and_gradients():
    g = torch.Generator().manual_seed(3)
    B, H, T, dh, d = 2, 3, 11, 4, 5
    q, k = (torch.randn(B, H, T, dh, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(B, T, H, d, generator=g, dtype=torch.float64, requires_grad=True)
    sae = TemporalSAE(dataclasses.replace(CFG, context=4))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 0], mask[1, 3:5] = False, False
    allowed = sae._allowed(mask)  # past slots only, within the context, never a masked token
    up = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    for block in (1, 4, T):  # blocks of queries: one, a few with a ragged last one, the whole window
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("assay.dictionaries.temporal_kernels.ATTENTION_BLOCK", block)
            out = past_attention(q, k, v, allowed)
            grads = torch.autograd.grad((out * up).sum(), [q, k, v])
        ref = past_attention_reference(q, k, v, allowed)
        torch.testing.assert_close(out, ref)
        for a, b in zip(grads, torch.autograd.grad((ref * up).sum(), [q, k, v])):
            torch.testing.assert_close(a, b)


def test_past_prediction_in_chunks_of_windows_matches_one_piece():
    g = torch.Generator().manual_seed(8)
    B, T, H, n, d, k = 5, 6, 2, 12, 4, 3
    D = _f64(n, d, g=g)
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(B * T)])
    val = torch.rand(B * T, k, generator=g, dtype=torch.float64).requires_grad_(True)
    q, kk = _f64(B, H, T, 2, g=g), _f64(B, H, T, 2, g=g)
    allowed = TemporalSAE(dataclasses.replace(CFG, context=None))._allowed(torch.ones(B, T, dtype=torch.bool))
    window_bytes = T * H * d * 8
    for budget in (1, 2 * window_bytes, 10**9):  # one window a chunk; chunks of 2, 2 and 1 windows; one piece
        ref = past_attention(q, kk, context_values(val, idx, D, H, B), allowed)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("assay.dictionaries.temporal_kernels.VALUES_CHUNK_BYTES", budget)
            _same_grads(past_prediction(val, idx, D, q, kk, allowed), ref, [val, D, q, kk],
                        torch.randn(B, T, d, generator=g, dtype=torch.float64))


def test_bag_dot_paths_agree_with_a_loop():
    g = torch.Generator().manual_seed(2)
    D, vec = torch.randn(9, 4, generator=g), torch.randn(3, 4, generator=g)
    idx, crow = torch.tensor([1, 5, 0, 2, 2, 8]), torch.tensor([0, 2, 2, 6])  # bag 1 is empty
    ref = torch.tensor([float(D[i] @ vec[b]) for b in range(3) for i in idx[crow[b]:crow[b + 1]]])
    for sampled in (True, False):  # CSR sampled product (CPU default) and row gather (the GPU path)
        torch.testing.assert_close(bag_dot(idx, D, vec, crow, sampled=sampled), ref)
