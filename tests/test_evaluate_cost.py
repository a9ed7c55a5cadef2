"""Model cost: MACs against hand counts (linear, conv with stride/groups, masked weights), parameters,
and latency measured over the stated number of calls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from assay.evaluate.cost import count_macs, count_parameters, measure_latency
from assay.models.cnn import SmallCNN
from assay.pruning.masks import apply_masks


def test_macs_of_a_small_cnn_by_hand():
    model = SmallCNN(3, 10, channels=(4, 8), image_size=8, generator=torch.Generator().manual_seed(0))
    out = count_macs(model, torch.zeros(2, 3, 8, 8))
    # conv0: 2·4·8·8 outputs × 3·9; conv1: 2·8·4·4 outputs × 4·9; fc: 2 rows × (8·2·2)·10
    assert out.per_layer == {"conv0": 2 * 4 * 64 * 27, "conv1": 2 * 8 * 16 * 36, "fc": 2 * 32 * 10}
    assert out.macs == out.nonzero_macs == sum(out.per_layer.values())
    assert count_parameters(model) == (3 * 9 * 4 + 4) + (4 * 9 * 8 + 8) + (32 * 10 + 10)


def test_macs_with_groups_stride_sequence_inputs_and_masks():
    conv = nn.Sequential(nn.Conv1d(4, 6, 3, stride=2, groups=2))
    assert count_macs(conv, torch.zeros(1, 4, 9)).macs == 6 * 4 * (2 * 3)  # 4 positions, (4/2)·3 per output
    lin = nn.Sequential(nn.Linear(5, 3))
    assert count_macs(lin, torch.zeros(2, 7, 5)).macs == 14 * 15  # one row per (batch, position)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, :4] = False
    apply_masks(lin, {"0": mask})
    counted = count_macs(lin, torch.zeros(2, 5))
    assert (counted.macs, counted.nonzero_macs) == (2 * 15, 2 * 11)


def test_latency_runs_the_stated_number_of_calls():
    calls = []
    model = nn.Linear(3, 3)
    model.register_forward_hook(lambda m, a, o: calls.append(1))
    t = measure_latency(model, torch.zeros(1, 3), runs=7, warmup=2)
    assert t > 0 and len(calls) == 9
    with pytest.raises(ValueError, match="runs >= 1"):
        measure_latency(model, torch.zeros(1, 3), runs=0)
