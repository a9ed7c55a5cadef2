"""Schedules: the cubic formula's check values, linear/one-shot, cyclical (C = 1 is cubic; regrowth),
and the prune-and-fine-tune loop's bit-identical resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from assay.config import ConfigError
from assay.models.mlp import MLP
from assay.pruning.importance import lamp_scores
from assay.pruning.magnitude import magnitude_masks, prune_lowest
from assay.pruning.masks import shadow_weight
from assay.pruning.schedules import (
    PruneConfig,
    ScheduleConfig,
    cubic,
    cyclical,
    is_update_step,
    linear,
    one_shot,
    prune_and_finetune,
    target_sparsity,
)


def test_cubic_matches_spec_check_values():
    # s_i = 0, s_f = 0.9 at progress 0, .25, .5, .75, 1 → 0, 0.520313, 0.7875, 0.885938, 0.9
    got = [cubic(k, final=0.9, n_updates=4) for k in range(5)]
    assert got == pytest.approx([0.0, 0.520313, 0.7875, 0.885938, 0.9], abs=1e-6)
    # held between updates every Δt = 10 steps from t₀ = 5; 0 before t₀; s_f after t₀ + nΔt
    assert cubic(4, final=0.9, n_updates=4, start=5, interval=10) == 0.0
    assert cubic(5, final=0.9, n_updates=4, start=5, interval=10) == 0.0
    assert cubic(24, final=0.9, n_updates=4, start=5, interval=10) == pytest.approx(0.520313, abs=1e-6)
    assert cubic(25, final=0.9, n_updates=4, start=5, interval=10) == pytest.approx(0.7875)
    assert cubic(1000, final=0.9, n_updates=4, start=5, interval=10) == 0.9
    assert cubic(0, final=0.9, initial=0.3, n_updates=4) == pytest.approx(0.3)


def test_linear_and_one_shot():
    assert [linear(k, final=0.8, n_updates=4) for k in range(6)] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 0.8])
    assert [one_shot(k, final=0.7, start=2) for k in range(4)] == [0.0, 0.0, 0.7, 0.7]


def test_cyclical_with_one_cycle_is_cubic_and_restarts_otherwise():
    for step in range(40):
        assert cyclical(step, final=0.9, cycle_steps=40, cycles=1, ramp=0.75) == cubic(step, final=0.9, n_updates=30)
    s = [cyclical(t, final=0.8, cycle_steps=10, cycles=3, ramp=0.5) for t in range(35)]
    assert s[0] == 0.0 and s[5] == s[9] == pytest.approx(0.8)
    assert s[10] == pytest.approx(0.4) and s[20] == pytest.approx(0.4)  # restart at ½·s_f
    assert s[12] == pytest.approx(0.8 + (0.4 - 0.8) * (1 - 2 / 5) ** 3)
    assert all(v == pytest.approx(0.8) for v in s[30:])
    assert cyclical(10, final=0.8, cycle_steps=10, cycles=2, restart=0.1) == pytest.approx(0.1)


def test_schedule_config_dispatch_and_update_steps():
    cfg = ScheduleConfig(kind="cubic", final_sparsity=0.9, n_updates=4, start=2, interval=3)
    assert target_sparsity(cfg, 5) == cubic(5, final=0.9, n_updates=4, start=2, interval=3)
    assert [t for t in range(20) if is_update_step(cfg, t)] == [2, 5, 8, 11, 14]
    cyc = ScheduleConfig(kind="cyclical", final_sparsity=0.5, cycles=2, cycle_steps=5)
    assert [t for t in range(12) if is_update_step(cyc, t)] == list(range(10))
    with pytest.raises(ValueError, match=r"final_sparsity must be a number in \[0, 1\)"):
        ScheduleConfig(final_sparsity=1.0)
    with pytest.raises(ConfigError, match="ends before"):
        PruneConfig(schedule=cfg, steps=14)


def _data(n=256):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(n, 6, generator=gen)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def _model():
    return MLP(6, (16, 16), 2, generator=torch.Generator().manual_seed(0))


CFG = PruneConfig(schedule=ScheduleConfig(kind="cyclical", final_sparsity=0.8, cycles=2, cycle_steps=10),
                  steps=30, batch_size=32, lr=1e-2, checkpoint_every=4)


def test_interrupted_run_resumes_to_bit_identical_weights(tmp_path):
    straight = prune_and_finetune(_model(), _data(), CFG, out_dir=tmp_path / "a", generator=torch.Generator().manual_seed(1))

    class Stop(Exception):
        pass

    def kill(step, loss):
        if step == 13:
            raise Stop

    with pytest.raises(Stop):
        prune_and_finetune(_model(), _data(), CFG, out_dir=tmp_path / "b", generator=torch.Generator().manual_seed(1),
                           on_step=kill)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["step-0000012"]
    resumed = prune_and_finetune(_model(), _data(), CFG, out_dir=tmp_path / "b", generator=torch.Generator().manual_seed(99))
    assert resumed.step == straight.step == 30 and resumed.losses == straight.losses
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight.sparsity.zeros == {"fc1": round(0.8 * 256)}
    with pytest.raises(ValueError, match="was written with config"):
        prune_and_finetune(_model(), _data(), PruneConfig(schedule=CFG.schedule, steps=31, checkpoint_every=4),
                           out_dir=tmp_path / "b", generator=torch.Generator())


def test_cyclical_regrowth_brings_back_a_weight_pruned_in_cycle_one(tmp_path):
    # y = x·(1, 0.9, 0.8, 2.0); the last weight starts tiny, so the first projection prunes it; with
    # gradients reaching masked weights its shadow grows, and it is kept at the end (regrowth).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=gen)
    y = x @ torch.tensor([[1.0], [0.9], [0.8], [2.0]])
    trace = {}

    def run(regrow):
        model = nn.Sequential(nn.Linear(4, 1, bias=False))
        with torch.no_grad():
            model[0].weight.copy_(torch.tensor([[1.0, 0.9, 0.8, 0.01]]))
        cfg = PruneConfig(schedule=ScheduleConfig(kind="cyclical", final_sparsity=0.5, cycles=2, cycle_steps=40,
                                                  ramp=0.5),
                          steps=100, batch_size=64, lr=0.02, layers=("0",), regrow=regrow, loss="mse",
                          checkpoint_every=100)
        masks = []
        res = prune_and_finetune(model, (x, y), cfg, out_dir=tmp_path / str(regrow), generator=torch.Generator(),
                                 on_step=lambda s, l: masks.append(res_mask(model)))
        trace[regrow] = masks
        return res, model

    def res_mask(model):
        return model[0].parametrizations.weight[0].mask[0].clone()

    res, model = run(True)
    first_pruned = next(i for i, m in enumerate(trace[True]) if not m[3])
    assert first_pruned < 5  # pruned early in cycle 1
    assert bool(res.masks["0"][0, 3])  # ... and back by the end
    assert float(shadow_weight(model, "0")[0, 3].detach()) > 1.5
    frozen, _ = run(False)
    assert not bool(frozen.masks["0"][0, 3])  # without gradients to masked weights it never returns


def test_lamp_rule_projects_by_lamp_scores(tmp_path):
    model = MLP(6, (8, 8, 8), 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.fc2.weight.mul_(10.0)  # global magnitude would prune fc1 far more than fc2; LAMP balances
    dense = {n: model.get_submodule(n).weight.detach().clone() for n in ("fc1", "fc2")}
    cfg = PruneConfig(schedule=ScheduleConfig(kind="one_shot", final_sparsity=0.5), steps=1, rule="lamp",
                      checkpoint_every=1)
    res = prune_and_finetune(model, _data(), cfg, out_dir=tmp_path, generator=torch.Generator())
    expected = prune_lowest(lamp_scores(dense), 0.5)  # one-shot at step 0, before the single update
    assert all(torch.equal(res.masks[n], expected[n]) for n in dense)
    by_magnitude = magnitude_masks(dense, 0.5)
    assert int((~by_magnitude["fc1"]).sum()) == 57  # of 64 pruned in all: magnitude takes nearly all from fc1
    assert (int((~res.masks["fc1"]).sum()), int((~res.masks["fc2"]).sum())) == (31, 33)  # LAMP: scale-free
