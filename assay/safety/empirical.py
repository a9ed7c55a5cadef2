"""Empirical (uncertified, cheaper) variants of erase-and-check: RandEC, GreedyEC and GradEC.

Kumar, Agarwal, Srinivas, Li, Feizi & Lakkaraju 2024, "Certifying LLM Safety against Adversarial
Prompting" (arXiv 2309.02705), §"Efficient empirical defenses":

- **RandEC** checks the prompt and a uniformly random fraction ρ of its distinct erased subsequences
  (m = ⌈ρ·(n − 1)⌉ of the n − 1): a prompt whose only harmful subsequence is one of them is caught
  with probability m / (n − 1).
- **GreedyEC** erases one token at a time: at each step every single-token erasure of the current
  sequence is scored (one batch) and the one with the highest P(harmful) is kept; harmful as soon as a
  step's best exceeds the threshold; at most ``n_iters`` steps.
- **GradEC** replaces the batch of GreedyEC by a gradient step: a soft keep-mask σ(m) over the tokens
  (m initialised to 1) is trained for ``opt_steps`` SGD steps (lr 10, weight decay 1e-2, the repo's
  values) on −log P(harmful | soft-masked input), then the token with the smallest mask is erased and
  the result is scored (one filter call per step). Needs a :class:`~assay.safety.filter.DifferentiableFilter`.

All return a :class:`~assay.safety.certificate.Certificate` with ``certified=False``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from assay.safety.certificate import Certificate, EraseConfig, check_budget, scan
from assay.safety.erase import erased_subsequences
from assay.safety.filter import DifferentiableFilter, SafetyFilter, check_prompt

__all__ = ["GreedyConfig", "GradConfig", "rand_ec", "greedy_ec", "grad_ec"]


@dataclass(frozen=True, kw_only=True)
class GreedyConfig:
    """GreedyEC / GradEC budget."""

    n_iters: int = 20
    """Most tokens erased (one per step)."""
    threshold: float = 0.5
    """A sequence is harmful when the filter's probability exceeds this."""
    batch_size: int = 64
    """Sequences per filter call (GreedyEC's single-token erasures)."""

    def __post_init__(self) -> None:
        if self.n_iters < 0 or self.batch_size < 1:
            raise ValueError(f"n_iters must be >= 0 and batch_size >= 1, got {self.n_iters}, {self.batch_size}")


@dataclass(frozen=True, kw_only=True)
class GradConfig(GreedyConfig):
    """GradEC: GreedyEC's budget plus the mask optimiser."""

    opt_steps: int = 2
    """SGD steps on the soft mask before each erasure (the repo: 2)."""
    lr: float = 10.0
    """SGD learning rate on the mask logits."""
    weight_decay: float = 1e-2
    """SGD weight decay on the mask logits."""


def rand_ec(tokens: Sequence[int], flt: SafetyFilter, config: EraseConfig = EraseConfig(), *,
            sampling_ratio: float = 0.2, generator: torch.Generator | None = None) -> Certificate:
    """RandEC: the prompt plus a random ``sampling_ratio`` of its distinct erased subsequences."""
    if not 0.0 < sampling_ratio <= 1.0:
        raise ValueError(f"sampling_ratio must be in (0, 1], got {sampling_ratio}")
    toks = check_prompt(tokens, flt)
    check_budget(len(toks), config)
    seqs = list(erased_subsequences(toks, config.mode, config.d, config.k))
    m = math.ceil(sampling_ratio * (len(seqs) - 1))
    order = torch.randperm(len(seqs) - 1, generator=generator)[:m]
    chosen = [seqs[0]] + [seqs[1 + int(i)] for i in order]
    n_calls, witness = scan(chosen, flt, batch_size=config.batch_size, threshold=config.threshold)
    return Certificate(method="randec", mode=config.mode, d=config.d, k=config.k if config.mode == "insertion" else 1,
                       filter_id=flt.name, n_calls=n_calls, planned_calls=len(chosen), harmful=witness is not None,
                       witness=witness, certified=False)


def _result(method: str, flt: SafetyFilter, config: GreedyConfig, n_calls: int,
            witness: tuple[int, ...] | None) -> Certificate:
    return Certificate(method=method, mode="greedy" if method == "greedyec" else "gradient", d=config.n_iters, k=1,
                       filter_id=flt.name, n_calls=n_calls, planned_calls=n_calls, harmful=witness is not None,
                       witness=witness, certified=False)


def greedy_ec(tokens: Sequence[int], flt: SafetyFilter, config: GreedyConfig = GreedyConfig()) -> Certificate:
    """GreedyEC: repeatedly erase the single token whose erasure maximises P(harmful)."""
    seq = check_prompt(tokens, flt)
    n_calls = 1
    if float(flt.harmful_probability([seq])[0]) > config.threshold:
        return _result("greedyec", flt, config, n_calls, seq)
    for _ in range(min(config.n_iters, len(seq))):
        candidates = [seq[:i] + seq[i + 1:] for i in range(len(seq))]
        probs = torch.cat([flt.harmful_probability(candidates[i:i + config.batch_size])
                           for i in range(0, len(candidates), config.batch_size)])
        n_calls += len(candidates)
        best = int(probs.argmax())
        seq = candidates[best]
        if float(probs[best]) > config.threshold:
            return _result("greedyec", flt, config, n_calls, seq)
    return _result("greedyec", flt, config, n_calls, None)


def grad_ec(tokens: Sequence[int], flt: DifferentiableFilter, config: GradConfig = GradConfig()) -> Certificate:
    """GradEC: erase, one per step, the token an optimised soft mask would erase first."""
    if not hasattr(flt, "soft_logit"):
        raise TypeError(f"GradEC needs a differentiable filter (with soft_logit); {flt.name!r} has none")
    seq = check_prompt(tokens, flt)
    n_calls = 1
    if float(flt.harmful_probability([seq])[0]) > config.threshold:
        return _result("gradec", flt, config, n_calls, seq)
    for _ in range(min(config.n_iters, len(seq))):
        logits = torch.ones(len(seq), requires_grad=True)
        opt = torch.optim.SGD([logits], lr=config.lr, weight_decay=config.weight_decay)
        for _ in range(config.opt_steps):
            loss = torch.nn.functional.softplus(-flt.soft_logit(seq, torch.sigmoid(logits)))  # −log σ(harmful logit)
            (logits.grad,) = torch.autograd.grad(loss, logits)  # leaves the filter's own parameters untouched
            opt.step()
        i = int(logits.detach().argmin())
        seq = seq[:i] + seq[i + 1:]
        n_calls += 1
        if float(flt.harmful_probability([seq])[0]) > config.threshold:
            return _result("gradec", flt, config, n_calls, seq)
    return _result("gradec", flt, config, n_calls, None)
