"""Concept-space trajectories and hidden capabilities (spec §1.3) on a planted checkpoint series."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from assay.dynamics.checkpoints import log_steps, make_series
from assay.dynamics.concept_space import (
    concept_coordinates,
    concept_trajectory,
    hidden_capability,
    learning_time,
)
from assay.worlds.base import make_generator

STEPS = log_steps(3000, 20, 10)


def _gain(t, t0, w=0.3):
    return 0.0 if t == 0 else 1 / (1 + math.exp(-(math.log(t) - math.log(t0)) / w))


def _planted_series():
    """Checkpoints of a linear 'model' out_i = g_i(t)·x_i − 0.5 (concept i read as out_i > 0): concept 1's
    gain rises around step 100, concept 2's around step 1000."""
    states = []
    for t in STEPS:
        states.append({"weight": torch.diag(torch.tensor([_gain(t, 100), _gain(t, 1000)], dtype=torch.float64)),
                       "bias": torch.tensor([-0.5, -0.5], dtype=torch.float64)})
    return make_series(STEPS, states)


NOISE = 0.1
X = 1 + NOISE * torch.randn(20_000, 2, generator=make_generator(0), dtype=torch.float64)  # held-out class "11"


def _readout(scale):
    return lambda m: (m(scale * X) > 0).double().mean(0).tolist()


def test_turn_angle_spec_check():
    tr = concept_trajectory([0, 1, 2], np.array([[0, 0], [0.5, 0], [0.5, 0.5]]), smooth=1)
    assert tr.turn_angle == pytest.approx(90.0) and tr.turn_step == 1
    flat = concept_trajectory([0, 1, 2, 3], np.zeros((4, 2)))
    assert math.isnan(flat.turn_angle) and flat.angles == ()


def test_planted_trajectory_turns_and_hidden_capability_is_found():
    series = _planted_series()
    vessel = nn.Linear(2, 2).double()
    steps, naive = concept_coordinates(series, _readout(1.0), model=vessel)
    _, prompted = concept_coordinates(series, _readout(1.5), model=vessel)  # "over-prompting": condition ×1.5
    assert steps == STEPS and naive.shape == (len(STEPS), 2)
    tr = concept_trajectory(steps, naive)
    # the path runs along concept 1 first, then turns to concept 2 between the two onsets (measured: 90° at 669)
    assert tr.turn_angle > 60
    assert 100 < tr.turn_step < 1000
    # closed form: P(g·s·(1 + ε) > 0.5) ≥ 0.8 ⇔ g ≥ 0.5 / (s·(1 − z₀.₈·σ)), g rising ⇒ τ = first such step
    for concept, t_mid in ((0, 100), (1, 1000)):
        for scale, coords in ((1.0, naive), (1.5, prompted)):
            need = 0.5 / (scale * (1 - norm.ppf(0.8) * NOISE))
            expected = next(t for t in STEPS if _gain(t, t_mid) >= need)
            assert learning_time(steps, coords[:, concept]) == expected
    hc = hidden_capability(steps, naive[:, 1], prompted[:, 1])
    assert hc.tau_intervened < hc.tau_naive
    assert hc.gap == pytest.approx(math.log10(hc.tau_naive / hc.tau_intervened))
    # closed form above: τ_naive = 1219, τ_prompted = 903 — elicitable 0.13 decade before naive prompting shows it
    assert (hc.tau_naive, hc.tau_intervened) == (1219, 903)
    never = hidden_capability(steps, np.zeros(len(steps)), prompted[:, 1])
    assert math.isnan(never.tau_naive) and math.isnan(never.gap)
