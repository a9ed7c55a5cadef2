"""The knowledge-editing phenomenon (Nishi et al. 2025) on its quick budget, and its edit bookkeeping."""

from __future__ import annotations

import math

import torch

from assay.bench.phenomena import knowledge_editing as ke
from assay.bench.phenomena.registry import load_phenomenon
from assay.worlds.knowledge_graph import KnowledgeGraphWorld


def test_counterfactual_lies_d_hops_beyond_the_true_object_on_the_same_ring():
    w = KnowledgeGraphWorld()
    N = w.config.n_entities
    for name, d in (("I+2", 1), ("II-3", 4), ("III+4", 2)):
        r = w.relation_names.index(name)
        o = ("I", "II", "III").index(name[:-2])
        sign, h = (1 if name[-2] == "+" else -1), int(name[-1])
        for e in (0, 17, 63):
            ring = w.orders[o].tolist()
            expected = ring[(ring.index(e) + sign * (h + d)) % N]
            assert ke.counterfactual_object(w, e, r, d) == expected
            # the counterfactual is itself the object of the relation d hops longer (same direction)
            longer = w.relation_names.index(f"{name[:-1]}{h + d}") if h + d <= 4 else None
            if longer is not None:
                assert w.facts[e, longer].item() == expected


def test_neighbourhood_is_every_entity_within_max_hops_on_any_ring():
    w = KnowledgeGraphWorld()
    near = ke.ring_neighbourhood(w, 5)
    ring_dist = lambda o, a, b: min((w.positions[o][a] - w.positions[o][b]) % 64,  # noqa: E731
                                    (w.positions[o][b] - w.positions[o][a]) % 64)
    expected = torch.tensor([min(ring_dist(o, 5, x) for o in range(3)) <= 4 for x in range(64)])
    assert torch.equal(near, expected)


def test_quick_measurement_returns_every_metric_and_curve(tmp_path):
    phen = load_phenomenon("knowledge_editing")
    assert phen is ke.PHENOMENON
    m = phen.measure(0, quick=True, run_dir=tmp_path)
    assert set(m.metrics) == set(phen.metrics)
    for name in ("pre_edit_acc", "ring_score", "rome_efficacy", "ft_efficacy", "rome_R_d1", "ft_R_dmax"):
        assert math.isfinite(m.metrics[name]), name
    assert 0 <= m.metrics["pre_edit_acc"] <= 1 and 0 <= m.metrics["ring_score"] <= 1
    assert m.metrics["rome_R_d1"] > 0 and m.metrics["ft_R_d1"] > 0  # an edit moves the representations
    assert [c.name for c in m.curves] == ["rome: R(D*)", "rome: accuracy drop", "ft: R(D*)", "ft: accuracy drop"]
    assert all(c.xs == (1.0, 2.0) for c in m.curves)  # quick world: max_hops = 2
    again = phen.measure(0, quick=True, run_dir=tmp_path)  # the model is cached: same numbers
    assert again.metrics == m.metrics or all(
        (math.isnan(a) and math.isnan(again.metrics[k])) or a == again.metrics[k] for k, a in m.metrics.items())
