"""Erase-and-check enumeration and call counts: against the spec's table and a naive enumeration."""

import itertools

import pytest
import torch

from assay.safety.certificate import Certificate, EraseConfig, erase_and_check
from assay.safety.erase import count_subsequences, enumerated_count, erased_subsequences
from tests.safety_toys import ToyFilter

# (L, mode, d, k, distinct, enumerated) — the spec's table (concepts_safety.md §2.1), original included
TABLE = [
    (20, "suffix", 20, 1, 21, 21), (40, "suffix", 20, 1, 21, 21),
    (20, "infusion", 2, 1, 211, 211), (40, "infusion", 2, 1, 821, 821),
    (20, "infusion", 3, 1, 1351, 1351), (40, "infusion", 3, 1, 10701, 10701),
    (20, "insertion", 8, 1, 133, 180), (40, "insertion", 8, 1, 293, 360),
    (20, "insertion", 4, 2, 2073, 10000), (40, "insertion", 4, 2, 10393, 40000),
    (10, "suffix", 3, 1, 4, 4), (10, "infusion", 1, 1, 11, 11), (10, "infusion", 2, 1, 56, 56),
    (10, "insertion", 2, 1, 20, 30), (10, "insertion", 2, 2, 148, 900),
]


def naive(tokens, mode, d, k):
    """The reference enumeration (the repo's): every erased index set, deduplicated by content."""
    L = len(tokens)
    if mode == "suffix":
        sets = [set(range(L - i, L)) for i in range(0, min(d, L) + 1)]
    elif mode == "infusion":
        sets = [set(c) for i in range(0, min(d, L) + 1) for c in itertools.combinations(range(L), i)]
    else:
        pairs = [(s, n) for s in range(L) for n in range(d + 1)]
        sets = [{i for s, n in combo for i in range(s, min(s + n, L))}
                for combo in itertools.product(pairs, repeat=k)]
    return {tuple(t for i, t in enumerate(tokens) if i not in e) for e in sets}, len(sets)


@pytest.mark.parametrize("L,mode,d,k,distinct,enumerated", TABLE)
def test_counts_match_table_and_calls(L, mode, d, k, distinct, enumerated):
    assert count_subsequences(L, mode, d, k) == distinct
    assert enumerated_count(L, mode, d, k) == enumerated
    flt = ToyFilter()  # every sequence of range(L) is safe: the whole set is scored
    cert = erase_and_check(list(range(4, 4 + L)), flt, EraseConfig(mode=mode, d=d, k=k, batch_size=500))
    assert cert.n_calls == flt.calls == cert.planned_calls == distinct
    assert not cert.harmful and cert.witness is None and cert.certified
    assert all(b <= 500 for b in flt.batches)


@pytest.mark.parametrize("L,mode,d,k,distinct,enumerated", [r for r in TABLE if r[0] <= 20 and r[5] <= 10000])
def test_table_against_naive_enumeration(L, mode, d, k, distinct, enumerated):
    ref, n_enum = naive(tuple(range(L)), mode, d, k)
    assert (len(ref), n_enum) == (distinct, enumerated)


@pytest.mark.parametrize("mode,d,k", [("suffix", 3, 1), ("suffix", 9, 1), ("infusion", 2, 1), ("infusion", 3, 1),
                                      ("insertion", 2, 1), ("insertion", 3, 2), ("insertion", 1, 3)])
def test_enumeration_equals_naive_with_repeated_tokens(mode, d, k):
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        toks = torch.randint(0, 3, (7,), generator=g).tolist()
        got = list(erased_subsequences(toks, mode, d, k))
        assert got[0] == tuple(toks)
        assert len(got) == len(set(got))  # deduplicated
        assert set(got) == naive(toks, mode, d, k)[0]
        assert len(got) <= count_subsequences(7, mode, d, k)


def test_d_zero_checks_only_the_prompt():
    for mode in ("suffix", "insertion", "infusion"):
        assert list(erased_subsequences([5, 6, 7], mode, 0)) == [(5, 6, 7)]


def test_early_stop_after_first_harmful_batch():
    flt = ToyFilter()
    # harmful only once the trailing 3 is erased: suffix sequences are P, P[:-1]=(1,2,9,9), ...
    prompt = [1, 2, 9, 9, 3]
    cert = erase_and_check(prompt, flt, EraseConfig(mode="suffix", d=4, batch_size=1))
    assert cert.harmful and cert.witness == (1, 2, 9, 9)
    assert cert.n_calls == flt.calls == 2 and cert.planned_calls == 5
    flt2 = ToyFilter()
    cert2 = erase_and_check(prompt, flt2, EraseConfig(mode="suffix", d=4, batch_size=3))
    assert cert2.n_calls == flt2.calls == 3 and cert2.witness == (1, 2, 9, 9)


def test_certificate_is_frozen():
    cert = erase_and_check([1, 2], ToyFilter(), EraseConfig(mode="suffix", d=1))
    assert isinstance(cert, Certificate) and cert.harmful and cert.n_calls == 2  # batch of 2 holds the hit
    with pytest.raises(AttributeError):
        cert.harmful = False  # type: ignore[misc]


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="empty"):
        erase_and_check([], ToyFilter())
    with pytest.raises(ValueError, match="d .* >= 0, got -1"):
        EraseConfig(d=-1)
    with pytest.raises(ValueError, match="not one of"):
        EraseConfig(mode="prefix")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="12 tokens .* at most 10"):
        erase_and_check(list(range(12)), ToyFilter(context_length=10))
    flt = ToyFilter()
    with pytest.raises(ValueError, match="needs 10,701 filter calls, over the budget max_calls=5,000"):
        erase_and_check(list(range(40)), flt, EraseConfig(mode="infusion", d=3, max_calls=5000))
    assert flt.calls == 0  # refused before starting
