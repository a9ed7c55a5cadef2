import math

import pytest
import torch

from assay.config import ConfigError
from assay.worlds.base import SequenceWorld, make_generator
from assay.worlds.pcfg import (
    EnglishConfig,
    EnglishWorld,
    ExprConfig,
    ExprWorld,
    Grammar,
    earley,
    expr_grammar,
    expr_labels,
    recognise,
)
from assay.worlds.vocab import IGNORE

ARITY = {"dig": 0, "un": 1, "bin": 2, "tern": 3}


def _arity(tok: str) -> int:
    return ARITY[tok.rstrip("0123456789")]


def _evaluate(tokens: list[str], i: int = 0) -> tuple[int, int]:
    """Independent recursive evaluator of a prefix expression: (value, next index)."""
    head = tokens[i].rstrip("0123456789")
    j = int(tokens[i][len(head):])
    args, k = [], i + 1
    for _ in range(ARITY[head]):
        v, k = _evaluate(tokens, k)
        args.append(v)
    if head == "dig":
        return j, k
    if head == "un":
        return (args[0] + j + 1) % 10, k
    if head == "bin":
        return (args[0] + args[1] + j) % 10, k
    return (args[0] * args[1] + args[2] + j) % 10, k


def test_expr_check_values():
    lab = expr_labels("bin0 un1 dig3 tern2 dig1 dig2 dig0".split())
    assert lab["need"] == [2, 2, 1, 3, 2, 1, 0]
    assert lab["depth"] == [1, 2, 1, 1, 1, 1, 0]
    assert lab["parent_arity"] == [-1, 2, 1, 2, 3, 3, 3]
    assert lab["slot"] == [-1, 0, 0, 1, 0, 1, 2]
    # un1(3) = 5; tern2(1, 2, 0) = 4; bin0(5, 4) = 9
    assert lab["value"] == [-1, -1, 5, -1, 1, 2, 9]


def test_expr_samples_parse_and_labels_are_consistent():
    w = ExprWorld()
    assert isinstance(w, SequenceWorld)
    g = w.grammar
    b = w.sample(150, generator=make_generator(0))
    for i in range(150):
        toks = w.decode(b.inputs[i])[1:]
        assert recognise(g, toks)
        assert not recognise(g, toks[:-1])  # a proper prefix of a prefix expression is incomplete
        assert not recognise(g, toks + ["dig0"])
        n = len(toks)
        assert b.targets[i, n].item() == w.eos_id
        assert b.labels["value"][i, n].item() == _evaluate(toks)[0]
        need, pending, enclosing = 1, [], []
        for tok in toks:  # operators enclosing each token, by an independent walk
            enclosing.append(len(pending))  # operators whose subtree is still open
            if _arity(tok):
                pending.append(_arity(tok))
            else:  # a digit completes sub-trees upwards
                while pending:
                    pending[-1] -= 1
                    if pending[-1]:
                        break
                    pending.pop()
            need += _arity(tok) - 1
        assert b.labels["need"][i, n].item() == need == 0
        want_depth = [(3 if _arity(t) == 0 else 4) + 2 * e for t, e in zip(toks, enclosing)]
        assert b.labels["parse_depth"][i, 1 : n + 1].tolist() == want_depth
        # valid_next in closed form agrees with the Earley chart
        expected, complete = earley(g, toks)
        for t in range(n + 1):
            want = {w.token_id(s) for s in expected[t]} | ({w.eos_id} if complete[t] else set())
            assert set(torch.nonzero(b.labels["valid_next"][i, t]).flatten().tolist()) == want


def test_expr_length_statistics():
    w = ExprWorld()
    lengths = torch.tensor([len(d.tokens) - 2 for d in w.docs(3000, generator=make_generator(1))], dtype=torch.float64)
    assert abs((lengths == 1).double().mean().item() - 0.6) < 0.03
    assert abs(lengths.mean().item() - 1 / (1 - 0.4 * 2.01)) < 0.5  # 5.10 (heavy-tailed, truncated at 128)


def test_english_samples_parse_and_valid_next_contains_truth():
    w = EnglishWorld()
    b = w.sample(80, generator=make_generator(2))
    nt = w.nonterminals
    for i in range(80):
        toks = w.decode(b.inputs[i])[1:]
        n = len(toks)
        assert recognise(w.grammar, toks)
        assert not recognise(w.grammar, toks[:1])  # a lone subject is not a sentence
        for t in range(n + 1):
            assert b.labels["valid_next"][i, t, b.targets[i, t]]
        assert nt[b.labels["parent"][i, 1].item()] == "NP"  # the first word is inside the subject NP
        anc = b.labels["ancestors"][i]
        assert anc[1 : n + 1, nt.index("S")].all()
    assert recognise(w.grammar, "the dog sees".split()) is False
    assert recognise(w.grammar, "big dog sees cat quickly".split()) is True


def test_pack_and_seed():
    w = ExprWorld()
    a = w.pack(6, 32, generator=make_generator(3))
    assert a.inputs.shape == (6, 32) and (a.targets != IGNORE).all()
    eos = a.inputs == w.eos_id
    assert (a.labels["need"][eos] == 1).all()  # the separator restarts the state
    assert torch.equal(a.inputs, w.pack(6, 32, generator=make_generator(3)).inputs)
    assert not torch.equal(a.inputs, w.pack(6, 32, generator=make_generator(4)).inputs)


@pytest.mark.parametrize("world", [ExprWorld(), EnglishWorld()])
def test_evaluate_perfect_and_uniform(world):
    b = world.pack(20, 32, generator=make_generator(5))
    valid = b.labels["valid_next"]
    m = world.evaluate(torch.where(valid, 0.0, -30.0), b)
    assert m["valid_next_acc"] == 1.0 and m["valid_mass"] > 0.999
    u = world.evaluate(torch.zeros(valid.shape), b)
    assert abs(u["valid_mass"] - valid.float().sum(-1).mean().item() / len(world.vocab)) < 1e-6
    assert u["valid_next_acc"] == 0.0  # argmax of a tie is <pad>, never valid
    assert abs(u["ce"] - math.log(len(world.vocab))) < 1e-9
    assert world.acceptance == ("valid_next_acc", 0.95)


def test_bad_configs_and_grammars():
    with pytest.raises(ConfigError, match="grow without bound"):
        ExprConfig(p_op=0.6)
    with pytest.raises(ConfigError, match="n_digits"):
        ExprConfig(n_digits=0)
    with pytest.raises(ConfigError, match="arity_probs"):
        ExprConfig(arity_probs=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="words_per_category"):
        EnglishConfig(words_per_category=0)
    with pytest.raises(ValueError, match="sum to 1"):
        Grammar("S", {"S": ((("a",), 0.5),)})
    with pytest.raises(ValueError, match="start symbol"):
        Grammar("X", {"S": ((("a",), 1.0),)})
    assert expr_grammar(ExprConfig(n_digits=3)).terminals[:4] == ("dig0", "dig1", "dig2", "un0")
