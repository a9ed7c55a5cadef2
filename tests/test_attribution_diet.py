"""DiET on a planted black box whose output depends only on the top-left quadrant: the learnt masks
keep that quadrant and erase the rest (and the black box itself is left untouched)."""

import pytest
import torch
from torch import nn

from assay.attribution.diet import DietConfig, diet, diet_masks, erase


class Quadrant(nn.Module):
    """Logit 1 = 20·(mean of the top-left 4×4 pixels over channels) − 10; logit 0 = 0."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 8 * 8, 2)
        with torch.no_grad():
            w = torch.zeros(3, 8, 8)
            w[:, :4, :4] = 20.0 / 48
            self.lin.weight.zero_()
            self.lin.weight[1] = w.flatten()
            self.lin.bias[:] = torch.tensor([0.0, -10.0])

    def forward(self, x):
        return self.lin(x.flatten(1))


def _quadrants(m):  # mask [N, 1, 4, 4]: mean over the signal cells and over the other 12
    m = m[:, 0]
    sig = m[:, :2, :2].mean()
    rest = (m.sum((1, 2)) - m[:, :2, :2].sum((1, 2))).mean() / 12
    return float(sig), float(rest)


def test_diet_masks_keep_the_planted_signal():
    net = Quadrant()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = DietConfig(rounds=3, upsample=2, max_epochs=15, batch_size=32)
    r = diet(net, x, config=cfg)
    assert r.masks.shape == (32, 1, 4, 4) and set(r.masks.unique().tolist()) <= {0.0, 1.0}
    sig, rest = _quadrants(r.masks)
    assert sig > 0.7 and rest < 0.3  # measured 0.82 / 0.18
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # f_b untouched
    sig_t, rest_t = _quadrants(diet_masks(r.model, x, config=cfg))
    assert sig_t > 0.7 and rest_t < 0.1  # measured 0.84 / 0.003
    # erasure with an all-ones mask returns the image; an all-zeros mask the colour
    q = torch.full((32, 3, 1, 1), 0.3)
    torch.testing.assert_close(erase(x, torch.ones(32, 1, 4, 4), q), x)
    torch.testing.assert_close(erase(x, torch.zeros(32, 1, 4, 4), q), q.expand_as(x))


def test_diet_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        diet(Quadrant(), torch.rand(2, 3, 8, 8), config=DietConfig(upsample=3))
    with pytest.raises(ValueError, match="images"):
        diet(Quadrant(), torch.rand(2, 1, 8, 8))
