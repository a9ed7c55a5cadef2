"""Planted ground truth: on the signal–distractor digits, gradient-family attributions of the trained
``world_classifier("digits")`` concentrate on the signal digit's pixels (``signal_mask``) far beyond
chance, while a random map sits at chance. (The ranking of every method on this world is the attribution
bench family, tested in tests/test_bench_attribution.py.)

The classifier trains once (minutes on 2 shared cores) into ``$ASSAY_TEST_CACHE`` or ``~/.cache/assay``
and is loaded from there afterwards.
"""

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from assay.attribution import (
    IntegratedGradientsConfig,
    SmoothGradConfig,
    gradient,
    input_x_gradient,
    integrated_gradients,
    smoothgrad,
)
from assay.evaluate.attribution_agreement import importance_map, pointing_game, relevance_mass


@pytest.fixture(scope="session")
def digits():
    from assay.models.classifier_zoo import world_classifier
    from assay.worlds.base import make_generator
    from assay.worlds.digits import SignalDistractorDigits

    cache = os.environ.get("ASSAY_TEST_CACHE") or Path.home() / ".cache" / "assay"
    wc = world_classifier("digits", cache_dir=cache)
    assert wc.test_accuracy >= 0.5, f"digits classifier test accuracy {wc.test_accuracy:.3f} < 0.5: retrain it"
    batch = SignalDistractorDigits(replace(wc.world.config, split="test")).sample(48, generator=make_generator(1))
    with torch.no_grad():
        ok = (wc.model(batch.inputs).argmax(1) == batch.targets).nonzero()[:, 0][:24]
    return wc.model, batch.inputs[ok], batch.labels["signal_mask"][ok], batch.targets[ok]


@pytest.mark.parametrize("name", ["gradient", "input_x_gradient", "integrated_gradients", "smoothgrad"])
def test_gradient_family_puts_mass_on_the_signal(digits, name):
    model, x, mask, y = digits
    fn = {"gradient": lambda: gradient(model, x, y),
          "input_x_gradient": lambda: input_x_gradient(model, x, y),
          "integrated_gradients": lambda: integrated_gradients(model, x, y, config=IntegratedGradientsConfig(steps=16)),
          "smoothgrad": lambda: smoothgrad(model, x, y, config=SmoothGradConfig(n_samples=16))}[name]
    m = importance_map(fn().values)
    mass, chance = relevance_mass(m, mask)
    assert float(mass.mean()) > 2 * float(chance.mean())  # measured ≈ 3–5× chance
    assert float(pointing_game(m, mask).double().mean()) > 3 * float(chance.mean())
    # control: a map independent of the model sits at chance
    rnd = torch.rand(m.shape, generator=torch.Generator().manual_seed(0))
    rmass, _ = relevance_mass(rnd, mask)
    assert abs(float(rmass.mean()) - float(chance.mean())) < 0.03
