"""benchmarks/circuit_transcoder_fidelity.py's transcoder Jacobian-vector product against finite differences of the
transcoder itself, and its error measure against a hand computation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from assay.dictionaries.registry import build_sae

_SPEC = importlib.util.spec_from_file_location(
    "bench_circuit_fidelity", Path(__file__).resolve().parents[1] / "benchmarks" / "circuit_transcoder_fidelity.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_the_transcoders_jacobian_vector_product_is_its_derivative():
    g = torch.Generator().manual_seed(0)
    for skip in (False, True):
        tc = build_sae("topk_transcoder", d_in=12, d_out=10, d_sae=40, k=5, skip=skip, seed=1).double()
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        x = torch.randn(32, 12, generator=g, dtype=torch.float64)
        v = torch.randn(32, 12, generator=g, dtype=torch.float64)
        eps = 1e-7
        with torch.no_grad():
            fd = (tc.transcode(x + eps * v) - tc.transcode(x)) / eps
            jv = bench._jacobian_vp(tc, x, v)
        assert torch.allclose(jv, fd, rtol=1e-5, atol=1e-6)
        assert jv.abs().max() > 0.1


def test_the_jacobian_error_is_zero_for_an_exact_copy_and_one_for_no_response():
    g = torch.Generator().manual_seed(2)
    tc = build_sae("topk_transcoder", d_in=6, d_out=6, d_sae=16, k=3, skip=True, seed=0).double()
    with torch.no_grad():
        for p in tc.parameters():
            p.zero_()
        tc.W_skip.copy_(torch.randn(6, 6, generator=g, dtype=torch.float64))
    x = torch.randn(20, 6, generator=g, dtype=torch.float64)
    v = torch.randn(8, 6, generator=g, dtype=torch.float64)
    linear = torch.nn.Linear(6, 6, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(tc.W_skip)
        _, same = bench._errors(tc, linear, x, linear(x), v)
        linear.weight.mul_(0).add_(torch.eye(6, dtype=torch.float64))
        tc.W_skip.zero_()
        _, none = bench._errors(tc, linear, x, linear(x), v)
    assert float(same) < 1e-20
    assert abs(float(none) - 1.0) < 1e-12
