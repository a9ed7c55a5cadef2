"""Random binary sequences: coin flips from a Bernoulli source or a repeated pattern, with the exact Bayes predictor.

Bigelow, Lubana, Dick, Tanaka, Ullman 2024, "In-Context Learning Dynamics with Random Binary
Sequences" (ICLR 2024, arXiv 2310.17639) [code: ebigelow/ICL-Random-Binary]; the world is their generating
process in assay's form. Each sequence of L flips comes, with probability ρ (``pattern_prob``), from
a periodic concept c — a primitive binary necklace of period m_c (``periods``: 01; 001, 011; 0001,
0011, 0111 …), uniform over concepts, at a uniform phase φ, each flip inverted with probability ε
(``flip_noise``) — and otherwise from a Bernoulli(p) coin, p ∼ U(0, 1). Exact Bayes after n flips
with k ones, d_{c,φ} of them disagreeing with hypothesis (c, φ)::

    P(x | bern) = k!(n−k)!/(n+1)!,     P(x | c, φ) = ε^d (1−ε)^{n−d}
    P(next = 1 | x) ∝ Σ_{c,φ} ρ π_c/m_c · P(x | c, φ) · [ε + (1−2ε) c_{φ+n}] + (1−ρ) P(x | bern) · (k+1)/(n+2)

Check values (spec): concepts {011}, ρ = 0.5, x = 011 → P(x | bern) = 1/12, P(concept | x) = 0.8,
P(next = 0) = 0.88.

Rows are ``<bos> x₁ … x_L`` (tokens ``0``/``1`` after the four specials); inputs are the first L
tokens and targets x₁ … x_L, so position t predicts x_{t+1} from t flips. Per-token labels [n, L]:
``bayes_p1`` (the Bayes P(x_{t+1} = 1 | x_{1:t})) and ``p_pattern`` (P(concept source | x_{1:t})).
Per-sequence labels [n]: ``source`` (1 concept, 0 Bernoulli), ``p`` (NaN for a concept), ``pattern``
(index into ``world.patterns``, −1 for Bernoulli), ``phase`` (−1 for Bernoulli).

The paper's measures: :func:`continuation_probability` — the probability that the next ``depth``
flips continue the concept (the paper's P(concept) scored to depth 5), from any predictor's
P(x_{t+1} = 1) — and :func:`sequence_statistics` (mean, alternation rate, longest run, gzip length;
the repo's ``utils.py``).
"""

from __future__ import annotations

import gzip
import itertools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from assay.config import ConfigError
from assay.worlds.base import Batch
from assay.worlds.vocab import BOS, PAD, check_logits, make_vocab

__all__ = ["RandomBinaryConfig", "RandomBinaryWorld", "BayesPrediction", "primitive_necklaces", "bayes_predictive",
           "continuation_probability", "sequence_statistics"]

ZERO = 4
"""Token id of flip 0 (flip 1 is ZERO + 1)."""


@dataclass(frozen=True, kw_only=True)
class RandomBinaryConfig:
    """Sequences of coin flips from a Bernoulli coin or a repeated binary concept."""

    seq_len: int = 64
    """Flips per sequence L."""
    pattern_prob: float = 0.5
    """Probability ρ that a sequence comes from a concept rather than a Bernoulli coin."""
    periods: tuple[int, ...] = (2, 3, 4)
    """Concept periods: every primitive binary necklace of each period is a concept."""
    patterns: tuple[str, ...] | None = None
    """The concepts as 0/1 strings (each primitive, no two rotations of each other); overrides ``periods``."""
    flip_noise: float = 0.0
    """Probability ε that a concept sequence's flip is inverted (0 ≤ ε < 0.5)."""
    kl_from: int = 16
    """``evaluate`` averages KL(Bayes ‖ model) over positions with at least this many flips seen."""

    def __post_init__(self) -> None:
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ConfigError(f"seq_len must be an integer >= 2, got {self.seq_len!r}")
        if not 0.0 <= self.pattern_prob <= 1.0:
            raise ConfigError(f"pattern_prob must lie in [0, 1], got {self.pattern_prob}")
        if not 0.0 <= self.flip_noise < 0.5:
            raise ConfigError(f"flip_noise must lie in [0, 0.5) (at 0.5 a concept is a fair coin), got {self.flip_noise}")
        if any(m < 1 for m in self.periods):
            raise ConfigError(f"periods must be >= 1, got {self.periods}")
        if self.patterns is not None:
            for c in self.patterns:
                if not c or set(c) - {"0", "1"}:
                    raise ConfigError(f"pattern {c!r} must be a non-empty string of 0s and 1s")
                if _smallest_period(c) != len(c):
                    raise ConfigError(f"pattern {c!r} repeats {c[:_smallest_period(c)]!r}: give the primitive "
                                      f"string {c[:_smallest_period(c)]!r} instead")
            canon = [_canonical(c) for c in self.patterns]
            if len(set(canon)) != len(canon):
                raise ConfigError(f"patterns {self.patterns} contain two rotations of one concept; keep one")
        if self.pattern_prob > 0 and not self.concepts():
            raise ConfigError(f"pattern_prob={self.pattern_prob} > 0 but periods={self.periods} / patterns="
                              f"{self.patterns} give no concept; add a period or a pattern, or set pattern_prob=0")
        if not 1 <= self.kl_from < self.seq_len:
            raise ConfigError(f"kl_from must lie in [1, seq_len), got {self.kl_from} with seq_len={self.seq_len}")

    def concepts(self) -> tuple[str, ...]:
        """The concepts: ``patterns``, else the primitive necklaces of ``periods``."""
        if self.patterns is not None:
            return tuple(self.patterns)
        return tuple(c for m in self.periods for c in primitive_necklaces(m))


def _smallest_period(s: str) -> int:
    return next(p for p in range(1, len(s) + 1) if len(s) % p == 0 and s == s[:p] * (len(s) // p))


def _canonical(s: str) -> str:
    return min(s[i:] + s[:i] for i in range(len(s)))


def primitive_necklaces(m: int) -> tuple[str, ...]:
    """Binary strings of length ``m`` that are primitive and the least of their rotations, in lexicographic order."""
    out = []
    for bits in itertools.product("01", repeat=m):
        s = "".join(bits)
        if _smallest_period(s) == m and _canonical(s) == s:
            out.append(s)
    return tuple(out)


def _hypotheses(concepts: tuple[str, ...], length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (concept, phase): its flips [H, length] (long), its concept index [H], its phase [H]."""
    bits, concept, phase = [], [], []
    for i, c in enumerate(concepts):
        for phi in range(len(c)):
            bits.append([int(c[(phi + t) % len(c)]) for t in range(length)])
            concept.append(i)
            phase.append(phi)
    return (torch.tensor(bits, dtype=torch.long).reshape(-1, length), torch.tensor(concept, dtype=torch.long),
            torch.tensor(phase, dtype=torch.long))


class BayesPrediction(NamedTuple):
    """The exact Bayes predictor at every position (position t has seen t flips)."""

    p1: torch.Tensor
    """P(x_{t+1} = 1 | x_{1:t}) [n, L] (float64)."""
    p_pattern: torch.Tensor
    """P(concept source | x_{1:t}) [n, L] (float64)."""


def bayes_predictive(x: torch.Tensor, concepts: tuple[str, ...], *, pattern_prob: float,
                     flip_noise: float = 0.0) -> BayesPrediction:
    """Exact Bayes P(x_{t+1} = 1 | x_{1:t}) and P(concept | x_{1:t}) for flips ``x`` [n, L] (0/1).

    Position t has seen t flips (t = 0 … L−1); see the module docstring for the formula.
    """
    n, L = x.shape
    x = x.long()
    k = torch.cat([torch.zeros(n, 1, dtype=torch.long), x.cumsum(1)], 1)[:, :L].double()  # ones among t flips
    t = torch.arange(L, dtype=torch.float64)
    log_bern = torch.lgamma(k + 1) + torch.lgamma(t - k + 1) - torch.lgamma(t + 2)
    log_bern = log_bern + (math.log(1 - pattern_prob) if pattern_prob < 1 else -math.inf)
    p1_bern = (k + 1) / (t + 2)
    if not concepts or pattern_prob == 0:
        return BayesPrediction(p1_bern, torch.zeros(n, L, dtype=torch.float64))
    bits, concept, _ = _hypotheses(concepts, L)
    period = torch.tensor([len(concepts[c]) for c in concept.tolist()], dtype=torch.float64)
    log_prior = math.log(pattern_prob) - math.log(len(concepts)) - period.log()  # [H]
    miss = (x[:, None, :] != bits[None]).long()  # [n, H, L]
    d = torch.cat([torch.zeros(n, bits.shape[0], 1, dtype=torch.long), miss.cumsum(2)], 2)[..., :L].double()
    if flip_noise > 0:
        log_lik = d * math.log(flip_noise) + (t - d) * math.log(1 - flip_noise)
    else:
        log_lik = torch.where(d > 0, -math.inf, 0.0)
    joint = torch.cat([log_prior[None, :, None] + log_lik, log_bern[:, None, :]], 1)  # [n, H + 1, L]
    post = torch.softmax(joint, dim=1)
    next_one = flip_noise + (1 - 2 * flip_noise) * bits.double()  # [H, L]: P(x_{t+1} = 1 | c, φ)
    p1 = (post[:, :-1] * next_one[None]).sum(1) + post[:, -1] * p1_bern
    return BayesPrediction(p1, 1 - post[:, -1])


def continuation_probability(p1: torch.Tensor, x: torch.Tensor, depth: int = 5) -> torch.Tensor:
    """P(the next ``depth`` flips are x_{t+1} … x_{t+depth} | x_{1:t}) from a predictor's ``p1`` [n, L] → [n, L − depth + 1].

    On a noiseless concept sequence this is the paper's P(concept) scored to ``depth`` flips; column t
    has seen t flips.
    """
    if not 1 <= depth <= x.shape[1]:
        raise ValueError(f"depth must lie in [1, {x.shape[1]}], got {depth}")
    p_actual = torch.where(x.bool(), p1, 1 - p1).double().clamp_min(1e-300)
    log_cum = torch.cat([torch.zeros(x.shape[0], 1, dtype=torch.float64), p_actual.log().cumsum(1)], 1)
    return (log_cum[:, depth:] - log_cum[:, :-depth]).exp()


def sequence_statistics(bits: str) -> dict[str, float]:
    """The paper's statistics of one 0/1 string: ``mean``, ``alternation`` (mean |x_t − x_{t+1}|),
    ``longest_run`` and ``gzip_bytes`` (gzip with mtime 0; includes 18 bytes of framing)."""
    if not bits or set(bits) - {"0", "1"}:
        raise ValueError(f"bits must be a non-empty string of 0s and 1s, got {bits!r}")
    v = [int(b) for b in bits]
    alternation = sum(a != b for a, b in itertools.pairwise(v)) / (len(v) - 1) if len(v) > 1 else 0.0
    longest = max(len(list(run)) for _, run in itertools.groupby(v))
    return {"mean": sum(v) / len(v), "alternation": alternation, "longest_run": float(longest),
            "gzip_bytes": float(len(gzip.compress(bits.encode(), mtime=0)))}


class RandomBinaryWorld:
    """Coin-flip sequences from a Bernoulli coin or a periodic concept, with the exact Bayes predictor as truth."""

    pad_id: int = PAD
    bos_id: int = BOS
    acceptance: tuple[str, float, str] = ("kl_bayes", 0.05, "min")
    """Spec §2.1: mean KL(Bayes ‖ model) < 0.05 nat at positions ≥ 16 (lower is better)."""

    def __init__(self, config: RandomBinaryConfig | None = None) -> None:
        self.config = cfg = config or RandomBinaryConfig()
        self.patterns = cfg.concepts()
        """The concepts (0/1 strings); ``labels["pattern"]`` indexes this tuple."""
        self._bits, self._concept, self._phase = _hypotheses(self.patterns, cfg.seq_len)
        self.vocab = make_vocab(("0", "1"))

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids ``[T]`` → token strings (padding dropped)."""
        return [self.vocab[i] for i in ids.tolist() if i != self.pad_id]

    def reference_model(self) -> dict[str, Any]:
        """Tiny-transformer settings (spec §2.1 CPU default: 2 layers, d = 64; steps measured in docs/dynamics_worlds.md)."""
        return {"n_layers": 2, "n_heads": 2, "d_model": 64, "context": self.config.seq_len, "steps": 1500,
                "batch_size": 64, "lr": 1e-3, "warmup": 100}

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        """``n`` sequences with their source, its parameters and the Bayes predictor per position."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        cfg = self.config
        L = cfg.seq_len
        source = torch.rand(n, generator=generator, dtype=torch.float64) < cfg.pattern_prob
        p = torch.rand(n, generator=generator, dtype=torch.float64)
        coin = (torch.rand(n, L, generator=generator, dtype=torch.float64) < p[:, None]).long()
        pattern = torch.full((n,), -1, dtype=torch.long)
        phase = torch.full((n,), -1, dtype=torch.long)
        flips = coin
        if self.patterns:
            c = torch.randint(len(self.patterns), (n,), generator=generator)
            period = torch.tensor([len(s) for s in self.patterns])[c]
            phi = (torch.rand(n, generator=generator, dtype=torch.float64) * period).long().clamp_max(period - 1)
            offsets = torch.tensor([0, *itertools.accumulate(len(s) for s in self.patterns)])[:-1]
            noise = (torch.rand(n, L, generator=generator, dtype=torch.float64) < cfg.flip_noise).long()
            concept_flips = self._bits[offsets[c] + phi] ^ noise
            flips = torch.where(source[:, None], concept_flips, coin)
            pattern = torch.where(source, c, pattern)
            phase = torch.where(source, phi, phase)
        p1, p_pattern = bayes_predictive(flips, self.patterns, pattern_prob=cfg.pattern_prob, flip_noise=cfg.flip_noise)
        tokens = torch.cat([torch.full((n, 1), BOS, dtype=torch.long), flips + ZERO], 1)
        labels = {"bayes_p1": p1.float(), "p_pattern": p_pattern.float(), "source": source.long(),
                  "p": torch.where(source, math.nan, p).float(), "pattern": pattern, "phase": phase}
        return Batch(inputs=tokens[:, :L], targets=tokens[:, 1:].clone(), labels=labels)

    @staticmethod
    def model_p1(logits: torch.Tensor) -> torch.Tensor:
        """The model's P(next flip = 1) [n, L], its logits restricted to the two flip tokens."""
        return torch.softmax(logits.double()[..., ZERO : ZERO + 2], -1)[..., 1]

    def evaluate(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Cross-entropy of the model and of Bayes (flip tokens only), ``bayes_efficiency`` = bayes_loss / loss,
        and ``kl_bayes``: mean KL(Bayes ‖ model) over positions with ≥ ``kl_from`` flips seen (nats)."""
        check_logits(logits, batch)
        x = (batch.targets - ZERO).double()
        q = self.model_p1(logits).clamp(1e-12, 1 - 1e-12)
        b = batch.labels["bayes_p1"].double().clamp(1e-12, 1 - 1e-12)
        loss = -(x * q.log() + (1 - x) * (1 - q).log()).mean()
        bayes = -(x * b.log() + (1 - x) * (1 - b).log()).mean()
        kl = b * (b / q).log() + (1 - b) * ((1 - b) / (1 - q)).log()
        return {"loss": float(loss), "bayes_loss": float(bayes), "bayes_efficiency": float(bayes / loss),
                "kl_bayes": float(kl[:, self.config.kl_from :].mean())}
