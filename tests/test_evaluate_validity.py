"""Validity-mass shift and the additivity gap of two edits (assay.evaluate.validity, Menon et al. 2025) against
hand-computed values."""

import math

import pytest
import torch

from assay.evaluate.validity import additivity_gap, validity_mass, validity_shift


def test_validity_shift_matches_the_hand_computed_case():
    before = torch.tensor([0.5, 0.3, 0.2]).log()
    after = torch.tensor([0.2, 0.3, 0.5]).log() + 7.0  # logits: a constant offset changes nothing
    valid = torch.tensor([True, True, False])
    changed = torch.tensor([False, True, True])
    s = validity_shift(before, after, valid, changed)
    assert float(s.gained) == pytest.approx(0.3)  # token 2: 0.2 → 0.5
    assert float(s.lost) == pytest.approx(-0.3)  # token 0: 0.5 → 0.2
    assert float(s.valid_after) == pytest.approx(0.3)  # {1, 2}: 0.5 → 0.8
    assert float(validity_mass(before, valid)) == pytest.approx(0.8)


def test_validity_mass_per_position_and_errors():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    valid = torch.tensor([[True, False], [True, False]])
    assert validity_mass(logits, valid).tolist() == pytest.approx([0.5, 0.75])
    with pytest.raises(ValueError, match="bool mask"):
        validity_mass(logits, valid.long())
    with pytest.raises(ValueError, match="differ in shape"):
        validity_shift(logits, logits[:1], valid, valid)


def test_additivity_gap_is_zero_for_additive_logit_changes_and_hand_computed_otherwise():
    g = torch.Generator().manual_seed(0)
    base, da, db = (torch.randn(4, 5, generator=g, dtype=torch.float64) for _ in range(3))
    gap, size = additivity_gap(base, base + da + 1.0, base + db - 2.0, base + da + db + 5.0)  # offsets don't count
    assert gap.max() < 1e-9
    centred = da + db - (da + db).mean(-1, keepdim=True)
    assert torch.allclose(size, centred.norm(dim=-1))
    # A and B each raise logit 0 by 1 over a 2-token base; together also by 1 only (saturation): Δ_A = Δ_B = Δ_AB =
    # (1/2, −1/2) after centring, so the gap is ‖−Δ_A‖ = √(1/2) and the size √(1/2).
    z = torch.zeros(2)
    one = torch.tensor([1.0, 0.0])
    gap, size = additivity_gap(z, one, one, one)
    assert float(gap) == pytest.approx(math.sqrt(0.5)) and float(size) == pytest.approx(math.sqrt(0.5))
    with pytest.raises(ValueError, match="share one shape"):
        additivity_gap(z, one, one, torch.zeros(3))
