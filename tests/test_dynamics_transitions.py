"""Transition detection (assay.dynamics.transitions) against closed forms and planted noisy sigmoids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from assay.dynamics.transitions import (
    first_stays_above,
    fit_transition,
    loss_plateaus,
    normalise,
    normalise_loss,
    running_median,
    sigmoid_times,
)

STEPS = np.unique(np.round(np.geomspace(1, 10_000, 60)))


def _sigmoid(t, t0, w, a=0.0, b=1.0):
    return a + (b - a) / (1 + np.exp(-(np.log(t) - math.log(t0)) / w))


def test_sigmoid_times_closed_form():
    # spec check: t₀ = 1000, w = 0.25 → t₁₀ = 577.350, t₉₀ = 1732.051, Δ = 0.477; w = 0.5 → Δ = 0.954
    t0, t10, t90, width = sigmoid_times(math.log(1000), 0.25)
    assert (t0, t10, t90, width) == pytest.approx((1000, 577.350, 1732.051, 0.477), abs=1e-3)
    assert sigmoid_times(math.log(1000), 0.5)[3] == pytest.approx(0.954, abs=1e-3)


def test_noiseless_sigmoid_is_fitted_exactly():
    tr = fit_transition(STEPS, _sigmoid(STEPS, 1000, 0.25, 0.1, 0.9))
    assert tr.t0 == pytest.approx(1000, rel=1e-3)
    assert tr.t10 == pytest.approx(577.350, rel=1e-3) and tr.t90 == pytest.approx(1732.051, rel=1e-3)
    assert (tr.low, tr.high) == pytest.approx((0.1, 0.9), abs=1e-4)
    assert tr.abrupt


@pytest.mark.parametrize("t0", [60.0, 400.0, 2500.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_noisy_sigmoids_are_recovered(t0, seed):
    rng = np.random.default_rng(seed)
    clean = _sigmoid(STEPS, t0, 0.15)
    noisy = clean + rng.normal(0, 0.05, STEPS.size)
    noisy[rng.integers(0, STEPS.size // 3)] += 0.6  # one spike on the plateau: not an onset
    tr = fit_transition(STEPS, noisy)
    assert tr.abrupt
    assert abs(math.log(tr.t0 / t0)) < 0.15  # within 15% of the planted midpoint (measured worst of 100: 7%)
    assert tr.width_decades == pytest.approx(0.15 * 2 * math.log(9) / math.log(10), abs=0.1)
    assert tr.t10_observed >= 0.5 * t0 * 9**-0.15  # the spike did not count as an onset


@pytest.mark.parametrize("seed", range(10))  # measured over 100 seeds: no false positive on any of the three
def test_no_transition_on_noisy_ramp_or_flat_curve(seed):
    rng = np.random.default_rng(seed)
    u = np.log(STEPS)
    ramp = (u - u[0]) / (u[-1] - u[0]) + rng.normal(0, 0.05, STEPS.size)  # linear on the log axis
    assert not fit_transition(STEPS, ramp).abrupt
    linear_in_t = STEPS / STEPS[-1] + rng.normal(0, 0.05, STEPS.size)  # linear in steps
    assert not fit_transition(STEPS, linear_in_t).abrupt
    flat = 0.3 + rng.normal(0, 0.05, STEPS.size)
    assert not fit_transition(STEPS, flat).abrupt
    constant = fit_transition(STEPS, np.full(STEPS.size, 0.7))
    assert not constant.abrupt and math.isnan(constant.t0) and constant.low == pytest.approx(constant.high)


def test_helpers_against_naive_references():
    assert normalise([0.1, 0.55, 1.0], chance=0.1, target=1.0) == pytest.approx([0, 0.5, 1])
    assert normalise_loss([2.0, 1.0, 0.5], floor=0.5) == pytest.approx([0, 2 / 3, 1])
    assert running_median([0, 9, 0, 1, 2, 3]).tolist() == [0, 0, 1, 1, 2, 3]
    assert first_stays_above([1, 2, 3, 4, 5], [0, 0.95, 0.2, 0.95, 1.0], 0.9) == 4  # the spike at 2 is not it
    assert math.isnan(first_stays_above([1, 2], [1.0, 0.0], 0.5))
    with pytest.raises(ValueError, match="target and chance"):
        normalise([1.0], chance=0.5, target=0.5)
    with pytest.raises(ValueError, match="at least 5 checkpoints"):
        fit_transition([0, 1, 2], [0, 0, 1])


def test_loss_plateau_planted():
    # plateau at 0.6 from t = 10 to 300, then a drop to 0.05 within 0.3 decade
    t = STEPS[STEPS <= 3000]
    loss = np.where(t < 10, 1.0 - 0.4 * np.log10(t), 0.6)
    loss = np.where(t > 300, 0.6 - 0.55 * np.clip(np.log10(t / 300) / 0.3, 0, 1), loss)
    (p,) = loss_plateaus(t, loss, floor=0.0)
    assert p.level == pytest.approx(0.6, abs=0.02)
    assert 8 <= p.start <= 14 and 250 <= p.end <= 330
    assert p.drop > 0.5
    assert loss_plateaus(t, 1.0 - 0.3 * np.log10(t)) == ()  # a steady decline has no plateau
