"""The erased subsequences that erase-and-check sends to a safety filter, in token space.

Kumar, Agarwal, Srinivas, Li, Feizi & Lakkaraju 2024, "Certifying LLM Safety against Adversarial
Prompting" (arXiv 2309.02705). A prompt P of L tokens is checked together with the subsequences left
after erasing, per mode:

    suffix     P[:L − i],                          i = 1 … min(d, L)
    insertion  P minus ⋃_{j=1..k} [s_j, s_j + l_j),  s_j ∈ [0, L), l_j ∈ [0, d]   (k blocks)
    infusion   P minus any index set of size 1 … d

If an adversary added ≤ d tokens to a harmful prompt in the given way (appended; inserted as ≤ k
contiguous blocks of length ≤ d each; scattered anywhere), erasing exactly those tokens gives back
the original prompt, which is one of the checked sequences — the certificate.

Sequences are tuples of token ids (never decoded to text, which can break the certificate), yielded
original first and deduplicated by content. For a prompt of distinct tokens the number yielded is
:func:`count_subsequences`, the spec's table: suffix 1 + min(d, L); infusion 1 + Σ_{i≤d} C(L, i);
insertion the number of distinct erased index sets, i.e. of subsets of [0, L) whose maximal runs r
satisfy Σ_r ⌈|r|/d⌉ ≤ k (counted by a dynamic programme, never by enumerating the (L(d+1))^k tuples).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Literal, get_args

__all__ = ["Mode", "MODES", "count_subsequences", "enumerated_count", "erased_subsequences", "check_mode"]

Mode = Literal["suffix", "insertion", "infusion"]
MODES: tuple[str, ...] = get_args(Mode)
"""The erase modes, in the paper's order."""


def check_mode(mode: str, d: int, k: int) -> None:
    """Raise ``ValueError`` naming the bad value if ``mode``, ``d`` or ``k`` is invalid."""
    if mode not in MODES:
        raise ValueError(f"erase mode {mode!r} is not one of {', '.join(MODES)}")
    if not isinstance(d, int) or isinstance(d, bool) or d < 0:
        raise ValueError(f"d (the largest number of adversarial tokens certified) must be an int >= 0, got {d!r}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (the number of inserted blocks, insertion mode) must be an int >= 1, got {k!r}")


def _insertion_count(length: int, d: int, k: int) -> int:
    """Subsets of [0, L) coverable by k intervals of length ≤ d: Σ over maximal runs of ⌈|r|/d⌉ ≤ k."""
    if d == 0:
        return 1
    # state: (blocks used by closed runs, length of the open run) -> number of subsets of the prefix
    states: dict[tuple[int, int], int] = {(0, 0): 1}
    for _ in range(length):
        nxt: dict[tuple[int, int], int] = {}
        for (used, run), n in states.items():
            closed = used + -(-run // d)  # position not erased: the open run closes
            if closed <= k:
                nxt[(closed, 0)] = nxt.get((closed, 0), 0) + n
            if used + -(-(run + 1) // d) <= k:  # position erased: the run grows
                nxt[(used, run + 1)] = nxt.get((used, run + 1), 0) + n
        states = nxt
    return sum(n for (used, run), n in states.items() if used + -(-run // d) <= k)


def count_subsequences(length: int, mode: Mode, d: int, k: int = 1) -> int:
    """How many distinct sequences (the prompt included) erase-and-check scores for a prompt of
    ``length`` distinct tokens; repeated tokens can only lower it. Computed without enumerating."""
    check_mode(mode, d, k)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if mode == "suffix":
        return 1 + min(d, length)
    if mode == "infusion":
        return 1 + sum(math.comb(length, i) for i in range(1, min(d, length) + 1))
    return _insertion_count(length, d, k)


def enumerated_count(length: int, mode: Mode, d: int, k: int = 1) -> int:
    """How many sequences the reference enumeration produces before deduplication (the repo's count):
    suffix and infusion as :func:`count_subsequences`; insertion (L·(d+1))^k."""
    if mode == "insertion":
        check_mode(mode, d, k)
        return (length * (d + 1)) ** k
    return count_subsequences(length, mode, d, k)


def _erased_index_sets(length: int, mode: Mode, d: int, k: int) -> Iterator[frozenset[int]]:
    if mode == "suffix":
        for i in range(1, min(d, length) + 1):
            yield frozenset(range(length - i, length))
    elif mode == "infusion":
        for size in range(1, min(d, length) + 1):
            for combo in itertools.combinations(range(length), size):
                yield frozenset(combo)
    else:
        blocks = [(s, n) for s in range(length) for n in range(1, d + 1)]
        for j in range(1, k + 1):
            for combo in itertools.combinations_with_replacement(blocks, j):
                yield frozenset(i for s, n in combo for i in range(s, min(s + n, length)))


def erased_subsequences(tokens: Sequence[int], mode: Mode, d: int, k: int = 1) -> Iterator[tuple[int, ...]]:
    """The prompt, then each distinct erased subsequence (as a tuple of token ids), lazily.

    Insertion enumerates unions of 1 … k non-empty blocks (blocks of length 0 only repeat a smaller
    union), which yields the same distinct sets as the (L·(d+1))^k tuples of the reference, in fewer steps.
    """
    check_mode(mode, d, k)
    toks = tuple(int(t) for t in tokens)
    seen = {toks}
    yield toks
    for erased in _erased_index_sets(len(toks), mode, d, k):
        seq = tuple(t for i, t in enumerate(toks) if i not in erased)
        if seq not in seen:
            seen.add(seq)
            yield seq
