"""assay.evaluate.fragility against values written out by hand."""

import pytest
import torch

from assay.evaluate.fragility import active_set_overlap, latent_change, typical_activation


def test_active_set_overlap_by_hand():
    ref = torch.tensor([[1.0, 2.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    codes = torch.tensor([[0.0, 5.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    # row 0: S_ref = {0, 1, 3}, S = {1, 2, 3}: 2 of 3; row 1: S_ref empty -> 1
    torch.testing.assert_close(active_set_overlap(codes, ref), torch.tensor([2 / 3, 1.0]))


def test_latent_change_and_typical_activation_by_hand():
    before = torch.tensor([[0.0, -1.0], [2.0, 0.5]])
    after = torch.tensor([[3.0, 1.0], [1.0, 0.5]])
    latent = torch.tensor([1, 0])
    torch.testing.assert_close(latent_change(before, after, latent), torch.tensor([2.0, -1.0]))
    codes = torch.tensor([[0.0, 4.0, 0.0], [2.0, 0.0, 0.0], [6.0, 2.0, 0.0]])
    scale = typical_activation(codes)
    torch.testing.assert_close(scale, torch.tensor([4.0, 3.0, 1.0]))  # latent 2 never fires: 1
    torch.testing.assert_close(latent_change(before, after, latent, scale[:2]), torch.tensor([2 / 3, -1 / 4]))
    with pytest.raises(ValueError, match="latent"):
        latent_change(before, after[:1], latent)
