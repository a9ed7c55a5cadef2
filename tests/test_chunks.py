"""Chunking: bytes per row from one hooked forward, and blocks that cover examples × samples exactly once."""

import pytest
import torch

from assay.chunks import blocks, row_bytes


def test_row_bytes_counts_leaf_outputs_and_removes_its_hooks():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(5, 4)
    per_row, y = row_bytes(net, x)
    assert per_row == (8 + 8 + 3 + 4) * 4  # float32 outputs of the three leaves, plus the input row
    assert torch.equal(y, net(x)) and not y.requires_grad
    assert all(not m._forward_hooks for m in net.modules())
    per_row_fn, _ = row_bytes(lambda t: t.sum(1), x)  # no modules to hook: 32x the input stands in
    assert per_row_fn == 33 * 4 * 4


@pytest.mark.parametrize("n_examples,n_samples,chunk", [(7, 3, 10), (5, 25, 7), (4, 4, 4), (3, 1, 1), (9, 5, 1000)])
def test_blocks_cover_every_pair_once_within_the_chunk(n_examples, n_samples, chunk):
    seen = torch.zeros(n_examples, n_samples, dtype=torch.long)
    for ex, ss in blocks(n_examples, n_samples, chunk):
        rows = (ex.stop - ex.start) * (ss.stop - ss.start)
        assert 0 < rows <= max(chunk, 1)
        seen[ex, ss] += 1
    assert bool((seen == 1).all())
