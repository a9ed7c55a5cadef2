"""Manifold steering on the trained cyclic-world model (#20; Wurgaft et al. 2026): the circle tests against closed
forms, and steering along the concept manifold moves the model's answer through the world's arithmetic where the
straight line between the same endpoints skips the days in between."""

import math

import pytest
import torch

from assay.bench.lenses.manifold_steering import (
    ManifoldSteeringConfig,
    circle_frequency,
    circle_holdout,
    fit_circle,
    run_manifold_steering,
)
from assay.config import ConfigError


def test_circle_fit_and_holdout_closed_forms():
    theta = 2 * math.pi * torch.arange(7, dtype=torch.float64) / 7
    pts = torch.stack([3 + 2 * theta.cos(), -1 + 2 * theta.sin()], 1)
    centre, radius, r2 = fit_circle(pts)
    torch.testing.assert_close(centre, torch.tensor([3.0, -1.0], dtype=torch.float64))
    assert radius == pytest.approx(2.0) and r2 == pytest.approx(1.0)
    assert circle_holdout(pts)[0] == 1 and circle_holdout(pts)[1] < 1e-9 and circle_holdout(pts)[2] == 1.0
    freq3 = torch.stack([(3 * theta).cos(), (3 * theta).sin()], 1)
    assert circle_holdout(freq3)[:1] == (3,) and circle_holdout(freq3)[2] == 1.0
    def wrapped(a):
        return torch.atan2(a.sin(), a.cos()).tolist()  # angles as atan2 gives them

    assert circle_frequency(wrapped(3 * theta)) == 3 and circle_frequency(wrapped(-theta)) == 1
    assert circle_frequency([0.0, 2.0, 1.0, 3.0, 5.0, 4.0, 6.0]) is None


def test_steering_along_the_manifold_follows_the_arithmetic_and_the_line_does_not(assay_cache, tmp_path):
    r = run_manifold_steering(ManifoldSteeringConfig(seed=0, out_dir=tmp_path))
    assert r["model_accuracy"] == 1.0
    rows = {(x["path"], x["shift"]): x for x in r["rows"]}
    # measured (seed 0, blocks.1): manifold arithmetic 0.917 for every shift, monotone 1.0; the line 0.893 / 0.5 /
    # 0.333 for shifts 1 / 2 / 3 and monotone 0 from shift 2 (it jumps straight to a + j); both end on a + j
    for j in (1, 2, 3):
        assert rows[("manifold", j)]["endpoint"] == rows[("linear", j)]["endpoint"] == 1.0
        assert rows[("manifold", j)]["monotone"] >= 0.8
    for j in (2, 3):
        assert rows[("linear", j)]["monotone"] == 0.0
        assert rows[("manifold", j)]["arithmetic"] > rows[("linear", j)]["arithmetic"] + 0.3
    assert (tmp_path / "section.json").exists() and (tmp_path / "results.json").exists()
    with pytest.raises(ConfigError, match="n_points"):
        ManifoldSteeringConfig(n_points=1)
