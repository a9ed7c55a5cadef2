"""Forgetting of contamination (Bordt et al. 2025): the ordering of the final gap by insertion time.

Planted ground truth: copies seen early are learned (the curve peaks) and then forgotten under continued
training with weight decay, copies seen late keep the largest gap; the old recipe (cosine decay to lr/10, no
weight decay) reverses the ordering, which is the diagnosis recorded in docs/data_attribution.md.
"""

from __future__ import annotations

import pytest
import torch

from assay.bench.forgetting import ForgettingConfig, forgetting_curves, plot_forgetting
from assay.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_early_copies_are_forgotten_and_late_ones_keep_the_largest_gap():
    c = forgetting_curves(ForgettingConfig(insertion=(0.0, 0.75), seeds=(0, 1)))
    assert c.contaminated.shape == c.clean.shape == (2, 2, 20) and c.steps[-1].item() == 400
    assert torch.equal(c.final_gap, c.contaminated[..., -1] - c.clean[..., -1])
    early, late = c.final_gap
    # Measured (defaults, seeds 0-4): final gap early −0.08-0.12 (0.08 / −0.08 / 0.00 / 0.12 / −0.04), late 0.54-0.83
    # (0.75 / 0.83 / 0.54 / 0.79 / 0.83); late − early per seed 0.54-0.92; the early copies' accuracy peaked at 1.0
    # during training in every seed (learned, then forgotten).
    assert bool((early.abs() <= 0.25).all()), early
    assert bool((late - early >= 0.4).all()), (early, late)
    assert bool((c.contaminated[0].max(1).values >= 0.9).all())


def test_decayed_lr_without_weight_decay_reverses_the_ordering():
    c = forgetting_curves(ForgettingConfig(insertion=(0.0, 0.75), seeds=(0, 1), min_lr=1e-3, weight_decay=0.0,
                                           n_evals=4))
    early, late = c.final_gap
    # Measured (seeds 0-4): early 0.71-0.88, late 0.08-0.25, early − late per seed 0.58-0.80: late copies are seen
    # at lr ≈ 1e-3 and barely learned, early ones are never decayed away.
    assert bool((early - late >= 0.4).all()), (early, late)


def test_plot_writes_the_figure(tmp_path):
    pytest.importorskip("matplotlib")
    c = forgetting_curves(ForgettingConfig(insertion=(0.5,), seeds=(0,), steps=24, n_evals=4, repetitions=1, items=2))
    assert c.steps.tolist() == [6, 12, 18, 24]
    out = plot_forgetting(c, tmp_path / "f.svg", window_length=0.25)
    assert out.read_text().lstrip().startswith("<?xml")


def test_bad_config_errors():
    with pytest.raises(ConfigError, match="window"):
        ForgettingConfig(insertion=(0.9,))
    with pytest.raises(ConfigError, match="n_evals"):
        ForgettingConfig(steps=10, n_evals=11)
    with pytest.raises(ConfigError, match="repetitions"):
        ForgettingConfig(repetitions=0)
