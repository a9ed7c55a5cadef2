"""Representation shattering R(D*) and the ring score against planted geometry (Nishi et al. 2025)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform

from assay.evaluate.shattering import pairwise_distances, ring_score, shattering


def _circle(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    """n points on a unit circle, embedded in d dimensions by a random rotation."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    plane = torch.stack([angle.cos(), angle.sin()], 1)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return plane @ Q[:2]


def test_pairwise_distances_match_scipy():
    H = torch.randn(7, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = squareform(pdist(H.numpy()))
    np.testing.assert_allclose(pairwise_distances(H).numpy(), ref, atol=1e-12)


def test_spec_check_value_moving_one_entity_to_the_origin():
    before = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    after = before.clone()
    after[0] = 0
    assert shattering(before, after) == pytest.approx(0.289735, abs=1e-6)
    assert shattering(before, before) == 0.0
    # the other three entities did not move: restricted to them nothing shattered
    assert shattering(before, after, keep=torch.tensor([False, True, True, True])) == pytest.approx(0.0, abs=1e-12)


def test_isometry_is_no_shattering_but_scrambling_the_circle_is():
    H = _circle(32)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    assert shattering(H, H @ Q + 5.0) == pytest.approx(0.0, abs=1e-10)
    scrambled = H[torch.randperm(32, generator=torch.Generator().manual_seed(4))]
    # every distance of a random re-assignment of circle points changes: R is of order 1 (measured 0.56)
    assert shattering(H, scrambled) > 0.4


def test_scale_free_ignores_a_global_rescaling():
    H = _circle(16)
    assert shattering(H, 2 * H) == pytest.approx(1.0, abs=1e-12)  # every distance doubled
    assert shattering(H, 2 * H, scale_free=True) == pytest.approx(0.0, abs=1e-12)


def test_ring_score_is_one_on_a_circle_in_either_direction_and_low_when_scrambled():
    n = 64
    H = _circle(n, d=16)
    H = H + 0.01 * torch.randn(H.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    idx = torch.arange(n)
    assert ring_score(H, idx) == pytest.approx(1.0, abs=1e-12)
    assert ring_score(H, (n - idx) % n) == pytest.approx(1.0, abs=1e-12)  # anticlockwise
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(6))
    assert ring_score(H, perm) < 0.4  # measured 0.23 (≈ 1/√n = 0.125 expected for a random order)


def test_clear_errors():
    with pytest.raises(ValueError, match="same entities"):
        shattering(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="undefined"):
        shattering(torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="N >= 3"):
        ring_score(torch.zeros(2, 2), torch.arange(2))
