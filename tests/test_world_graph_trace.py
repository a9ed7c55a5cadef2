import math

import pytest
import torch

from assay.config import ConfigError
from assay.evaluate.graph_energy import (
    dirichlet_energy,
    laplacian,
    mixed_random_energy,
    normalized_dirichlet_energy,
)
from assay.worlds import registry
from assay.worlds.base import make_generator
from assay.worlds.graph_trace import GraphTraceConfig, GraphTraceWorld


def test_dirichlet_energy_hand_values():
    path = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    x = torch.tensor([[0.0], [1.0], [3.0]])
    # E = 2·((0−1)² + (1−3)²) = 10; centred x̃ = (−4/3, −1/3, 5/3): tr(x̃ᵀLx̃) = 1 + 4 = 5, ‖x̃‖² = 42/9
    assert dirichlet_energy(x, path) == pytest.approx(10.0)
    assert normalized_dirichlet_energy(x, path) == pytest.approx(5 / (42 / 9)) == pytest.approx(1.071429, abs=1e-6)
    w = GraphTraceWorld()
    A = w.adjacency
    assert int(A.sum()) == 48 and float(torch.trace(laplacian(A))) == 48  # 24 edges
    assert normalized_dirichlet_energy(w.coords, A) == pytest.approx(0.6)
    evals, evecs = torch.linalg.eigh(laplacian(A))
    assert evals[1].item() == pytest.approx(0.585786, abs=1e-6)
    assert normalized_dirichlet_energy(evecs[:, 1:3], A) == pytest.approx(0.585786, abs=1e-6)  # spectral embedding
    ring = GraphTraceWorld(GraphTraceConfig(graph="ring", ring_size=10))
    assert normalized_dirichlet_energy(ring.coords, ring.adjacency) == pytest.approx(0.381966, abs=1e-6)
    # isotropic random vectors: E[Ê] ≈ tr L/(N − 1) = 3.2
    X = torch.randn(16, 4096, generator=make_generator(0), dtype=torch.float64)
    assert normalized_dirichlet_energy(X, A) == pytest.approx(3.2, abs=0.05)
    with pytest.raises(ValueError, match="symmetric"):
        laplacian(torch.tensor([[0, 1], [0, 0]]))


def test_mixed_random_energy_closed_forms_and_monte_carlo():
    grid = GraphTraceWorld().adjacency
    A = grid.double()
    eye = torch.eye(16, dtype=torch.float64)
    assert mixed_random_energy(eye, grid) == pytest.approx(3.2)  # M = I: tr L/(N − 1) = 48/15
    # one round of neighbour mixing x_i + mean_{j∼i} x_j: the spec's exact 1.815245
    assert mixed_random_energy(eye + A / A.sum(1, keepdim=True), grid) == pytest.approx(1.815245, abs=1e-6)
    # successor code M = A on a ring of 8: eigenvalues of A are 2cos θ_k; Σ_{k≠0} cos²θ_k (2 − 2cos θ_k) /
    # Σ_{k≠0} cos²θ_k = 8/3 (above the random 16/7)
    ring = GraphTraceWorld(GraphTraceConfig(graph="ring", ring_size=8)).adjacency
    assert mixed_random_energy(ring.double(), ring) == pytest.approx(8 / 3)
    # Monte Carlo: Ê of M U with wide Gaussian U tends to the limit
    U = torch.randn(8, 8192, generator=make_generator(1), dtype=torch.float64)
    assert normalized_dirichlet_energy(ring.double() @ U, ring) == pytest.approx(8 / 3, abs=0.05)
    assert math.isnan(mixed_random_energy(torch.ones(8, 8), ring))  # C M = 0: every x_i equal
    with pytest.raises(ValueError, match="square"):
        mixed_random_energy(torch.ones(8, 3), ring)


def test_walks_follow_the_graph_with_a_fresh_token_map():
    w = GraphTraceWorld(GraphTraceConfig(seq_len=64))
    b = w.sample(200, generator=make_generator(0))
    assert torch.equal(b.inputs, w.sample(200, generator=make_generator(0)).inputs)
    node, tok = b.labels["node"], b.labels["token_of_node"]
    assert (tok.sort(1).values.diff(1) > 0).all()  # injective per sequence
    assert len({tuple(r) for r in tok.tolist()}) > 190  # fresh per sequence
    # independent: grid neighbours are cells at Manhattan distance 1
    rc = torch.stack([node[:, 1:] // 4, node[:, 1:] % 4], -1)
    assert ((rc[:, 1:] - rc[:, :-1]).abs().sum(-1) == 1).all()
    assert torch.equal(tok.gather(1, node[:, 1:]), b.inputs[:, 1:])
    nxt = b.targets[:, 1:]
    assert b.labels["valid_next"][:, 1:].gather(2, nxt[..., None]).all()  # the actual next token is valid
    cells = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1).reshape(16, 2)
    n_valid = b.labels["valid_next"][:, 1:].sum(-1)
    expect = ((cells[:, None] - cells[None]).abs().sum(-1) == 1).sum(1)[node[:, 1:]]
    assert torch.equal(n_valid, expect) and torch.equal(b.labels["degree"][:, 1:], expect)
    # node visits approach the stationary distribution deg / 2|E|
    freq = torch.bincount(node[:, 1:].flatten(), minlength=16).double() / node[:, 1:].numel()
    assert torch.allclose(freq, w.adjacency.sum(1).double() / 48, atol=0.01)


def test_class_means_and_evaluate():
    w = GraphTraceWorld(GraphTraceConfig(graph="ring", ring_size=6, n_tokens=12, seq_len=40))
    b = w.sample(8, generator=make_generator(2))
    h = torch.randn(8, 40, 3, generator=make_generator(3))
    means, present = w.class_means(h, b, 10, 40)
    i = 0
    for j in range(6):
        sel = b.labels["node"][i, 10:40] == j
        assert present[i, j] == sel.any()
        if sel.any():
            assert torch.allclose(means[i, j], h[i, 10:40][sel].double().mean(0))
    # the valid-next predictor puts all mass on valid tokens; a uniform one puts 2/V there
    logits = torch.where(b.labels["valid_next"], 30.0, 0.0)
    assert w.evaluate(logits, b)["valid_mass"] > 0.999
    assert w.evaluate(torch.zeros_like(logits), b)["valid_mass"] == pytest.approx(2 / len(w.vocab))
    assert registry.make("graph_trace", graph="ring").config.n_nodes == 10


@pytest.mark.parametrize("kw, match", [
    ({"n_tokens": 8}, "distinct tokens"),
    ({"rows": 1, "cols": 1}, "at least 2 cells"),
    ({"graph": "ring", "ring_size": 2}, "ring_size"),
])
def test_impossible_configs_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        GraphTraceConfig(**kw)
