"""Sparse TopK kernels vs their eager dense references: values and gradients agree."""

import pytest
import torch

from assay.config import ConfigError
from assay.dictionaries.base import Codes
from assay.dictionaries.sparse import (
    gather_dot,
    scatter_rows,
    sparse_decode,
    sparse_decode_reference,
    to_dense,
    topk_encode,
    topk_encode_reference,
)
from assay.dictionaries.topk import TopKConfig, TopKSAE, topk_codes

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
"""The kernels have a CPU and a CUDA path; the eager dense reference is the check on both."""


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_topk_check_value():
    pre = torch.tensor([[1.0, -2, 3, -4], [-5, 6, -7, 8]])
    assert torch.equal(topk_codes(pre, 2), torch.tensor([[1.0, 0, 3, 0], [0, 6, 0, 8]]))


@pytest.mark.parametrize("device", DEVICES)
def test_scatter_rows_and_gather_dot_naive(device):
    g = _gen()
    idx = torch.randint(0, 7, (5, 3), generator=g)
    w = torch.randn(5, 3, generator=g)
    rows = torch.randn(5, 4, generator=g)
    table = torch.randn(7, 4, generator=g)
    ref = torch.zeros(7, 4)
    dots = torch.zeros(5, 3)
    for b in range(5):
        for j in range(3):
            ref[idx[b, j]] += w[b, j] * rows[b]
            dots[b, j] = table[idx[b, j]] @ rows[b]
    idx, w, rows, table = (t.to(device) for t in (idx, w, rows, table))
    torch.testing.assert_close(scatter_rows(idx, w, rows, 7).cpu(), ref)
    torch.testing.assert_close(gather_dot(idx, table, rows).cpu(), dots)


@pytest.mark.parametrize("device", DEVICES)
def test_topk_encode_matches_dense_values_and_grads(device):
    g = _gen(1)
    B, d, n, k = 16, 8, 32, 4
    x, W, b = (torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_()
               for shape in ((B, d), (d, n), (n,)))
    proj = torch.randn(n, generator=g, dtype=torch.float64).to(device)
    v, i = topk_encode(x, W, b, k)
    z = to_dense(v, i, n)
    z_ref = topk_encode_reference(x, W, b, k)
    torch.testing.assert_close(z, z_ref)
    ((z * proj).sum() + z.pow(2).sum()).backward()
    grads = [t.grad.clone() for t in (x, W, b)]
    for t in (x, W, b):
        t.grad = None
    ((z_ref * proj).sum() + z_ref.pow(2).sum()).backward()
    for got, t in zip(grads, (x, W, b)):
        torch.testing.assert_close(got, t.grad)
    assert torch.autograd.gradcheck(lambda x_, W_, b_: topk_encode(x_, W_, b_, k)[0], (x, W, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_needs_grad", [True, False])
def test_topk_encode_with_shift_matches_dense_values_and_grads(device, x_needs_grad):
    """``shift=`` (an SAE's b_dec) is subtracted inside the kernel; its gradient −W_enc·∂L/∂b_enc must equal
    autograd's through the dense reference on x − shift."""
    g = _gen(6)
    B, d, n, k = 16, 8, 32, 4
    x, W, b, s = (torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_()
                  for shape in ((B, d), (d, n), (n,), (d,)))
    x.requires_grad_(x_needs_grad)
    proj = torch.randn(n, generator=g, dtype=torch.float64).to(device)
    z = to_dense(*topk_encode(x, W, b, k, shift=s), n)
    z_ref = topk_encode_reference(x - s, W, b, k)
    torch.testing.assert_close(z, z_ref)
    leaves = (x, W, b, s) if x_needs_grad else (W, b, s)
    got = torch.autograd.grad((z * proj).sum() + z.pow(2).sum(), leaves)
    want = torch.autograd.grad((z_ref * proj).sum() + z_ref.pow(2).sum(), leaves)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r)
    # only the shift needs a gradient: the kernel must still produce it without W_enc's or b_enc's
    (gs,) = torch.autograd.grad(topk_encode(x.detach(), W.detach(), b.detach(), k, shift=s)[0].sum(), s)
    (rs,) = torch.autograd.grad(topk_encode_reference(x.detach() - s, W.detach(), b.detach(), k).sum(), s)
    torch.testing.assert_close(gs, rs)
    assert torch.autograd.gradcheck(lambda W_, b_, s_: topk_encode(x.detach(), W_, b_, k, shift=s_)[0], (W, b, s))


def test_topk_encode_shift_of_the_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"shift must have shape \[8\]"):
        topk_encode(torch.randn(4, 8), torch.randn(8, 16), torch.zeros(16), 2, shift=torch.zeros(4, 8))


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_decode_matches_dense_values_and_grads(device):
    g = _gen(2)
    B, d, n, k = 12, 6, 20, 3
    v = torch.rand(B, k, generator=g, dtype=torch.float64).to(device).requires_grad_()
    i = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(B)]).to(device)
    W = torch.randn(n, d, generator=g, dtype=torch.float64).to(device).requires_grad_()
    gy = torch.randn(B, d, generator=g, dtype=torch.float64).to(device)
    out = sparse_decode(v, i, W)
    ref = sparse_decode_reference(v, i, W)
    torch.testing.assert_close(out, ref)
    gv, gW = torch.autograd.grad(out, (v, W), gy)
    rv, rW = torch.autograd.grad(ref, (v, W), gy)
    torch.testing.assert_close(gv, rv)
    torch.testing.assert_close(gW, rW)
    assert torch.autograd.gradcheck(lambda v_, W_: sparse_decode(v_, i, W_), (v, W))


def test_sparse_and_dense_topk_sae_agree_through_training_loss():
    g = _gen(3)
    x = torch.randn(64, 16, generator=g)
    sparse = TopKSAE(TopKConfig(d_in=16, d_sae=64, k=5, seed=0))
    dense = TopKSAE(TopKConfig(d_in=16, d_sae=64, k=5, seed=0, sparse=False))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    a = sparse(x, dead=dead)
    b = dense(x, dead=dead)
    torch.testing.assert_close(a.recon, b.recon)
    torch.testing.assert_close(a.codes.dense(), b.codes.dense())
    torch.testing.assert_close(a.loss, b.loss)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name, atol=1e-5, rtol=1e-4)
    assert isinstance(a.codes, Codes) and a.aux_loss > 0


def test_k_larger_than_d_sae_is_a_clear_error():
    with pytest.raises(ConfigError, match="k must be in 1..d_sae"):
        TopKConfig(d_in=4, d_sae=8, k=9)


def test_chunked_cpu_encoder_matches_dense_values_and_grads(monkeypatch):
    import assay.dictionaries.sparse as sp

    monkeypatch.setattr(sp, "CHUNK_ROWS", 5)  # 16 rows → blocks of 5, 5, 5, 1
    g = _gen(4)
    B, d, n, k = 16, 8, 32, 4
    x = torch.randn(B, d, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(d, n, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, generator=g, dtype=torch.float64, requires_grad=True)
    v, i = topk_encode(x, W, b, k)
    z_ref = topk_encode_reference(x, W, b, k)
    torch.testing.assert_close(to_dense(v, i, n), z_ref)
    assert torch.autograd.gradcheck(lambda x_, W_, b_: topk_encode(x_, W_, b_, k)[0], (x, W, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_k_with_floor_is_torch_topk_including_inf_nan_and_ragged_shapes(dtype):
    """The CPU blocks take their top-k through a floor column block (:func:`_topk_with_floor`): the selected
    entries must be torch.topk's, for random rows, n not a multiple of k, k = 1 and k = n, and rows whose
    floor is −inf or NaN (the checked fallback)."""
    from assay.dictionaries.sparse import _topk_with_floor

    g = _gen(8)
    for n, k, odd in ((37, 5, True), (40, 8, True), (9, 1, True), (6, 6, True), (300, 16, False)):
        pre = torch.randn(24, n, generator=g, dtype=dtype)
        if odd:
            pre[3, : n - 2] = float("-inf")  # fewer than k finite entries when k > 2: −inf fills the top k
            pre[5] = float("-inf")
            pre[7, 0] = float("nan")  # NaN ranks first in torch.topk
            pre[8, n // 2] = float("inf")
        buf = torch.cat([torch.empty(24, k, dtype=dtype), pre], 1)
        values, indices = torch.empty(24, k, dtype=dtype), torch.empty(24, k, dtype=torch.long)
        _topk_with_floor(buf, k, (values, indices))
        ref_v, ref_i = pre.topk(k, dim=-1)
        torch.testing.assert_close(values.sort(-1, descending=True).values, ref_v, equal_nan=True)
        assert torch.equal(pre.gather(1, indices).nan_to_num(), values.nan_to_num())  # each value is its entry's
        assert all(len(set(r.tolist())) == k for r in indices)  # k distinct columns per row
        finite = torch.isfinite(pre).all(1)
        assert torch.equal(indices[finite].sort(-1).values, ref_i[finite].sort(-1).values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocked_encoder_selects_torch_topk_of_the_pre_activations(monkeypatch, dtype):
    import assay.dictionaries.sparse as sp

    monkeypatch.setattr(sp, "CHUNK_ROWS", 16)  # 50 rows: blocks of 16, 16, 16, 2
    g = _gen(9)
    B, d, n, k = 50, 12, 70, 6
    x, W, b = (torch.randn(*shape, generator=g, dtype=dtype) for shape in ((B, d), (d, n), (n,)))
    values, indices = sp._encode_topk(x, W, b, k)
    ref_v, ref_i = torch.addmm(b, x, W).topk(k, dim=-1)
    assert torch.equal(indices.sort(-1).values, ref_i.sort(-1).values)
    torch.testing.assert_close(values.sort(-1, descending=True).values, ref_v)


def test_top_k_floor_rejects_nothing_it_should_keep():
    """Planted: each row's k largest entries sit in one strided group, so the floor τ (the smallest group maximum)
    lies far below them; and rows where exactly k entries reach τ (ties at the floor) still come back whole."""
    from assay.dictionaries.sparse import _topk_with_floor

    k, n = 4, 32
    pre = torch.full((3, n), -1.0)
    pre[0, [0, 4, 8, 12]] = torch.tensor([5.0, 6, 7, 8])  # the top 4 all in group c = 0
    pre[1, :k] = 2.0  # every group maximum is 2.0, so τ = 2.0 and exactly k entries reach the floor (ties)
    pre[2] = torch.arange(n, dtype=torch.float32)  # the top k are the last group of columns
    buf = torch.cat([torch.empty(3, k), pre], 1)
    values, indices = torch.empty(3, k), torch.empty(3, k, dtype=torch.long)
    _topk_with_floor(buf, k, (values, indices))
    assert indices[0].sort().values.tolist() == [0, 4, 8, 12]
    assert indices[1].sort().values.tolist() == [0, 1, 2, 3]
    assert indices[2].sort().values.tolist() == [28, 29, 30, 31]
    assert torch.equal(values, pre.gather(1, indices))


def test_in_place_decoder_constraint_equals_the_pure_functions():
    from assay.dictionaries.base import remove_parallel_component, unit_rows

    sae = TopKSAE(TopKConfig(d_in=16, d_sae=64, k=4))
    g = _gen(5)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1, generator=g) + 0.5)  # rows of norm ≠ 1
    grad = torch.randn(64, 16, generator=g)
    sae.W_dec.grad = grad.clone()
    sae.before_step()
    torch.testing.assert_close(sae.W_dec.grad, remove_parallel_component(grad, sae.W_dec.detach()))
    assert (sae.W_dec.grad * sae.W_dec).sum(-1).abs().max() < 1e-5  # no component along the atoms is left
    w = sae.W_dec.detach().clone()
    sae.after_step()
    assert torch.equal(sae.W_dec.detach(), unit_rows(w))
