"""The planted sparse teacher: exact support, deterministic samples, unit matching, and magnitude
pruning of a densely trained student recovering most of the true support (far above random)."""

from __future__ import annotations

import torch

from assay.models.mlp import MLP
from assay.pruning.magnitude import magnitude_masks, prune_lowest
from assay.worlds import registry
from assay.worlds.base import make_generator
from assay.worlds.sparse_teacher import (
    SparseTeacherConfig,
    SparseTeacherWorld,
    match_hidden_units,
    support_recovery,
)


def test_teacher_weights_live_exactly_on_the_support():
    w = SparseTeacherWorld(SparseTeacherConfig(d_in=12, hidden=(16,), d_out=4, density=0.25, seed=3))
    assert set(w.support) == {"fc0", "out"}
    for name, layer in w.layers():
        mask = w.support[name]
        assert int(mask.sum()) == round(0.25 * mask.numel())
        assert torch.equal(layer.weight != 0, mask)
        assert float(layer.bias.abs().sum()) == 0.0
    assert w.sparsity == 1 - (48 + 16) / (192 + 64)
    a = w.sample(5, generator=make_generator(1))
    b = w.sample(5, generator=make_generator(1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, w.teacher(a.inputs))
    assert isinstance(registry.make("sparse_teacher", seed=3), SparseTeacherWorld)


def test_matching_finds_a_planted_permutation_and_recovery_counts_exactly():
    w = SparseTeacherWorld(SparseTeacherConfig(seed=0))
    perm = torch.randperm(16, generator=make_generator(5))
    student = MLP(12, (16,), 4)
    with torch.no_grad():  # student hidden unit perm[j] is teacher unit j
        student.fc0.weight[perm] = w.teacher.fc0.weight
        student.fc0.bias[perm] = w.teacher.fc0.bias
        student.out.weight[:, perm] = w.teacher.out.weight
        student.out.bias.copy_(w.teacher.out.bias)
    found = match_hidden_units(student, w.teacher, w.sample(512, generator=make_generator(0)).inputs)
    alive = w.support["fc0"].any(1) & w.support["out"].any(0)  # dead teacher units have no activation to match
    assert torch.equal(found["fc0"][alive], perm[alive])
    masks = {"fc0": student.fc0.weight != 0, "out": student.out.weight != 0}
    assert support_recovery(masks, w.support, {"fc0": perm}) == 1.0
    half = {"fc0": w.support["fc0"].clone(), "out": torch.zeros(4, 16, dtype=torch.bool)}
    assert support_recovery(half, w.support) == 48 / 64


def test_magnitude_pruning_of_a_dense_student_recovers_the_support():
    w = SparseTeacherWorld(SparseTeacherConfig(seed=0))
    data = w.sample(4096, generator=make_generator(100))
    student = MLP(12, (16,), 4, generator=make_generator(200))
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    g = make_generator(300)
    for _ in range(1000):
        idx = torch.randint(4096, (256,), generator=g)
        loss = ((student(data.inputs[idx]) - data.targets[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    masks = magnitude_masks({n: student.get_submodule(n).weight for n in w.support}, w.sparsity, scope="global")
    perms = match_hidden_units(student, w.teacher, data.inputs[:1024])
    recovered = support_recovery(masks, w.support, perms)
    random = support_recovery(prune_lowest({n: torch.rand(m.shape, generator=g) for n, m in masks.items()},
                                           w.sparsity), w.support, perms)
    # measured (seeds 0-2, 1500 steps): magnitude 0.78 / 0.72 / 0.78, random 0.31 / 0.28 / 0.27
    # (random keeps the density, 0.25, in expectation); here (1000 steps, seed 0)
    # 0.75 vs 0.30.
    assert recovered >= 0.65
    assert recovered - random >= 0.3
