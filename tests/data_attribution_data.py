"""Shared test data for the training-data attribution tests: seeded generators, a tiny MLP, random
classification data, per-example gradients by a Python loop (the naive reference)."""

from __future__ import annotations

import torch
from torch import nn


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # test-local model init only
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def random_data(n: int, seed: int, d: int = 5, c: int = 3):
    g = gen(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


def loop_grads(model, x, y, out_fn, names=None):
    params = [p for n, p in model.named_parameters() if names is None or n in names]
    rows = []
    for i in range(x.shape[0]):
        v = out_fn(model(x[i : i + 1]), y[i : i + 1]).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, params)]))
    return torch.stack(rows)
