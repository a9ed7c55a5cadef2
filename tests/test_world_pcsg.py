"""Tests of the percolation PCSG world (Lubana et al. 2025, "A Percolation Model of Emergence").

The labels and :meth:`PCSGWorld.check` are compared with a brute-force checker written here from the
grammar's regular form (``re``) and the type rules, independent of the module's Earley parse; the
percolation numbers with a union-find written here.
"""

from __future__ import annotations

import functools
import itertools
import math
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from assay.cli import app
from assay.config import ConfigError
from assay.worlds import registry
from assay.worlds.base import make_generator
from assay.worlds.pcsg import SYMBOLS, PCSGConfig, PCSGWorld

# The syntax is regular: S = Ph NP VP EOS, NP = subj (Conj subj)*, VP = V (Conj V)*,
# V = descPreP descV | relV relPreP obj (Conj obj)*. One letter per symbol (order of SYMBOLS):
LETTER = dict(zip(SYMBOLS, "PsdvrpocE"))
SENTENCE = re.compile(r"Ps(cs)*(dv|rpo(co)*)(c(dv|rpo(co)*))*E")
FUNCTION = {"[P]": "P", "is": "d", "has": "d", "on": "p", "in": "p", "to": "p", "and": "c", "or": "c", "<eos>": "E"}


def letters(world: PCSGWorld, words: list[str], roles: tuple[str, ...]) -> str:
    """Symbol letters of ``words`` with entity roles ``roles`` ('s' or 'o', in order of appearance)."""
    it = iter(roles)
    return "".join(FUNCTION.get(w) or (next(it) if w[0] == "e" else {"p": "v", "r": "r"}[w[0]]) for w in words)


@functools.cache
def viable(prefix: str) -> bool:
    """Some sentence starts with ``prefix`` (every viable prefix completes within 4 symbols)."""
    return any(SENTENCE.fullmatch(prefix + "".join(tail)) for k in range(5)
               for tail in itertools.product("PsdvrpocE", repeat=k))


def brute_parse(world: PCSGWorld, words: list[str]) -> tuple[str, list[int]] | None:
    """The (unique) letter string under which ``words`` is grammatical and the per-word type check
    (1/0 at typed slots, −1 elsewhere); None when ungrammatical."""
    n_ent = sum(w.startswith("e") for w in words)
    parses = [s for roles in itertools.product("so", repeat=n_ent)
              if SENTENCE.fullmatch(s := letters(world, words, roles))]
    if not parses:
        return None
    assert len(parses) == 1
    return parses[0], slot_checks(world, words, parses[0])


def slot_checks(world: PCSGWorld, words: list[str], sym: str) -> list[int]:
    ec, pc, rc, ro = (x.tolist() for x in (world.entity_class, world.property_class, world.relation_class,
                                            world.relation_objects))
    cls, rel, out = None, None, []
    for w, s in zip(words, sym):
        i = int(w[1:]) if w[0] in "epr" and w[1:].isdigit() else None
        if s == "s":
            cls = ec[i] if cls is None else cls
            out.append(int(ec[i] == cls))
        elif s == "v":
            out.append(int(pc[i] == cls))
        elif s == "r":
            rel = i
            out.append(int(rc[i] == cls))
        elif s == "o":
            out.append(int(ro[rel][ec[i]]))
        else:
            out.append(-1)
    return out


def sentences(world: PCSGWorld, batch) -> list[list[str]]:
    """Each row's words after ``<bos>``, up to and including ``<eos>`` (the targets)."""
    return [[world.vocab[int(t)] for t in row[row != -100]] for row in batch.targets]


def small(**kw) -> PCSGWorld:
    return PCSGWorld(PCSGConfig(n_entities=8, n_classes=2, n_properties=6, n_relations=2, max_len=14, **kw))


# ----------------------------------------------------------------------------- labels vs brute force


@pytest.mark.parametrize("negative", [0.0, 1.0])
def test_labels_match_brute_force(negative):
    w = small(negative_fraction=negative)
    b = w.sample(40, generator=make_generator(1))
    for i, words in enumerate(sentences(w, b)):
        parsed = brute_parse(w, words)
        assert parsed is not None, words
        sym, slots = parsed
        n = len(words)
        assert b.labels["symbol"][i, 1:n].tolist() == [SYMBOLS.index(next(k for k, v in LETTER.items() if v == c))
                                                      for c in sym[:-1]]
        assert b.labels["type_ok"][i, 1:n].tolist() == slots[:-1]
        ents = [int(x[1:]) if c in "so" else -1 for x, c in zip(words, sym)]
        assert b.labels["entity"][i, 1:n].tolist() == ents[:-1]
        assert b.labels["class"][i, 1:n].tolist() == [int(w.entity_class[e]) if e >= 0 else -1 for e in ents[:-1]]
        props = [int(x[1:]) if c == "v" else -1 for x, c in zip(words, sym)]
        assert b.labels["property"][i, 1:n].tolist() == props[:-1]
        # a negative sample violates exactly one slot, a positive none
        assert slots.count(0) == int(negative) and int(b.labels["sentence_ok"][i]) == 1 - int(negative)
        check = w.check(b.targets[i][b.targets[i] != -100])
        assert check.grammatical and check.type_ok == (negative == 0) and list(check.slot_ok) == slots


def test_next_token_sets_match_brute_force():
    w = small()
    b = w.sample(12, generator=make_generator(2))
    for i, words in enumerate(sentences(w, b)):
        sym, _ = brute_parse(w, words)
        for t in range(len(words)):  # the state after <bos> and t words
            valid = b.labels["valid_next"][i, t].nonzero().flatten().tolist()
            typed = b.labels["typed_next"][i, t].nonzero().flatten().tolist()
            exp_valid, exp_typed = [], []
            in_vp = any(c in "dr" for c in sym[:t])
            for v, tok in enumerate(w.vocab):
                if tok in ("<pad>", "<bos>", "<sep>"):
                    continue
                role = ("o" if in_vp else "s",) if tok.startswith("e") else ()
                ext = sym[:t] + letters(w, [tok], role)
                if viable(ext):
                    exp_valid.append(v)
                    if t == 0 or slot_checks(w, words[:t] + [tok], ext)[-1] != 0:
                        exp_typed.append(v)
            assert valid == exp_valid, (words[:t], t)
            assert typed == exp_typed, (words[:t], t)


def test_check_matches_brute_force_on_corrupted_sentences():
    w = small()
    b = w.sample(60, generator=make_generator(3))
    rng = np.random.default_rng(0)
    n_gram = n_typed = 0
    for words in sentences(w, b):
        words = list(words)
        for _ in range(rng.integers(1, 3)):  # replace one or two words by random tokens
            words[rng.integers(len(words) - 1)] = w.vocab[rng.integers(4, len(w.vocab))]
        parsed = brute_parse(w, words)
        got = w.check(w.encode(words))
        assert got.grammatical == (parsed is not None), words
        if parsed is not None:
            assert got.type_ok == (0 not in parsed[1]) and list(got.slot_ok) == parsed[1]
            n_gram += 1
            n_typed += got.type_ok
    assert 5 < n_gram < 60 and 0 < n_typed < n_gram  # both outcomes were exercised
    assert not w.check(w.encode(["[P]", "e0", "is", "p0"])).grammatical  # no <eos>


def test_splits_use_their_pairs_and_pair_density():
    cfg = dict(n_entities=40, n_classes=2, n_properties=40, pair_density=0.3)
    worlds = {s: PCSGWorld(PCSGConfig(split=s, **cfg)) for s in ("train", "heldout", "all")}
    w = worlds["train"]
    assert torch.equal(w.train_pairs, worlds["heldout"].train_pairs)  # one graph per seed
    frac = w.train_pairs.sum() / w.allowed.sum()  # binomial(800, 0.3): sd 0.016
    assert abs(float(frac) - 0.3) < 0.06 and not (w.train_pairs & ~w.allowed).any()
    expect = {"train": w.train_pairs, "heldout": w.allowed & ~w.train_pairs, "all": w.allowed}
    for split, world in worlds.items():
        b = world.sample(60, generator=make_generator(4))
        for words in sentences(world, b):
            subjects = [int(x[1:]) for x in words[: next(j for j, x in enumerate(words) if x in ("is", "has") or
                                                           x.startswith("r") or x == "<eos>")] if x.startswith("e")]
            for p in (int(x[1:]) for x in words if x.startswith("p")):
                assert all(expect[split][e, p] for e in subjects), (split, words)


# ----------------------------------------------------------------------------- percolation


def union_find_components(n_e: int, pairs: torch.Tensor) -> list[int]:
    parent = list(range(n_e + pairs.shape[1]))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for e, p in pairs.nonzero().tolist():
        parent[find(e)] = find(n_e + p)
    return [find(x) for x in range(len(parent))]


@pytest.mark.parametrize("q", [0.05, 0.2, 0.6])
def test_percolation_matches_union_find(q):
    w = PCSGWorld(PCSGConfig(n_entities=24, n_classes=3, n_properties=30, pair_density=q, seed=5))
    comp = union_find_components(24, w.train_pairs)
    held = (w.allowed & ~w.train_pairs).nonzero().tolist()
    connected = np.mean([comp[e] == comp[24 + p] for e, p in held])
    giant = []
    for c in range(3):
        nodes = [comp[e] for e in range(24) if w.entity_class[e] == c] + \
                [comp[24 + p] for p in range(30) if w.property_class[p] == c]
        giant.append(max(nodes.count(x) for x in nodes) / len(nodes))
    perc = w.percolation()
    assert perc.connected_heldout == pytest.approx(connected)
    assert perc.giant_fraction == pytest.approx(np.mean(giant))
    assert perc.bond_parameter == pytest.approx(q * math.sqrt(8 * 10))
    assert w.percolation_threshold == pytest.approx(1 / math.sqrt(80))


def test_heldout_type_auroc_on_planted_scores():
    w = PCSGWorld(PCSGConfig(pair_density=0.5))
    assert w.heldout_type_auroc(w.allowed.float()) == 1.0
    assert w.heldout_type_auroc(-w.allowed.float()) == 0.0
    assert w.heldout_type_auroc(w.train_pairs.float()) == 0.5  # held-out and disallowed tie
    noise = torch.randn(w.allowed.shape, generator=make_generator(0))
    assert abs(w.heldout_type_auroc(noise) - 0.5) < 0.15
    with pytest.raises(ValueError, match="n_entities, n_properties"):
        w.heldout_type_auroc(torch.zeros(3, 3))
    prompts = w.property_prompts()
    assert w.decode(prompts[5]) == ["<bos>", "[P]", "e5", "is"]


# ----------------------------------------------------------------------------- metrics, errors, determinism


def test_evaluate_on_planted_logits():
    w = PCSGWorld(PCSGConfig(object_density=1e-6))  # each relation allows one object class: wrong fillers exist
    b = w.sample(32, generator=make_generator(6))
    typed = b.labels["typed_next"].float()
    good = w.evaluate(typed * 10, b)
    assert good["grammar_acc"] == 1.0 and good["type_acc"] == 1.0
    cat = w.category[b.labels["next_symbol"].clamp_min(0)].float()
    bad = w.evaluate((cat - typed) * 10 + b.labels["valid_next"].float() * 5, b)  # valid but wrongly typed
    assert bad["grammar_acc"] == 1.0 and bad["type_acc"] == 0.0  # wrongly typed, still grammatical
    assert math.isclose(w.evaluate(torch.zeros(*b.inputs.shape, len(w.vocab)), b)["ce"], math.log(len(w.vocab)))


@pytest.mark.parametrize("overrides, match", [
    ({"n_properties": 3}, "no property"), ({"n_entities": 2}, "no entity"), ({"n_relations": 1}, "no relation"),
    ({"split": "heldout", "pair_density": 1.0}, "leaves no"), ({"n_classes": 1, "negative_fraction": 0.5}, "n_classes >= 2"),
    ({"vp_probs": (0.2, 0.2, 0.6)}, "vp_probs"), ({"np_conj": 0.5}, "np_conj"), ({"pair_density": 1.5}, "pair_density"),
])
def test_bad_configs_raise_clear_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        PCSGWorld(PCSGConfig(**overrides))


def test_same_seed_same_world_and_batches():
    a, b = PCSGWorld(PCSGConfig(seed=3)), PCSGWorld(PCSGConfig(seed=3))
    assert torch.equal(a.train_pairs, b.train_pairs) and torch.equal(a.relation_objects, b.relation_objects)
    assert not torch.equal(a.entity_class, PCSGWorld(PCSGConfig(seed=4)).entity_class)
    x, y = a.sample(16, generator=make_generator(0)), b.sample(16, generator=make_generator(0))
    assert torch.equal(x.inputs, y.inputs) and all(torch.equal(x.labels[k], y.labels[k]) for k in x.labels)
    assert not torch.equal(x.inputs, a.sample(16, generator=make_generator(1)).inputs)
    packed = a.pack(4, 48, generator=make_generator(0))  # <eos> separators carry the next sentence's start
    sep = packed.inputs == a.eos_id
    assert packed.inputs.shape == (4, 48) and sep.any()
    assert (packed.labels["next_symbol"][sep] == SYMBOLS.index("Ph")).all()
    assert (packed.targets[sep] == a.token_id("[P]")).all()


def test_registry_and_cli():
    w = registry.make("pcsg", n_properties=8)
    assert isinstance(w, PCSGWorld) and w.config.n_properties == 8
    ref = w.reference_model()
    assert ref["context"] >= w.config.max_len and w.acceptance == ("type_acc", 0.95)
    runner = CliRunner()
    out = runner.invoke(app, ["world", "sample", "pcsg", "--n", "2"])
    assert out.exit_code == 0 and "type_ok" in out.output, out.output
    out = runner.invoke(app, ["world", "sample", "pcsg", "--n", "1", "--set", "n_properties=2"])
    assert out.exit_code != 0 and "n_properties=2 < n_classes=4" in out.output
