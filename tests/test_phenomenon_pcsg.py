"""Tests of the percolation PCSG phenomenon (Lubana et al. 2025, "A Percolation Model of Emergence"):
its helpers against hand values and stub models, and ``measure(quick=True)`` end to end."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from assay.bench.phenomena.pcsg import PERCOLATION_WORLD, PHENOMENON, QUICK, generate, half_max_crossing
from assay.bench.phenomena.registry import load_phenomenon
from assay.worlds.base import make_generator
from assay.worlds.pcsg import PCSGConfig, PCSGWorld


def test_half_max_crossing_interpolates_in_log_x():
    # max 0.8, half 0.4 reached between x = 1 (0.2) and x = 4 (0.6): halfway in log x, i.e. at x = 2
    assert half_max_crossing([0.5, 1.0, 4.0, 8.0], [0.0, 0.2, 0.6, 0.8]) == pytest.approx(2.0)
    assert half_max_crossing([1.0, 2.0], [0.9, 1.0]) == 1.0  # already above half at the first point
    assert math.isnan(half_max_crossing([1.0, 2.0], [-0.1, 0.0]))  # nothing emerged


class _Stub(nn.Module):
    """Logits that always favour one token."""

    def __init__(self, vocab: int, token: int, context: int = 6) -> None:
        super().__init__()
        self.config = type("C", (), {"context": context})()
        self.vocab, self.token = vocab, token

    def forward(self, ids):
        out = torch.full((*ids.shape, self.vocab), -30.0)
        out[..., self.token] = 30.0
        return out


def test_generate_stops_at_eos_or_context():
    w = PCSGWorld()
    assert generate(_Stub(len(w.vocab), w.eos_id), w, 3, generator=make_generator(0)) == [[w.eos_id]] * 3
    p = w.token_id("[P]")
    assert generate(_Stub(len(w.vocab), p, context=6), w, 2, generator=make_generator(0)) == [[p] * 5] * 2
    assert not w.check([p] * 5).grammatical


def test_measure_quick(tmp_path):
    assert load_phenomenon("pcsg") is PHENOMENON
    m = PHENOMENON.measure(0, quick=True, run_dir=tmp_path)
    assert set(m.metrics) == set(PHENOMENON.metrics)
    assert all(isinstance(v, float) for v in m.metrics.values())
    assert 0.0 <= m.metrics["gen_grammatical"] <= 1.0
    names = [c.name for c in m.curves]
    assert names[:3] == ["grammar_acc", "type_acc", "held-out type AUROC"]
    for c in m.curves:
        assert len(c.xs) == len(c.ys) >= 1
    # the sweep's x axis is the bond parameter q·√(n₁n₂), from its closed form
    q = PERCOLATION_WORLD["pair_density"]
    expect = [q * math.sqrt(32 / 4 * n / 4) for n in QUICK.sweep_properties]
    assert list(m.curves[3].xs) == pytest.approx(expect)
    graph = [PCSGWorld(PCSGConfig(n_properties=n, seed=0, **PERCOLATION_WORLD)).percolation().connected_heldout
             for n in QUICK.sweep_properties]
    assert list(m.curves[4].ys) == pytest.approx(graph)
    # the half-density rerun at 4× the properties has the β of the sweep's 4 properties
    assert list(m.curves[5].xs) == pytest.approx([q / 2 * math.sqrt(32 / 4 * 16 / 4)])
    assert m.curves[5].xs[0] == pytest.approx(expect[0])
    half_graph = PCSGWorld(PCSGConfig(n_properties=16, seed=0, **{**PERCOLATION_WORLD, "pair_density": q / 2}))
    assert m.curves[6].ys[0] == pytest.approx(half_graph.percolation().connected_heldout)
    assert m.metrics["shortfall_half_density"] == pytest.approx(m.curves[6].ys[0] - m.curves[5].ys[0])
    assert m.metrics["shortfall"] == pytest.approx(sum(g - s for g, s in zip(m.curves[4].ys, m.curves[3].ys)) / 2)
    assert (tmp_path / "series").is_dir()  # the checkpoint series was kept in run_dir ...
    stamp = (tmp_path / "series" / "config.json").stat().st_mtime_ns
    again = PHENOMENON.measure(0, quick=True, run_dir=tmp_path)  # ... and is reused, with the same result
    assert (tmp_path / "series" / "config.json").stat().st_mtime_ns == stamp
    assert again.metrics == pytest.approx(m.metrics, nan_ok=True)
