"""The certificate, checked exhaustively: every adversarial addition of <= d tokens to a flagged harmful
prompt is flagged by erase-and-check (Kumar et al. 2024, Theorem 1), while the filter alone is fooled."""

import itertools

import pytest

from assay.safety.certificate import EraseConfig, erase_and_check
from tests.safety_toys import ToyFilter

VOCAB = (0, 1, 2, 3)


def prompts(max_len):
    for n in range(2, max_len + 1):
        yield from itertools.product(VOCAB, repeat=n)


def suffix_attacks(p, d):
    for n in range(d + 1):
        for adv in itertools.product(VOCAB, repeat=n):
            yield p + adv


def insertion_attacks(p, d, k):
    """k blocks of length <= d, each inserted at any position (inserting one after another covers all)."""
    out = {p}
    for _ in range(k):
        nxt = set()
        for q in out:
            for n in range(d + 1):
                for adv in itertools.product(VOCAB, repeat=n):
                    for pos in range(len(q) + 1):
                        nxt.add(q[:pos] + adv + q[pos:])
        out = nxt
    return out


def infusion_attacks(p, d):
    """<= d tokens put anywhere (inserting single tokens one at a time covers all placements)."""
    return insertion_attacks(p, 1, d)


@pytest.mark.parametrize("mode,d,k,max_len", [("suffix", 3, 1, 4), ("insertion", 2, 1, 4),
                                              ("insertion", 1, 2, 4), ("infusion", 2, 1, 4)])
def test_every_attack_on_a_flagged_prompt_is_flagged(mode, d, k, max_len):
    cfg = EraseConfig(mode=mode, d=d, k=k, batch_size=256)
    flt = ToyFilter()
    n_checked = n_fooled = 0
    for p in prompts(max_len):
        if not flt.verdict(p):
            continue  # only harmful prompts the filter catches are certified
        if mode == "suffix":
            attacks = suffix_attacks(p, d)
        elif mode == "insertion":
            attacks = insertion_attacks(p, d, k)
        else:
            attacks = infusion_attacks(p, d)
        for q in attacks:
            n_checked += 1
            n_fooled += not flt.verdict(q)
            assert erase_and_check(q, flt, cfg).harmful, (p, q)
    # the test is not vacuous: many attacks fool the filter alone
    assert n_checked > 200 and n_fooled > 50


def test_attack_longer_than_d_can_escape():
    """The bound is tight in d: a suffix of d + 1 suppressors is not erased by suffix EC with budget d."""
    flt = ToyFilter()
    assert not erase_and_check((1, 2, 3, 3, 3), flt, EraseConfig(mode="suffix", d=2)).harmful
    assert erase_and_check((1, 2, 3, 3, 3), flt, EraseConfig(mode="suffix", d=3)).harmful
