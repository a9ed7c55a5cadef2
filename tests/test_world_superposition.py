import math

import numpy as np
import pytest
import torch

from assay.config import ConfigError
from assay.worlds.base import World, make_generator
from assay.worlds.superposition import (
    SuperpositionConfig,
    SuperpositionWorld,
    firing_probabilities,
    pair_joint,
)


def test_zipf_check_values():
    p = firing_probabilities(SuperpositionConfig(n_features=4, d_model=2))
    assert torch.allclose(p, torch.tensor([0.3, 0.106667, 0.042222, 0.01], dtype=torch.float64), atol=1e-6)
    assert abs(p.sum().item() - 0.458889) < 1e-6


def test_sample_is_the_planted_mixture_and_seeded():
    w = SuperpositionWorld(SuperpositionConfig(n_features=32, d_model=8))
    assert isinstance(w, World)
    assert torch.allclose(w.directions.norm(dim=1), torch.ones(32))
    b = w.sample(4000, generator=make_generator(0))
    assert torch.allclose(b.inputs, b.labels["acts"] @ w.directions, atol=1e-6)
    freq = b.labels["active"].float().mean(0).double()
    assert torch.allclose(freq, w.probabilities, atol=0.03)
    b2 = w.sample(4000, generator=make_generator(0))
    assert torch.equal(b.inputs, b2.inputs)
    assert not torch.equal(b.inputs, w.sample(4000, generator=make_generator(1)).inputs)


@pytest.mark.parametrize("sampling", ["one_parent", "independent"])
def test_hierarchy_constraints(sampling):
    cfg = SuperpositionConfig(n_features=20, d_model=10, hierarchy=(3, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0),
                              profile="constant", p_max=0.5, hierarchy_sampling=sampling)
    w = SuperpositionWorld(cfg)
    a = w.sample(2000, generator=make_generator(0)).labels["active"]
    for parent, kids in ((0, slice(1, 4)), (4, slice(5, 8)), (8, slice(9, 12))):
        assert not (a[:, kids].any(1) & ~a[:, parent]).any()  # child only with parent
        assert (a[:, kids].sum(1) <= 1).all()  # siblings exclusive
        assert a[:, kids].any(1).float().mean() > (0.1 if sampling == "independent" else 0.03)  # (1/11 · 0.5)


def test_one_parent_sampler_is_the_papers_toy():
    """MP-SAE / Matryoshka toy: 20 concepts, 11 roots of which 3 have 3 children; exactly one root per sample
    (here uniform: constant profile), plus one of its children (uniform) with probability 0.5."""
    cfg = SuperpositionConfig(n_features=20, d_model=10, hierarchy=(3, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0),
                              profile="constant", p_max=0.5)
    w = SuperpositionWorld(cfg)
    n = 40_000
    a = w.sample(n, generator=make_generator(0)).labels["active"]
    roots = torch.tensor([0, 4, 8, *range(12, 20)])
    assert (a[:, roots].sum(1) == 1).all()  # one root per sample
    assert (a.sum(1) <= 2).all()
    freq = a[:, roots].float().mean(0)
    assert torch.allclose(freq, torch.full((11,), 1 / 11), atol=0.01)  # ∝ p (equal here)
    for parent in (0, 4, 8):
        kids = a[:, parent + 1: parent + 4]
        on = a[:, parent]
        assert abs(kids[on].any(1).float().mean().item() - 0.5) < 0.03  # child_probability
        assert torch.allclose(kids[on].float().mean(0), torch.full((3,), 0.5 / 3), atol=0.02)  # uniform child
        assert not (kids.any(1) & ~on).any()
    assert not (a[:, roots[3:]].any(1) & (a.sum(1) > 1)).any()  # roots without children come alone


def test_target_cosine_lowers_interference():
    base = SuperpositionWorld(SuperpositionConfig(n_features=16, d_model=8))
    opt = SuperpositionWorld(SuperpositionConfig(n_features=16, d_model=8, target_cosine=0.0))
    off = ~torch.eye(16, dtype=torch.bool)
    assert (opt.directions @ opt.directions.T)[off].abs().mean() < (base.directions @ base.directions.T)[off].abs().mean()


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(n_features=-1), "positive"), (dict(p_min=0.5, p_max=0.1), "p_min"),
     (dict(n_features=8, d_model=16, profile="constant", p_max=1.0), None),
     (dict(n_features=16, d_model=8, profile="constant", p_max=1.0), "sparsity 0"),
     (dict(n_features=5, hierarchy=(1, 1)), "lays out")],
)
def test_bad_configs(kwargs, match):
    if match is None:
        SuperpositionConfig(**kwargs)
        return
    with pytest.raises(ConfigError, match=match):
        SuperpositionConfig(**kwargs)


def _se(p, n):
    return math.sqrt(p * (1 - p) / n)


def test_uniform_magnitude_range_per_feature_probabilities_and_correlated_pairs_match_closed_forms():
    """200k rows: marginals, joints and correlations against their closed forms, within 5 binomial SEs."""
    probs = (0.3, 0.1, 0.05, 0.2, 0.5, 0.02)
    pairs = ((0, 1, 0.4), (2, 3, -0.1), (4, 5, 0.1))
    cfg = SuperpositionConfig(n_features=6, d_model=4, probabilities=probs, magnitude_range=(0.5, 2.0),
                              correlated_pairs=pairs)
    world = SuperpositionWorld(cfg)
    assert world.probabilities.tolist() == list(probs)
    n = 200_000
    b = world.sample(n, generator=make_generator(0))
    on = b.labels["active"].double()
    for k, p in enumerate(probs):
        assert abs(on[:, k].mean().item() - p) < 5 * _se(p, n), k
    for i, j, rho in pairs:
        pi, pj = probs[i], probs[j]
        p11 = pi * pj + rho * math.sqrt(pi * (1 - pi) * pj * (1 - pj))
        assert pair_joint(pi, pj, rho) == pytest.approx(p11)
        assert abs((on[:, i] * on[:, j]).mean().item() - p11) < 5 * _se(p11, n)
        r = np.corrcoef(on[:, i].numpy(), on[:, j].numpy())[0, 1]
        assert abs(r - rho) < 5 / math.sqrt(n) * 1.5, (i, j, r)
    # features in different pairs stay independent
    assert abs((on[:, 0] * on[:, 4]).mean().item() - 0.3 * 0.5) < 5 * _se(0.15, n)
    # magnitudes: U[0.5, 2] — range, mean (lo+hi)/2 and variance (hi-lo)²/12
    mags = b.labels["acts"][b.labels["active"]].double()
    assert mags.min() >= 0.5 and mags.max() <= 2.0
    m = mags.numel()
    assert abs(mags.mean().item() - 1.25) < 5 * math.sqrt(1.5**2 / 12 / m)
    assert mags.var().item() == pytest.approx(1.5**2 / 12, rel=0.02)
    # the default range is still U[0, 1], the same draws as before the option existed
    default = SuperpositionWorld(SuperpositionConfig(n_features=6, d_model=4, probabilities=probs))
    same = SuperpositionWorld(SuperpositionConfig(n_features=6, d_model=4, probabilities=probs,
                                                  magnitude_range=(0.0, 1.0)))
    assert torch.equal(default.sample(100, generator=make_generator(1)).inputs,
                       same.sample(100, generator=make_generator(1)).inputs)


@pytest.mark.parametrize("kwargs, match", [
    ({"probabilities": (0.1, 0.2)}, "probabilities has 2 values"),
    ({"probabilities": (0.1, 0.2, 1.5, 0.1)}, "must lie in"),
    ({"magnitude_range": (2.0, 1.0)}, "magnitude_range"),
    ({"probabilities": (0.1, 0.2, 0.3, 0.4), "correlated_pairs": ((0, 1, 0.9),)}, "falls outside"),
    ({"correlated_pairs": ((0, 1, 0.1), (1, 2, 0.1))}, "at most one pair"),
    ({"correlated_pairs": ((0, 0, 0.1),)}, "distinct"),
    ({"correlated_pairs": ((0, 1, 0.1),), "hierarchy": (1, 1)}, "hierarchy"),
])
def test_new_option_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SuperpositionConfig(n_features=4, d_model=2, **kwargs)
