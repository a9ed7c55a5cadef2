"""Analytic-density worlds: exact scores against autograd of the log density, tangent space, protocol."""

import pytest
import torch

from assay.config import ConfigError
from assay.worlds.base import World, make_generator
from assay.worlds.manifold import (
    GaussianMixtureConfig,
    GaussianMixtureWorld,
    SubspaceManifoldConfig,
    SubspaceManifoldWorld,
)


def test_gaussian_mixture_score_is_gradient_of_log_density():
    w = GaussianMixtureWorld(GaussianMixtureConfig(d=5, n_components=3, std=0.7))
    assert isinstance(w, World)
    b = w.sample(50, generator=make_generator(0))
    x = b.inputs.double().requires_grad_(True)
    (auto,) = torch.autograd.grad(w.log_density(x).sum(), x)
    torch.testing.assert_close(b.labels["score"].double(), auto, atol=1e-4, rtol=1e-4)
    # log density against torch.distributions
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(w.weights.double()),
        torch.distributions.Independent(torch.distributions.Normal(w.means.double(), 0.7), 1))
    torch.testing.assert_close(w.log_density(x.detach()), mix.log_prob(x.detach()))
    assert set(b.targets.tolist()) <= {0, 1, 2}


def test_subspace_manifold_tangent_and_score():
    cfg = SubspaceManifoldConfig(d=10, r=3, noise_std=0.1, n_classes=4)
    w = SubspaceManifoldWorld(cfg)
    assert isinstance(w, World)
    A = w.basis
    torch.testing.assert_close(A.T @ A, torch.eye(3), atol=1e-5, rtol=0)
    b = w.sample(2000, generator=make_generator(1))
    off = b.inputs - b.inputs @ A @ A.T
    assert off.pow(2).sum(1).mean().item() == pytest.approx(7 * 0.01, rel=0.1)  # (d − r)σ²
    torch.testing.assert_close(b.inputs @ A, b.labels["latent"], atol=0.5, rtol=0)
    cov = A @ A.T + 0.01 * torch.eye(10)
    dist = torch.distributions.MultivariateNormal(torch.zeros(10, dtype=torch.float64), cov.double())
    x = b.inputs[:20].double().requires_grad_(True)
    (auto,) = torch.autograd.grad(dist.log_prob(x).sum(), x)
    torch.testing.assert_close(w.score(x.detach()), auto, atol=1e-3, rtol=1e-3)  # A is float32
    assert sorted(set(b.targets.tolist())) == [0, 1, 2, 3]
    assert w.tangent(b.inputs[:4]).shape == (4, 10, 3)


def test_same_seed_same_batch_and_bad_config():
    w = SubspaceManifoldWorld(SubspaceManifoldConfig())
    a, b = w.sample(8, generator=make_generator(3)), w.sample(8, generator=make_generator(3))
    torch.testing.assert_close(a.inputs, b.inputs)
    with pytest.raises(ConfigError, match="1 <= r < d"):
        SubspaceManifoldConfig(d=4, r=4)
    with pytest.raises(ConfigError, match="noise_std"):
        SubspaceManifoldConfig(noise_std=0.0)
    with pytest.raises(ConfigError, match="n_components"):
        GaussianMixtureConfig(n_components=1)
