"""Keep-top-1/p and mask IoU (DiET §6) against hand-computed cases."""

import pytest
import torch

from assay.evaluate.attribution_agreement import mask_iou
from assay.evaluate.faithfulness import keep_top


def test_mask_iou_hand_cases():
    mask = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [0, 0]]], dtype=torch.bool)  # areas 2 and 1
    a = torch.tensor([[[0.9, 0.1], [0.8, 0.0]], [[0.0, 0.5], [0.2, 0.1]]])
    # row 0: top-2 = {(0,0), (1,0)} vs {(0,0), (0,1)}: overlap 1, union 3; row 1: top-1 = (0,1), overlap 0
    assert mask_iou(a, mask).tolist() == pytest.approx([1 / 3, 0.0])
    # explicit k = 3: row 0 top {(0,0),(1,0),(0,1)} ⊇ mask: 2/3; row 1 top {(0,1),(1,0),(1,1)}: 0/4
    assert mask_iou(a, mask, k=3).tolist() == pytest.approx([2 / 3, 0.0])
    assert mask_iou(mask.float(), mask).tolist() == [1.0, 1.0]
    # [B, C, H, W] attributions are summed |φ| over channels first
    assert mask_iou(torch.stack([a, -a], 1), mask).tolist() == pytest.approx([1 / 3, 0.0])
    with pytest.raises(ValueError, match="k must lie"):
        mask_iou(a, torch.zeros_like(mask))


def test_keep_top_hand_cases():
    # linear 2-class model on 10 features: logit_1 − logit_0 = Σ_i w_i x_i with w = (10, −1, −1, …)
    w = torch.tensor([10.0] + [-1.0] * 9)

    def model(x):
        s = x.reshape(x.shape[0], -1) @ w
        return torch.stack([torch.zeros_like(s), s], 1)

    x = torch.ones(2, 10)
    t = torch.ones(2, dtype=torch.long)  # Σ = 1 > 0: class 1
    good = w.clone().expand(2, 10)  # ranks feature 0 first
    bad = torch.arange(10.0).expand(2, 10)  # ranks feature 9 first, feature 0 last
    r = keep_top(model, x, good, t, p=(2, 10, 5), baseline=0.0)
    assert r.p == (2, 5, 10)
    # p=10 keeps only feature 0 (s = 10); p=5 keeps {0, 1} (s = 9); p=2 keeps {0..4} (s = 6): all still class 1
    assert r.correct.all()
    assert r.scores[0].tolist() == pytest.approx(torch.sigmoid(torch.tensor([6.0, 9.0, 10.0])).tolist())
    rb = keep_top(model, x, bad, t, p=(2, 5, 10), baseline=0.0)
    # keeps features 9, {8, 9}, {5..9}: s = −1, −2, −5: all flipped to class 0
    assert not rb.correct.any()
    # a baseline per example [B, 1]: the fill 1 keeps the input intact, so nothing changes
    rf = keep_top(model, x, bad, t, p=(10,), baseline=torch.ones(2, 1))
    assert rf.correct.all()
    with pytest.raises(ValueError, match="p must be integers"):
        keep_top(model, x, good, t, p=(0,))
