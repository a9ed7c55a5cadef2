"""The data initialisation of TopK transcoders (assay.dictionaries.centre_init): planted inputs and outputs, a naive
loop reference for the nearest-centre cells and least-squares decoders, and the transcoder option that uses it."""

from __future__ import annotations

import pytest
import torch

from assay.config import ConfigError
from assay.dictionaries.centre_init import nearest_centre_init
from assay.dictionaries.registry import build_sae


def _planted(*, zero_row: bool, seed: int = 0):
    """10 distinct inputs (the last coordinate constant) with random outputs, row 0's output 0 when ``zero_row``;
    200 draws with every row present."""
    g = torch.Generator().manual_seed(seed)
    rows, outs = torch.randn(10, 6, generator=g), torch.randn(10, 4, generator=g)
    rows[:, 5] = 1.0
    if zero_row:
        outs[0] = 0.0
    idx = torch.cat([torch.arange(10), torch.randint(0, 10, (190,), generator=g)])
    return rows[idx], outs[idx]


def _apply(init, x):
    """TopK with k = 1 over ReLU(pre), the transcoder's own map (ties cannot occur here)."""
    a, j = (x @ init.W_enc + init.b_enc).relu().max(1)
    return a[:, None] * init.W_dec[j], torch.where(a > 0, j, -1)


@pytest.mark.parametrize("zero_row", [True, False])
def test_every_distinct_input_gets_its_own_winner_and_its_output(zero_row):
    x, y = _planted(zero_row=zero_row)
    init = nearest_centre_init(x, y, 16, generator=torch.Generator().manual_seed(1))
    y_hat, winner = _apply(init, x)
    torch.testing.assert_close(y_hat, y, atol=1e-4, rtol=1e-4)  # planted truth: the batch is rebuilt
    n_used = 9 if zero_row else 10
    assert len(init.centres) == n_used
    assert torch.unique(x[init.centres], dim=0).shape[0] == n_used  # distinct centres
    assert winner[init.centres].tolist() == list(range(n_used))  # each centre wins itself, in feature order
    assert torch.unique(winner[winner >= 0]).numel() == n_used and winner.max() < n_used  # unused features never fire
    if zero_row:
        assert init.origin == 0 and bool((winner[(x == x[0]).all(1)] == -1).all())  # the origin fires nothing
    else:
        assert init.origin is None and bool((winner >= 0).all())
    assert init.W_dec[:n_used].norm(dim=1).mean() == pytest.approx(1.0, rel=1e-5)
    assert init.W_enc[5].abs().max() == 0  # a constant coordinate carries no weight


def test_fewer_features_than_inputs_equals_a_naive_reference():
    """n = 4 centres for 9 non-zero inputs: each input goes to the centre nearest in standardised units when that
    is nearer than the origin, and each decoder row is the least-squares fit of its cell's outputs."""
    x, y = _planted(zero_row=True, seed=3)
    init = nearest_centre_init(x, y, 4, generator=torch.Generator().manual_seed(0))
    y_hat, winner = _apply(init, x)
    sd = x.std(0, correction=0)
    o, centres = x[init.origin], [x[int(c)] for c in init.centres]
    naive_win, naive_a = [], []
    for row in x:
        dist = lambda p, row=row: sum(float((row[i] - p[i]) / sd[i]) ** 2 for i in range(5))  # noqa: E731
        d = [dist(c) for c in centres]
        j = min(range(4), key=d.__getitem__)
        naive_win.append(j if d[j] < dist(o) else -1)
        naive_a.append(dist(o) - d[j])
    assert winner.tolist() == naive_win
    naive = torch.zeros_like(y)
    for j in range(4):
        cell = [b for b, w in enumerate(naive_win) if w == j]
        a = torch.tensor([naive_a[b] for b in cell])
        dec = sum(a_b * y[b] for a_b, b in zip(a, cell)) / float((a * a).sum())
        for a_b, b in zip(a, cell):
            naive[b] = a_b * dec
    torch.testing.assert_close(y_hat, naive, atol=1e-4, rtol=1e-4)


def test_a_topk_transcoder_with_data_init_starts_from_the_centres():
    x, y = _planted(zero_row=True)
    tc = build_sae("topk_transcoder", d_in=6, d_out=4, d_sae=12, k=1, seed=5, unit_decoder=False, decoder_bias=False,
                   data_init=True)
    tc.init_from_batch(x, y)
    ref = nearest_centre_init(x, y, 12, generator=torch.Generator().manual_seed(5 + 2))
    torch.testing.assert_close(tc.W_enc.detach(), ref.W_enc)
    with torch.no_grad():
        torch.testing.assert_close(tc.transcode(x), y, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="unit_decoder=False"):
        build_sae("topk_transcoder", d_in=6, d_out=4, d_sae=12, k=1, data_init=True)
    with pytest.raises(ValueError, match="same B"):
        nearest_centre_init(x, y[:3], 4, generator=torch.Generator())


def test_rows_the_centres_already_rebuild_are_not_drawn():
    """Three tight clusters of inputs, each sharing one output: once a centre sits in each cluster every row's
    nearest centre has its output, so the seeding stops at 3 centres (one per cluster) out of 16 features."""
    g = torch.Generator().manual_seed(0)
    means, outs = 10 * torch.randn(3, 5, generator=g), torch.randn(3, 4, generator=g)
    which = torch.arange(300) % 3
    x = means[which] + 0.01 * torch.randn(300, 5, generator=g)
    init = nearest_centre_init(x, outs[which], 16, generator=torch.Generator().manual_seed(0))
    assert sorted(which[init.centres].tolist()) == [0, 1, 2]
    assert init.W_enc[:, 3:].abs().max() == 0 and init.W_dec[3:].abs().max() == 0
    y_hat, winner = _apply(init, x)
    assert torch.equal(which[init.centres][winner], which)  # each cluster goes to its own centre
    assert float(((y_hat - outs[which]) ** 2).sum() / ((outs[which] - outs[which].mean(0)) ** 2).sum()) < 1e-3
