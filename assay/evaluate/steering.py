"""Likelihood-based steering evaluation on behaviour-matching vs behaviour-opposing continuations.

Pres, Ruis, Lubana & Krueger 2024, "Towards Reliable Evaluation of Behavior Steering Interventions
in LLMs" (arXiv 2410.17245, §3). For prompts i with a behaviour-matching continuation pos_i and an
opposing one neg_i, and models M ∈ {base, steered}:

    LL_M(i, c)   log-likelihood of the continuation tokens only (per-token mean by default)
    c_M          = mean( max_i LL_M(neg_i), min_i LL_M(pos_i) )
    renormalise  LL_M ← LL_M − c_M   (or LL_M / |c_M|, or not at all)
    P_q          q-fraction of positives with the LOWEST baseline LL;  N_q: negatives with the HIGHEST
    Pos_q        = mean_{P_q}(LL_steered − LL_base)   (> 0: behaviour promoted)
    Neg_q        = mean_{N_q}(LL_base − LL_steered)   (> 0: opposite suppressed)

Checks (spec §5): α = 0 ⇒ Pos = Neg = 0; raising every positive by δ gives (δ, 0) without
renormalisation and (δ/2, δ/2) with subtraction.

:func:`paired_shift` reports an effect with its interval: for per-sample read-outs before (b_i) and
after (s_i) steering, the mean of d_i = s_i − b_i with the Student-t interval
mean ± t_{1−(1−level)/2, n−1}·sd(d)/√n (the paired t-test's interval, :func:`assay.stats.t_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from assay.stats import t_interval

__all__ = ["continuation_loglik", "PresScores", "pres_scores", "Shift", "paired_shift"]


def continuation_loglik(logits: Tensor, tokens: Tensor, continuation: Tensor, *,
                        reduce: Literal["mean", "sum"] = "mean") -> Tensor:
    """Log-likelihood of the tokens where ``continuation [B, T]`` is true (the prompt masked out),
    from next-token ``logits [B, T, V]`` over ``tokens [B, T]``: token t is scored by logits at t − 1."""
    if logits.shape[:2] != tokens.shape or continuation.shape != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)}, tokens {tuple(tokens.shape)} and continuation mask "
                         f"{tuple(continuation.shape)} must agree on [B, T]")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")
    cont = continuation[:, 1:].bool()
    if bool(continuation[:, 0].any()):
        raise ValueError("the first token cannot be a continuation token (nothing predicts it)")
    if not cont.any(1).all():
        raise ValueError("every row needs at least one continuation token")
    lp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    total = (lp * cont).sum(1)
    return total / cont.sum(1) if reduce == "mean" else total


class PresScores(NamedTuple):
    """Pres et al. steering scores at each hardest fraction."""

    fractions: tuple[float, ...]
    """The fractions q of hardest samples."""
    pos: tuple[float, ...]
    """Pos_q: mean LL gain of the behaviour-matching continuations (> 0 is good)."""
    neg: tuple[float, ...]
    """Neg_q: mean LL loss of the opposing continuations (> 0 is good)."""
    renorm: str
    """The renormalisation used ("subtract", "divide" or "none")."""


def _renorm(pos: Tensor, neg: Tensor, how: str) -> tuple[Tensor, Tensor]:
    c = (neg.max() + pos.min()) / 2
    if how == "subtract":
        return pos - c, neg - c
    if how == "divide":
        if c == 0:
            raise ValueError("renormalisation constant is 0; use renorm='subtract'")
        return pos / c.abs(), neg / c.abs()
    if how == "none":
        return pos, neg
    raise ValueError(f"unknown renorm {how!r}; choose subtract, divide or none")


def pres_scores(
    base_pos: Tensor,
    base_neg: Tensor,
    steered_pos: Tensor,
    steered_neg: Tensor,
    *,
    fractions: Sequence[float] = (0.25, 0.5, 0.75),
    renorm: Literal["subtract", "divide", "none"] = "subtract",
) -> PresScores:
    """Scores from per-prompt continuation log-likelihoods ``[n]`` of the base and steered models."""
    ts = [torch.as_tensor(t, dtype=torch.float64).flatten() for t in (base_pos, base_neg, steered_pos, steered_neg)]
    n = ts[0].numel()
    if n == 0 or any(t.numel() != n for t in ts):
        raise ValueError(f"need four equally long non-empty LL vectors, got sizes {[t.numel() for t in ts]}")
    if not all(torch.isfinite(t).all() for t in ts):
        raise ValueError("log-likelihoods contain NaN or inf")
    bp, bn = _renorm(ts[0], ts[1], renorm)
    sp, sn = _renorm(ts[2], ts[3], renorm)
    pos_order = torch.argsort(ts[0])                    # lowest baseline LL first (hardest positives)
    neg_order = torch.argsort(ts[1], descending=True)   # highest baseline LL first (hardest negatives)
    pos_s, neg_s = [], []
    for q in fractions:
        if not 0 < q <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {q}")
        k = max(1, math.ceil(q * n))
        P, N = pos_order[:k], neg_order[:k]
        pos_s.append(float((sp[P] - bp[P]).mean()))
        neg_s.append(float((bn[N] - sn[N]).mean()))
    return PresScores(tuple(fractions), tuple(pos_s), tuple(neg_s), renorm)


class Shift(NamedTuple):
    """Mean paired shift of a read-out with a Student-t interval."""

    value: float
    """mean_i (steered_i − base_i)."""
    low: float
    """Lower bound of the interval."""
    high: float
    """Upper bound of the interval."""
    n: int
    """Number of pairs."""


def paired_shift(base: Tensor, steered: Tensor, *, level: float = 0.95) -> Shift:
    """Mean of ``steered − base`` (per-sample read-outs ``[n]``) with the paired-t interval at ``level``."""
    b = torch.as_tensor(base, dtype=torch.float64).flatten()
    s = torch.as_tensor(steered, dtype=torch.float64).flatten()
    if b.numel() != s.numel() or b.numel() < 2:
        raise ValueError(f"need two equally long read-outs with at least 2 samples, got {b.numel()} and {s.numel()}")
    if not (torch.isfinite(b).all() and torch.isfinite(s).all()):
        raise ValueError("read-outs contain NaN or inf")
    return Shift(*t_interval(s - b, level=level))
