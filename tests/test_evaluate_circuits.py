"""Program metrics (spec circuits.md §4.3 A1, A2, A5) and MIB's CPR/CMD (Mueller et al. 2025) against
hand-computed cases."""

import math

import pytest
import torch

from assay.evaluate.circuit_faithfulness import MIB_FRACTIONS, faithfulness_curve, mib_scores
from assay.evaluate.programs import ablation_effect, intervention_success, program_accuracy, reference_kind


def test_mib_scores_match_the_spec_hand_values():
    f = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1, 1, 1, 1)
    s = mib_scores(MIB_FRACTIONS, f)
    assert s.cpr == pytest.approx(0.9804, abs=1e-12) and s.cmd == pytest.approx(0.0186, abs=1e-12)
    assert mib_scores(MIB_FRACTIONS, f, log_x=True).cpr == pytest.approx(0.683333, abs=1e-6)
    step = mib_scores(MIB_FRACTIONS, (0,) * 9 + (1,))
    assert step.cpr == pytest.approx(0.25) and step.cmd == pytest.approx(0.999 - 0.25)
    with pytest.raises(ValueError, match="two or more"):
        mib_scores((1.0,), (1.0,))


def test_faithfulness_curve_on_an_additive_metric():
    """m(mask) = Σ of the kept edges' weights + 1: four edges 4, 3, −2, 1 (sum 6, m(N) = 7, m(∅) = 1).
    Ranked by signed score: top 25% = {4} → f = 4/6, top 50% = {4, 3} → 7/6, 75% = {4, 3, 1} → 8/6, 100% → 1.
    Ranked by |score|: 50% = {4, 3}, 75% = {4, 3, −2} → 5/6."""
    w = torch.tensor([[0.0, 4.0, 3.0], [-2.0, 0.0, 1.0]])

    def metric(mask):
        return float((w * mask).sum()) + 1.0

    fr = (0.25, 0.5, 0.75, 1.0)
    signed = faithfulness_curve(metric, w, fractions=fr)
    assert signed.faithfulness == pytest.approx((4 / 6, 7 / 6, 8 / 6, 1.0)) and signed.n_edges == (1, 2, 3, 4)
    absolute = faithfulness_curve(metric, w.abs(), candidates=w != 0, fractions=fr)
    assert absolute.faithfulness == pytest.approx((4 / 6, 7 / 6, 5 / 6, 1.0))
    flat = faithfulness_curve(lambda mask: 1.0, w, fractions=fr)  # m(N) = m(∅): undefined
    assert all(math.isnan(v) for v in flat.faithfulness)
    with pytest.raises(ValueError, match="fractions must lie"):
        faithfulness_curve(metric, w, fractions=(0.0, 1.0))


def test_program_accuracy_top1_and_sign():
    ref = torch.tensor([[[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])  # the middle row is not scored
    logits = torch.tensor([[[0.0, 10.0, 3.0], [9.0, -9.0, 0.0], [2.0, 4.0, 0.0]]])
    acc = program_accuracy(logits, ref, scale=10.0)
    assert reference_kind(ref) == "top1"
    assert acc.accuracy == pytest.approx(0.5) and acc.min_margin == pytest.approx(-2.0)  # row 3: 2 − 4
    assert acc.max_error == pytest.approx(14.0)  # |−9 − 5|
    sref = torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]])
    slog = torch.tensor([[[10.0, -10.0], [2.0, 7.0]]])
    s = program_accuracy(slog, sref, scale=10.0)
    assert reference_kind(sref) == "sign" and s.accuracy == 0.5 and s.min_margin == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="one shape"):
        program_accuracy(slog, ref, scale=1.0)


def test_ablation_effect_and_intervention_success():
    clean = torch.tensor([[[5.0, 0.0]], [[0.0, 5.0]], [[5.0, 0.0]]])
    ablated = torch.tensor([[[5.0, 0.0]], [[6.0, 5.0]], [[5.0, 1e-7]]])
    scored = torch.ones(3, 1, dtype=torch.bool)
    eff = ablation_effect(clean, ablated, scored, kind="top1")
    assert eff.max_change == 6.0 and eff.share_changed == pytest.approx(1 / 3) and eff.share_moved == pytest.approx(1 / 3)
    expected = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])
    assert intervention_success(ablated, expected, scored) == pytest.approx(2 / 3)
    assert intervention_success(ablated, expected, torch.zeros(3, 1, dtype=torch.bool)) == 1.0
