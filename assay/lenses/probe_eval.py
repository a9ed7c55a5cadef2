"""Scoring probes: AUROC with DeLong intervals, accuracy with Wilson intervals, TPR at a fixed FPR,
and stratified k-fold cross-validation.

AUROC is the Mann–Whitney statistic P(s₊ > s₋) + ½P(s₊ = s₋). Its variance follows DeLong, DeLong
& Clarke-Pearson 1988, "Comparing the areas under two or more correlated receiver operating
characteristic curves: a nonparametric approach": with structural components
V₁₀(i) = mean_j ψ(s₊ᵢ, s₋ⱼ), V₀₁(j) = mean_i ψ(s₊ᵢ, s₋ⱼ),

    Var(AUC) = Var(V₁₀)/m + Var(V₀₁)/n,

(m positives, n negatives), computed from mid-ranks in O(N log N) (Sun & Xu 2014). Accuracy's
interval is Wilson's score interval (Wilson 1927).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from assay.lenses.probes import LinearProbe, check_xy

__all__ = ["Interval", "auroc", "auroc_ci", "accuracy_ci", "tpr_at_fpr", "stratified_folds", "CVResult",
           "cross_validate"]


class Interval(NamedTuple):
    """A point estimate with a two-sided confidence interval."""

    value: float
    """The estimate."""
    low: float
    """Lower bound."""
    high: float
    """Upper bound."""


def _midranks(x: Tensor) -> Tensor:
    """1-based mid-ranks (ties get their average rank)."""
    x = x.double()
    sorted_x, order = torch.sort(x)
    n = x.numel()
    ranks = torch.empty(n, dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mid = ends - (counts.double() - 1) / 2
    ranks[order] = mid[inverse]
    return ranks


def _check_scores(scores: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    scores = torch.as_tensor(scores).double().flatten()
    y = torch.as_tensor(y).flatten().bool()
    if scores.numel() != y.numel():
        raise ValueError(f"{scores.numel()} scores for {y.numel()} labels")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    if y.all() or not y.any():
        raise ValueError("AUROC needs both classes among the labels; got a single class")
    return scores, y


def auroc(scores: Tensor, y: Tensor) -> float:
    """Area under the ROC curve (ties count one half)."""
    scores, y = _check_scores(scores, y)
    r = _midranks(scores)
    m, n = int(y.sum()), int((~y).sum())
    return float((r[y].sum() - m * (m + 1) / 2) / (m * n))


def auroc_ci(scores: Tensor, y: Tensor, *, level: float = 0.95) -> Interval:
    """AUROC with a DeLong normal interval (clipped to [0, 1])."""
    scores, y = _check_scores(scores, y)
    pos, neg = scores[y], scores[~y]
    m, n = pos.numel(), neg.numel()
    r_all = _midranks(torch.cat([pos, neg]))
    r_pos, r_neg = _midranks(pos), _midranks(neg)
    v10 = (r_all[:m] - r_pos) / n          # per positive: fraction of negatives below (+½ ties)
    v01 = 1.0 - (r_all[m:] - r_neg) / m    # per negative: fraction of positives above (+½ ties)
    auc = float(v10.mean())
    var = (v10.var(unbiased=True) / m if m > 1 else 0.0) + (v01.var(unbiased=True) / n if n > 1 else 0.0)
    z = _z(level)
    half = z * math.sqrt(float(var))
    return Interval(auc, max(0.0, auc - half), min(1.0, auc + half))


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return math.sqrt(2) * float(torch.special.erfinv(torch.tensor(level, dtype=torch.float64)))


def accuracy_ci(pred: Tensor, y: Tensor, *, level: float = 0.95) -> Interval:
    """Accuracy with a Wilson score interval."""
    pred, y = torch.as_tensor(pred).flatten(), torch.as_tensor(y).flatten()
    if pred.numel() != y.numel() or pred.numel() == 0:
        raise ValueError(f"need equally many predictions and labels (>0), got {pred.numel()} and {y.numel()}")
    n = pred.numel()
    p = float((pred.long() == y.long()).double().mean())
    z = _z(level)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def tpr_at_fpr(scores: Tensor, y: Tensor, fpr: float = 0.01) -> float:
    """True-positive rate at the threshold where at most ``fpr`` of negatives score strictly above it."""
    scores, y = _check_scores(scores, y)
    neg = torch.sort(scores[~y], descending=True).values
    k = int(math.floor(fpr * neg.numel()))
    thr = neg[k] if k < neg.numel() else neg[-1] - 1
    return float((scores[y] > thr).double().mean())


def stratified_folds(y: Tensor, k: int, *, seed: int = 0) -> list[Tensor]:
    """Test indices of ``k`` stratified folds (each class shuffled with ``seed``, dealt round robin)."""
    y = torch.as_tensor(y).flatten().bool()
    n_min = min(int(y.sum()), int((~y).sum()))
    if k < 2 or k > n_min:
        raise ValueError(f"k must be in 2..{n_min} (size of the smaller class), got {k}")
    g = torch.Generator().manual_seed(seed)
    folds: list[list[Tensor]] = [[] for _ in range(k)]
    for cls in (True, False):
        idx = (y == cls).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        for f in range(k):
            folds[f].append(idx[f::k])
    return [torch.sort(torch.cat(f)).values for f in folds]


class CVResult(NamedTuple):
    """Cross-validated probe scores (out-of-fold predictions)."""

    auroc: Interval
    """AUROC of the out-of-fold scores with a DeLong interval."""
    accuracy: Interval
    """Accuracy of the out-of-fold predictions (score > 0) with a Wilson interval."""
    fold_auroc: tuple[float, ...]
    """AUROC of each fold."""
    scores: Tensor
    """Out-of-fold scores ``[N]``."""


def cross_validate(fit: Callable[[Tensor, Tensor], LinearProbe], x: Tensor, y: Tensor, *, k: int = 5,
                   seed: int = 0, level: float = 0.95) -> CVResult:
    """k-fold stratified cross-validation of ``fit(x_train, y_train) -> probe``."""
    x, yb = check_xy(x, y)
    scores = torch.empty(x.shape[0], dtype=torch.float64)
    fold_auc = []
    for test in stratified_folds(yb, k, seed=seed):
        train = torch.ones(x.shape[0], dtype=torch.bool)
        train[test] = False
        probe = fit(x[train], yb[train].long())
        s = probe.score(x[test]).double()
        scores[test] = s
        yt = yb[test]
        fold_auc.append(auroc(s, yt) if yt.any() and not yt.all() else float("nan"))
    return CVResult(auroc_ci(scores, yb, level=level), accuracy_ci((scores > 0).long(), yb, level=level),
                    tuple(fold_auc), scores)
