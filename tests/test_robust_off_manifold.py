"""Off-manifold robustness and gradient alignment on worlds with a known tangent space."""

import math

import pytest
import torch

from assay.robustness.off_manifold import (
    gradient_manifold_alignment,
    on_off_robustness,
    pca_tangent,
    score_alignment,
    tangent_from_decoder,
)
from assay.worlds.base import make_generator
from assay.worlds.manifold import SubspaceManifoldConfig, SubspaceManifoldWorld

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, no spinning on shared cores

WORLD = SubspaceManifoldWorld(SubspaceManifoldConfig(d=12, r=2, noise_std=0.05, n_classes=4))
X = WORLD.sample(64, generator=make_generator(0)).inputs
A = WORLD.basis
W = torch.randn(3, 2, generator=make_generator(1))
Q, _ = torch.linalg.qr(torch.cat([A, torch.randn(12, 10, generator=make_generator(2))], 1))
A_PERP = Q[:, 2:]  # an orthonormal basis of the orthogonal complement


def on_model(x):  # reads only the manifold coordinates
    return (x @ A) @ W.T


def off_model(x):  # reads only off-manifold coordinates
    return (x @ A_PERP[:, :2]) @ W.T


def test_on_off_robustness_separates_models():
    on = on_off_robustness(on_model, X, A, [0.5, 2.0], generator=make_generator(3))
    off = on_off_robustness(off_model, X, WORLD.tangent(X), [0.5, 2.0], generator=make_generator(3))
    assert on.change_off.abs().max() < 1e-5 and (on.change_on > 1e-2).all()
    assert (on.ratio > 1e3).all()
    assert off.change_on.abs().max() < 1e-5 and (off.ratio < 1e-3).all()
    zero = on_off_robustness(on_model, X, A, [0.0], generator=make_generator(3))
    assert zero.change_on.item() == 0.0


def test_gradient_alignment_and_score_alignment():
    torch.testing.assert_close(gradient_manifold_alignment(on_model, X, A), torch.ones(64))
    assert gradient_manifold_alignment(off_model, X, A).abs().max() < 1e-5

    def log_density_model(x):  # logits whose sum is log p(x) up to a constant: gradient = score
        lp = -0.5 * (x @ A).pow(2).sum(1) / (1 + 0.05**2) - 0.5 * (x - x @ A @ A.T).pow(2).sum(1) / 0.05**2
        return torch.stack([lp, torch.zeros_like(lp)], 1)

    torch.testing.assert_close(score_alignment(log_density_model, X, WORLD.score(X)), torch.ones(64))


def test_tangent_from_decoder_and_pca_recover_the_subspace():
    def decoder(z):
        return torch.tanh(z) @ A.T * 2.0

    z = torch.randn(5, 2, generator=make_generator(4))
    T = tangent_from_decoder(decoder, z)
    for b in range(5):  # same subspace: projector equals A Aᵀ
        torch.testing.assert_close(T[b] @ T[b].T, A @ A.T, atol=1e-5, rtol=0)
    P = pca_tangent(WORLD.sample(500, generator=make_generator(5)).inputs, 2)
    # principal angles between span(P) and span(A) near zero
    cos = torch.linalg.svdvals(P.T @ A)
    assert cos.min().item() > math.cos(0.05)


def test_bad_input():
    with pytest.raises(ValueError, match="tangent must be"):
        on_off_robustness(on_model, X, torch.zeros(5, 2))
    with pytest.raises(ValueError, match="eps must be"):
        on_off_robustness(on_model, X, A, [-1.0])
    with pytest.raises(ValueError, match="at least 2 classes"):
        gradient_manifold_alignment(lambda x: x[:, :1], X, A)
