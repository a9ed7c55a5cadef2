"""The cyclic knowledge graph world of Nishi et al. 2025 against its planted rings."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from assay.cli import app
from assay.config import ConfigError
from assay.worlds import registry
from assay.worlds.base import make_generator
from assay.worlds.knowledge_graph import KnowledgeGraphConfig, KnowledgeGraphWorld
from assay.worlds.vocab import BOS, IGNORE


def _rel(world, name):
    return world.relation_names.index(name)


def test_relations_are_rotations_of_their_ring_and_compose_to_the_identity():
    w = KnowledgeGraphWorld()
    N = w.config.n_entities
    assert w.config.n_relations == 24 and sum(t[:1] in "IV" for t in w.vocab[4 + N:]) == 24
    e = torch.arange(N)
    # spec check: (I, +2) then (I, −2) returns the start entity, for every entity and every order
    for o in ("I", "II", "III"):
        assert torch.equal(w.facts[w.facts[e, _rel(w, f"{o}+2")], _rel(w, f"{o}-2")], e)
        # (o, +1) applied twice is (o, +2); each relation is a bijection
        once = w.facts[e, _rel(w, f"{o}+1")]
        assert torch.equal(w.facts[once, _rel(w, f"{o}+1")], w.facts[e, _rel(w, f"{o}+2")])
    assert all(len(set(w.facts[:, r].tolist())) == N for r in range(24))
    # the object is h steps along the ring, computed independently from the order lists
    orders = w.orders.tolist()
    for r, name in enumerate(w.relation_names):
        o = ("I", "II", "III").index(name[:-2])
        h = int(name[-1]) * (1 if name[-2] == "+" else -1)
        assert (w.relation_order[r].item(), w.relation_shift[r].item()) == (o, h)
        for x in (0, 5, 63):
            assert w.facts[x, r].item() == orders[o][(orders[o].index(x) + h) % N]
    assert torch.equal(w.facts[w.facts[e][:, torch.arange(24)], w.inverse[None].expand(N, 24)], e[:, None].expand(N, 24))


def test_walks_follow_the_facts_and_label_every_token():
    w = registry.make("knowledge_graph")
    b = w.sample(8, generator=make_generator(0))
    assert b.inputs.shape == (8, 31) and (b.inputs[:, 0] == BOS).all()
    ent, rel = b.labels["entity"], b.labels["relation"]
    for i in range(8):
        for t in range(2, 31, 2):
            assert b.targets[i, t].item() == w.entity_token(w.facts[ent[i, t - 1], rel[i, t]]).item()
        assert (b.targets[i, 1::2] == IGNORE).all()
        for o, name in enumerate(("I", "II", "III")):
            pos = b.labels[f"position_{name}"][i, 1::2]
            assert torch.equal(w.orders[o][pos], ent[i, 1::2])
    again = w.sample(8, generator=make_generator(0))
    assert torch.equal(again.inputs, b.inputs)
    logits = torch.nn.functional.one_hot(b.targets.clamp_min(0), len(w.vocab)).float()
    assert w.evaluate(logits, b) == {"fact_acc": 1.0}


def test_held_out_facts_are_never_stepped_in_training_and_are_scored_in_test():
    cfg = dict(n_entities=16, test_fraction=0.2, seed=3)
    train = KnowledgeGraphWorld(KnowledgeGraphConfig(**cfg))
    held = train.held_out
    assert held.any()
    # the inverse of a held-out fact is always trained (else neither could be inferred)
    N, R = held.shape
    assert not (held & held[train.facts, train.inverse[None].expand(N, R)]).any()
    b = train.sample(64, generator=make_generator(1))
    ent, rel = b.labels["entity"], b.labels["relation"]
    steps = held[ent[:, 1:-1:2], rel[:, 2::2]]
    assert not steps.any()
    test = KnowledgeGraphWorld(KnowledgeGraphConfig(**cfg, split="test"))
    bt = test.sample(64, generator=make_generator(2))
    scored = bt.targets[:, 2::2] != IGNORE
    stepped = held[bt.labels["entity"][:, 1:-1:2], bt.labels["relation"][:, 2::2]]
    assert torch.equal(scored, stepped) and scored.any()
    p = train.fact_prompts(torch.arange(16), torch.zeros(16, dtype=torch.long), n_contexts=3, context_steps=4,
                           generator=make_generator(4))
    toks = p.tokens[:, 1:-1]
    prev, r, nxt = toks[:, 0:-1:2] - 4, toks[:, 1::2] - 4 - 16, toks[:, 2::2] - 4
    assert not held[prev, r].any()
    assert torch.equal(train.facts[prev, r], nxt)


def test_fact_prompts_end_with_subject_and_relation_after_a_valid_walk():
    w = KnowledgeGraphWorld()
    subj, rel = torch.tensor([3, 40]), torch.tensor([5, 17])
    p = w.fact_prompts(subj, rel, n_contexts=5, context_steps=4, generator=make_generator(0))
    assert p.tokens.shape == (10, 11) and p.subject_position == 9
    assert torch.equal(p.tokens[:, 9], w.entity_token(subj.repeat_interleave(5)))
    assert torch.equal(p.tokens[:, 10], w.relation_token(rel.repeat_interleave(5)))
    assert torch.equal(p.target, w.entity_token(w.facts[subj, rel].repeat_interleave(5)))
    toks = p.tokens[:, 1:-1]
    assert torch.equal(w.facts[toks[:, 0:-1:2] - 4, toks[:, 1::2] - 68], toks[:, 2::2] - 4)
    assert len({tuple(t) for t in p.tokens[:5].tolist()}) > 1  # different contexts


def test_impossible_configurations_fail_clearly():
    with pytest.raises(ConfigError, match="too small"):
        KnowledgeGraphConfig(n_entities=8, max_hops=4)
    with pytest.raises(ConfigError, match="no held-out facts"):
        KnowledgeGraphConfig(split="test")
    with pytest.raises(ConfigError, match="test_fraction"):
        KnowledgeGraphConfig(test_fraction=0.6)
    with pytest.raises(ValueError, match="longer than the training walks"):
        KnowledgeGraphWorld().fact_prompts(torch.tensor([0]), torch.tensor([0]), context_steps=15,
                                           generator=make_generator(0))


def test_cli_lists_and_samples_the_world():
    runner = CliRunner()
    res = runner.invoke(app, ["world", "list"])
    assert res.exit_code == 0 and "knowledge_graph" in res.output
    res = runner.invoke(app, ["world", "sample", "knowledge_graph", "--n", "1", "--set", "n_entities=12",
                              "--set", "max_hops=2"])
    assert res.exit_code == 0, res.output
    assert "position_III" in res.output and "I+2" in res.output
