import pytest
import torch

from assay.config import ConfigError
from assay.models.toy_superposition import (
    ToySuperposition,
    ToySuperpositionConfig,
    feature_dimensionality,
    fit_toy_superposition,
    n_represented,
)
from assay.worlds.base import make_generator


def test_feature_dimensionality_hand_cases():
    # orthonormal features: one dimension each; an antipodal pair shares one dimension (1/2 each);
    # a pentagon of 5 unit vectors in 2-D: Σ_j cos²(2πk/5) = 5/2, so D = 2/5; a dead feature: 0
    eye = torch.eye(3)
    assert torch.allclose(feature_dimensionality(eye), torch.ones(3))
    pair = torch.tensor([[1.0, -1.0]])
    assert torch.allclose(feature_dimensionality(pair), torch.tensor([0.5, 0.5]))
    ang = torch.arange(5) * 2 * torch.pi / 5
    pent = torch.stack([ang.cos(), ang.sin()])
    assert torch.allclose(feature_dimensionality(pent), torch.full((5,), 0.4), atol=1e-6)
    dead = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(feature_dimensionality(dead), torch.tensor([1.0, 0.0]))
    # the sum of D_i over the columns of a pentagon equals the 2 dimensions it fills
    assert abs(float(feature_dimensionality(pent).sum()) - 2.0) < 1e-6
    assert n_represented(pent * 0.6) == 5 and n_represented(pent * 0.4) == 0


def test_forward_is_relu_of_wtwx_plus_b():
    m = ToySuperposition(6, 2, generator=make_generator(0))
    x = torch.rand(4, 6, generator=make_generator(1))
    W, b = m.W.detach(), m.b.detach()
    ref = torch.stack([torch.clamp(W.T @ (W @ xi) + b, min=0) for xi in x])
    assert torch.allclose(m(x).detach(), ref, atol=1e-6)


def test_impossible_sparsity_is_refused():
    with pytest.raises(ConfigError, match="sparsity"):
        ToySuperpositionConfig(sparsity=1.0)


def test_superposition_appears_as_sparsity_rises():
    """Elhage et al.'s phenomenon with n = 20 features, m = 5 hidden, importance 0.7^i, 1,000 Adam steps.
    Measured (seed 0): S = 0 → 5 features with ‖W_i‖ > 0.5 (norms 1.0 ×5, then ≤ 0.01: no superposition);
    S = 0.99 → 12 features (norms ≈ 1.0–1.14 for the 11 most important, 0.59 for the 12th)."""
    dense = fit_toy_superposition(ToySuperpositionConfig(sparsity=0.0, steps=1000)).W.detach()
    sparse = fit_toy_superposition(ToySuperpositionConfig(sparsity=0.99, steps=1000)).W.detach()
    assert n_represented(dense) == 5
    assert n_represented(sparse) >= 10 > 5  # more features than hidden dimensions
    # dense: the represented features are the 5 most important ones, each with its own dimension
    assert torch.equal(dense.norm(dim=0) > 0.5, torch.arange(20) < 5)
    assert torch.allclose(feature_dimensionality(dense)[:5], torch.ones(5), atol=0.05)
    # sparse: they share dimensions (D_i < 1) and the dimensionalities of the represented ones sum to ≤ m
    d = feature_dimensionality(sparse)[sparse.norm(dim=0) > 0.5]
    assert d.max() < 0.9 and d.sum() <= 5.0 + 1e-3
