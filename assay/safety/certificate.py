"""Erase-and-check: the certified check of a prompt, and the result it returns (a ``Certificate``).

Kumar, Agarwal, Srinivas, Li, Feizi & Lakkaraju 2024, "Certifying LLM Safety against Adversarial
Prompting" (arXiv 2309.02705). The prompt is harmful iff the filter flags it or any of its erased
subsequences (:mod:`assay.safety.erase`): EC(P) = F(P) ∨ ⋁_{e ∈ E_mode,d,k(P)} F(e). Certificate: for
every harmful prompt P that F flags and every adversarial addition of ≤ d tokens in the mode, EC flags
P + adv, because erasing the added tokens gives back P. Hence certified accuracy on harmful prompts
equals F's clean accuracy on them.

Sequences are deduplicated before any filter call, scored in batches of ``batch_size``, and the scan
stops after the first batch holding a harmful verdict. Before starting, the number of filter calls the
full check would need (:func:`assay.safety.erase.count_subsequences`) is compared with ``max_calls``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from assay.safety.erase import Mode, check_mode, count_subsequences, erased_subsequences
from assay.safety.filter import SafetyFilter, check_prompt

__all__ = ["EraseConfig", "Certificate", "erase_and_check", "scan", "check_budget"]


@dataclass(frozen=True, kw_only=True)
class EraseConfig:
    """How erase-and-check runs."""

    mode: Mode = "suffix"
    """Which adversarial additions are certified: "suffix", "insertion" or "infusion"."""
    d: int = 20
    """Largest number of adversarial tokens certified (per block in insertion mode)."""
    k: int = 1
    """Insertion mode: the number of adversarial blocks (the repo's ``num_adv``); ignored otherwise."""
    batch_size: int = 64
    """Sequences per filter call."""
    max_calls: int = 100_000
    """Refuse (before starting) a check that would score more sequences than this."""
    threshold: float = 0.5
    """A sequence is harmful when the filter's probability exceeds this."""

    def __post_init__(self) -> None:
        check_mode(self.mode, self.d, self.k)
        if self.batch_size < 1 or self.max_calls < 1:
            raise ValueError(f"batch_size and max_calls must be >= 1, got {self.batch_size} and {self.max_calls}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")


@dataclass(frozen=True)
class Certificate:
    """The outcome of checking one prompt."""

    method: str
    """"erase-and-check" (certified) or an empirical variant ("randec", "greedyec", "gradec")."""
    mode: str
    """The erase mode ("suffix", "insertion", "infusion"; "greedy"/"gradient" for GreedyEC/GradEC)."""
    d: int
    """The erase budget."""
    k: int
    """Insertion blocks (1 in the other modes)."""
    filter_id: str
    """The filter's name."""
    n_calls: int
    """Sequences actually scored by the filter (≤ ``planned_calls``; fewer after an early stop)."""
    planned_calls: int
    """Sequences the full check would score (the certified count; the sample size for RandEC)."""
    harmful: bool
    """The verdict."""
    witness: tuple[int, ...] | None
    """The first sequence the filter flagged (token ids), or None when the verdict is safe."""
    certified: bool
    """True when the safe/harmful guarantee of the paper applies (full erase-and-check)."""


def check_budget(length: int, config: EraseConfig) -> int:
    """The number of sequences a full check of a ``length``-token prompt scores; raises ``ValueError``
    saying that count if it is over ``config.max_calls``."""
    n = count_subsequences(length, config.mode, config.d, config.k)
    if n > config.max_calls:
        k = f", k={config.k}" if config.mode == "insertion" else ""
        raise ValueError(f"erase-and-check in {config.mode} mode with d={config.d}{k} on a {length}-token prompt "
                         f"needs {n:,} filter calls, over the budget max_calls={config.max_calls:,}; lower d "
                         "(or k), use suffix mode, or raise max_calls")
    return n


def scan(sequences: Iterable[tuple[int, ...]], flt: SafetyFilter, *, batch_size: int,
         threshold: float) -> tuple[int, tuple[int, ...] | None]:
    """Score ``sequences`` in batches until one is harmful: (sequences scored, first harmful one or None)."""
    it = iter(sequences)
    n_calls = 0
    while batch := list(itertools.islice(it, batch_size)):
        probs = flt.harmful_probability(batch)
        n_calls += len(batch)
        hits = (probs > threshold).nonzero()
        if len(hits):
            return n_calls, batch[int(hits[0, 0])]
    return n_calls, None


def erase_and_check(tokens: Sequence[int], flt: SafetyFilter, config: EraseConfig = EraseConfig()) -> Certificate:
    """Certified check of one prompt (token ids in ``flt``'s tokenizer, no BOS)."""
    toks = check_prompt(tokens, flt)
    planned = check_budget(len(toks), config)
    n_calls, witness = scan(erased_subsequences(toks, config.mode, config.d, config.k), flt,
                            batch_size=config.batch_size, threshold=config.threshold)
    return Certificate(method="erase-and-check", mode=config.mode, d=config.d,
                       k=config.k if config.mode == "insertion" else 1, filter_id=flt.name, n_calls=n_calls,
                       planned_calls=planned, harmful=witness is not None, witness=witness, certified=True)
