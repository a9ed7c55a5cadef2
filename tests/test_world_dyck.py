import math

import pytest
import torch

from assay.config import ConfigError
from assay.worlds.base import SequenceWorld, make_generator
from assay.worlds.dyck import DyckConfig, DyckWorld, dyck_states
from assay.worlds.vocab import IGNORE


def _stack_walk(tokens: list[str]):
    """Independent reference: depth/top/partner of each bracket token string."""
    stack, depth, top, partner = [], [], [], {}
    for t, tok in enumerate(tokens):
        if tok.startswith("o"):
            stack.append((t, tok[1:]))
        else:
            j, kind = stack.pop()
            assert kind == tok[1:], "unbalanced"
            partner[j], partner[t] = t, j
        depth.append(len(stack))
        top.append(int(stack[-1][1]) if stack else -1)
    assert not stack
    return depth, top, partner


def _length_distribution(cfg: DyckConfig, max_len: int) -> list[float]:
    """P(string has L brackets) for L <= max_len, by dynamic programming over the grammar."""
    ps, pb = [0.0] * (max_len + 1), [0.0] * (max_len + 1)
    for L in range(2, max_len + 1, 2):
        pb[L] = (1 - cfg.p_nest) * (L == 2) + cfg.p_nest * ps[L - 2]
        conc = sum(ps[a] * ps[L - a] for a in range(2, L - 1, 2))
        ps[L] = cfg.p_concat * conc + (1 - cfg.p_concat) * pb[L]
    return ps


def test_spec_check_values():
    s = dyck_states([0, 2, 3, 0, 1, 1], k=2)  # o0 o1 c1 o0 c0 c0
    assert s["depth"] == [1, 2, 1, 2, 1, 0]
    assert s["top"] == [0, 1, 0, 0, 0, -1]
    assert s["matching_pos"] == [5, 2, 1, 4, 3, 0]
    with pytest.raises(ValueError, match="unbalanced"):
        dyck_states([0, 3], k=2)


def test_length_distribution_matches_grammar():
    cfg = DyckConfig()
    p = _length_distribution(cfg, 128)
    assert abs(sum(p) - 0.954) < 1e-3  # spec: 95.4% of samples <= 128 tokens
    w = DyckWorld(cfg)
    rng_docs = w.docs(4000, generator=make_generator(0))
    lengths = torch.tensor([len(d.tokens) - 2 for d in rng_docs], dtype=torch.float64)
    z = sum(p)
    mean = sum(L * q for L, q in enumerate(p)) / z
    sd = math.sqrt(sum(L * L * q for L, q in enumerate(p)) / z - mean**2)
    assert abs(lengths.mean().item() - mean) < 4 * sd / math.sqrt(4000)
    assert abs((lengths == 2).double().mean().item() - p[2] / z) < 0.03
    assert lengths.max() <= 128


def test_strings_balanced_and_labels_match_stack_walk():
    w = DyckWorld(DyckConfig(k=3))
    assert isinstance(w, SequenceWorld)
    b = w.sample(60, generator=make_generator(1))
    V = len(w.vocab)
    for i in range(60):
        toks = w.decode(b.inputs[i])
        assert toks[0] == "<bos>"
        body = toks[1:]
        depth, top, partner = _stack_walk(body)
        n = len(body)
        assert b.targets[i, n].item() == w.eos_id
        assert b.labels["depth"][i, 1 : n + 1].tolist() == depth
        assert b.labels["top"][i, 1 : n + 1].tolist() == top
        assert b.labels["matching_pos"][i, 1 : n + 1].tolist() == [partner[t] + 1 for t in range(n)]
        assert (b.labels["depth"][i, n + 1 :] == -1).all()  # padding
        # valid_next: opens always; the close of the top; eos iff depth 0
        for t in range(n + 1):
            d, tp = (0, -1) if t == 0 else (depth[t - 1], top[t - 1])
            want = {w.token_id(f"o{j}") for j in range(3)}
            if d > 0:
                want.add(w.token_id(f"c{tp}"))
            elif t > 0:
                want.add(w.eos_id)
            got = set(torch.nonzero(b.labels["valid_next"][i, t]).flatten().tolist())
            assert got == want
            assert b.labels["valid_next"][i, t, b.targets[i, t]]  # the real continuation is valid
            assert b.labels["forced_close"][i, t].item() == int(w.vocab[b.targets[i, t]].startswith("c"))
    assert b.labels["valid_next"].shape == (60, b.inputs.shape[1], V)


def test_pack_rows_and_shifted_positions():
    w = DyckWorld()
    b = w.pack(8, 40, generator=make_generator(2))
    assert b.inputs.shape == b.targets.shape == (8, 40)
    assert (b.targets != IGNORE).all()
    assert torch.equal(b.inputs[:, 1:], b.targets[:, :-1])
    for i in range(8):
        for t in range(40):
            m = b.labels["matching_pos"][i, t].item()
            if 0 <= m < 40:
                assert b.labels["matching_pos"][i, m].item() == t
                assert b.inputs[i, m].item() != b.inputs[i, t].item()
            if b.inputs[i, t].item() == w.eos_id:  # separator carries the start state
                assert b.labels["depth"][i, t].item() == 0
                assert not b.labels["valid_next"][i, t, w.eos_id]


def test_seeded():
    w = DyckWorld()
    a, b = w.sample(16, generator=make_generator(5)), w.sample(16, generator=make_generator(5))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels["valid_next"], b.labels["valid_next"])
    c = w.sample(16, generator=make_generator(6))
    assert a.inputs.shape != c.inputs.shape or not torch.equal(a.inputs, c.inputs)


def test_evaluate_perfect_and_uniform():
    w = DyckWorld()
    b = w.sample(200, generator=make_generator(3))
    valid = b.labels["valid_next"]
    perfect = torch.where(valid, 0.0, -30.0)
    m = w.evaluate(perfect, b)
    assert m["close_acc"] == 1.0 and m["valid_next_acc"] == 1.0 and m["valid_mass"] > 0.999
    uni = w.evaluate(torch.zeros(valid.shape), b)
    scored = b.targets != IGNORE
    assert abs(uni["valid_mass"] - valid[scored].float().sum(-1).mean().item() / len(w.vocab)) < 1e-6
    assert abs(uni["close_acc"] - 0.5) < 0.1  # chance for k = 2
    assert abs(uni["ce"] - math.log(len(w.vocab))) < 1e-9
    assert w.acceptance == ("close_acc", 0.98)
    with pytest.raises(ValueError, match="logits must be"):
        w.evaluate(torch.zeros(2, 3, 4), b)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"k": 0}, "k"), ({"p_nest": 1.5}, "p_nest"), ({"max_len": -1}, "max_len"),
     ({"p_concat": 0.45, "p_nest": 0.5}, "supercritical")],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DyckConfig(**kwargs)
