"""Bijections, graph navigation and cyclic concepts; registry and CLI."""

import math

import pytest
import torch
from typer.testing import CliRunner

from assay.cli import app
from assay.config import ConfigError
from assay.worlds import registry
from assay.worlds.base import SequenceWorld, make_generator
from assay.worlds.bijections import BijectionsConfig, BijectionsWorld, apply_composition
from assay.worlds.cyclic import CONCEPTS, CyclicConfig, CyclicWorld
from assay.worlds.graph import GraphConfig, GraphWorld, count_paths
from assay.worlds.vocab import IGNORE


def _perfect(batch, V):
    return torch.nn.functional.one_hot(batch.targets.clamp_min(0), V).float() * 30


# ----------------------------------------------------------------------------- bijections


def test_bijections_check_values():
    w = BijectionsWorld()
    B = w.bijections
    for s in range(5):
        assert torch.equal(B[s, 0], torch.arange(10))  # slot identity
        for f in range(5):
            assert torch.equal(torch.sort(B[s, f]).values, torch.arange(10))  # a bijection
    x = [3, 1, 4, 1, 5, 9]
    assert apply_composition(B, [0] * 5, list(range(5)), x)[-1] == x
    # a bijection followed by its inverse is the identity
    inv = torch.argsort(B[0, 2])
    both = torch.stack([B[0], torch.stack([inv] * 5)])
    assert apply_composition(both, [2, 0], [0, 1], x)[-1] == x


@pytest.mark.parametrize("fmt", ["step", "direct"])
def test_bijections_documents_follow_the_truth(fmt):
    w = BijectionsWorld(BijectionsConfig(format=fmt, order="random"))
    assert isinstance(w, SequenceWorld)
    b = w.sample(20, generator=make_generator(0))
    for i in range(20):
        f, order = b.labels["functions"][i].tolist(), b.labels["order"][i].tolist()
        assert sorted(order) == list(range(5))
        toks = w.decode(b.inputs[i]) + [w.vocab[b.targets[i, -1]]]
        assert toks[1:6] == [f"T{s}_{f[s]}" for s in order]
        x = [int(t[1:]) for t in toks[6:12]]
        ys = b.labels["intermediates"][i].tolist()
        assert ys[0] == x
        for j, s in enumerate(order):  # each step applies that slot's bijection token-wise
            assert ys[j + 1] == [w.bijections[s, f[s], t].item() for t in ys[j]]
        outs = [int(t[1:]) for t in toks[12:] if t.startswith("d")]
        assert outs == (sum(ys[1:], []) if fmt == "step" else ys[-1])
        assert b.labels["final"][i].tolist() == ys[-1]
    scored = b.targets != IGNORE
    assert not scored[:, :11].any() and scored.any(1).all()  # no loss on the prompt
    assert w.evaluate(_perfect(b, len(w.vocab)), b) == {"token_acc": 1.0, "answer_acc": 1.0}
    assert w.evaluate(torch.zeros(*b.inputs.shape, len(w.vocab)), b)["answer_acc"] == 0.0


def test_bijections_split_is_disjoint_and_seeded():
    cfg = BijectionsConfig(n_train=50)
    train, test = BijectionsWorld(cfg), BijectionsWorld(BijectionsConfig(n_train=50, split="test"))
    assert len(train.train_compositions) == 50 and len(train.test_compositions) == 3125 - 50
    used = {tuple(f) for f in train.sample(200, generator=make_generator(1)).labels["functions"].tolist()}
    allowed = {tuple(train.composition(c)) for c in train.train_compositions}
    assert used <= allowed
    held = {tuple(f) for f in test.sample(200, generator=make_generator(1)).labels["functions"].tolist()}
    assert not held & allowed
    a, b2 = train.sample(8, generator=make_generator(2)), train.sample(8, generator=make_generator(2))
    assert torch.equal(a.inputs, b2.inputs)
    assert not torch.equal(a.inputs, train.sample(8, generator=make_generator(3)).inputs)
    with pytest.raises(ConfigError, match="held-out"):
        BijectionsConfig(split="test")
    with pytest.raises(ConfigError, match="n_tokens"):
        BijectionsConfig(n_tokens=0)


# ----------------------------------------------------------------------------- graph


def test_count_paths_against_enumeration():
    w = GraphWorld(GraphConfig(n_layers=4, width=3, p_edge=0.5))
    adj = w.adjacency.numpy()

    def enum(u, g):
        return 1 if u == g else sum(enum(v, g) for v in range(len(adj)) if adj[u, v])

    P = count_paths(adj)
    for u in range(12):
        for g in range(12):
            assert P[u, g] == enum(u, g)
    assert (adj.sum(1)[:9] >= 1).all()  # every non-final node has an out-edge
    assert not adj[:, :3].any()  # nothing enters the first layer


def test_graph_paths_are_valid_and_labels_consistent():
    w = GraphWorld()
    b = w.sample(50, generator=make_generator(0))
    A = w.adjacency
    for i in range(50):
        toks = w.decode(b.inputs[i])  # <bos> g s <sep> path (the final <eos> is only a target)
        g, s = int(toks[1][1:]), int(toks[2][1:])
        assert toks[3] == "<sep>" and b.labels["goal"][i] == g and b.labels["start"][i] == s
        path = [int(t[1:]) for t in toks[4:]]
        assert path[0] == s and path[-1] == g
        assert all(A[u, v] for u, v in zip(path, path[1:]))
        n = len(path)
        assert b.targets[i, 3 + n].item() == w.eos_id
        assert b.labels["on_valid_path"][i, 4 : 4 + n].tolist() == [1] * n  # spec check
        assert b.labels["dist_to_goal"][i, 3 + n].item() == 0
        assert b.labels["n_paths_to_goal"][i, 4 : 4 + n].tolist() == [int(w.n_paths[v, g]) for v in path]
        scored = (b.targets[i] != IGNORE).nonzero().flatten()
        for t in scored.tolist():  # the real next step is always valid
            assert b.labels["valid_next"][i, t, b.targets[i, t]]
    m = w.evaluate(torch.where(b.labels["valid_next"], 0.0, -30.0), b)
    assert m["valid_step_acc"] == 1.0 and m["path_acc"] == 1.0
    assert w.evaluate(torch.zeros(*b.inputs.shape, len(w.vocab)), b)["valid_step_acc"] == 0.0


def test_graph_paths_are_uniform_over_all_paths():
    w = GraphWorld(GraphConfig(n_layers=3, width=3, p_edge=1.0, min_hops=2))
    b = w.sample(900, generator=make_generator(1))
    mids = b.labels["node"][:, 5]  # the single middle node of each 2-hop path
    counts = torch.bincount(mids, minlength=9)[3:6].double()
    assert (counts / counts.sum() - 1 / 3).abs().max() < 0.06  # 3 equally many paths via each


def test_graph_bad_config():
    with pytest.raises(ConfigError, match="min_hops"):
        GraphConfig(n_layers=3, max_hops=5)
    with pytest.raises(ConfigError, match="p_edge"):
        GraphConfig(p_edge=-0.1)
    with pytest.raises(ConfigError, match="n_layers"):
        GraphConfig(width=-2)


# ----------------------------------------------------------------------------- cyclic


def test_cyclic_prompts_answers_and_angles():
    w = CyclicWorld(CyclicConfig(concept="month", ops=("+", "-"), split="all"))
    assert len(w.train_prompts) + len(w.test_prompts) == 2 * 12 * 11
    b = w.sample(100, generator=make_generator(0))
    months = CONCEPTS["month"]
    for i in range(100):
        toks = w.decode(b.inputs[i])
        z, op, k = months.index(toks[1]), toks[2], int(toks[3])
        want = (z + k) % 12 if op == "+" else (z - k) % 12
        assert w.vocab[b.targets[i, 4]] == months[want] == toks[5]
        assert b.labels["answer"][i] == want
        assert abs(b.labels["angle"][i, 1].item() - 2 * math.pi * z / 12) < 1e-6
        assert math.isnan(b.labels["angle"][i, 2].item())
    assert w.evaluate(_perfect(b, len(w.vocab)), b)["answer_acc"] == 1.0
    assert w.evaluate(torch.zeros(*b.inputs.shape, len(w.vocab)), b)["answer_acc"] == 0.0


def test_cyclic_split_and_errors():
    train, test = CyclicWorld(), CyclicWorld(CyclicConfig(split="test"))
    assert len(test.test_prompts) == round(0.2 * 42) and not set(train.train_prompts) & set(train.test_prompts)
    seen = {(z, k) for z, k in zip(*(test.sample(64, generator=make_generator(0)).labels[n].tolist()
                                      for n in ("z", "k")))}
    assert seen <= {(z, k) for z, _, k in test.test_prompts}
    with pytest.raises(ConfigError, match="ops"):
        CyclicConfig(ops=("*",))
    with pytest.raises(ConfigError, match="test_fraction"):
        CyclicConfig(test_fraction=1.5)


# ----------------------------------------------------------------------------- registry and CLI


@pytest.mark.parametrize("name", ["dyck", "expr", "english", "markov", "bijections", "graph", "cyclic"])
def test_registry_builds_every_sequence_world(name):
    w = registry.make(name)
    assert isinstance(w, SequenceWorld)
    ref = w.reference_model()
    assert {"n_layers", "n_heads", "d_model", "context", "steps", "batch_size"} <= set(ref)
    metric, threshold = w.acceptance
    b = w.sample(4, generator=make_generator(0))
    assert metric in w.evaluate(torch.zeros(*b.inputs.shape, len(w.vocab)), b)
    assert 0 < threshold <= 1
    with pytest.raises(KeyError, match="unknown world"):
        registry.get("nope")


def test_cli_list_and_sample():
    runner = CliRunner()
    out = runner.invoke(app, ["world", "list"])
    assert out.exit_code == 0 and "dyck" in out.output and "superposition" in out.output
    out = runner.invoke(app, ["world", "sample", "cyclic", "--n", "2", "--seed", "0"])
    assert out.exit_code == 0, out.output
    assert out.output.count("# sample") == 2 and "angle" in out.output
    out = runner.invoke(app, ["world", "sample", "dyck", "--n", "1", "--set", "k=0"])
    assert out.exit_code != 0 and "k (bracket types)" in out.output
