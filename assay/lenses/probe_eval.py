"""Scoring probes: accuracy with a Wilson interval, TPR at a fixed FPR, and stratified k-fold
cross-validation whose out-of-fold scores get an AUROC with DeLong's interval.

The statistics themselves (AUROC as the Mann–Whitney statistic, DeLong, DeLong & Clarke-Pearson
1988's interval, Wilson 1927's score interval) live in :mod:`assay.stats`; this module applies them to
probes (Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from assay.lenses.pooling import Sequences
from assay.lenses.probes import check_xy
from assay.stats import Interval, auroc, delong_interval, wilson_interval

__all__ = ["accuracy_ci", "tpr_at_fpr", "stratified_folds", "CVResult", "cross_validate"]


def _check_scores(scores: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    scores = torch.as_tensor(scores).double().flatten()
    y = torch.as_tensor(y).flatten().bool()
    if scores.numel() != y.numel():
        raise ValueError(f"{scores.numel()} scores for {y.numel()} labels")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    if y.all() or not y.any():
        raise ValueError("tpr_at_fpr needs both classes among the labels; got a single class")
    return scores, y


def accuracy_ci(pred: Tensor, y: Tensor, *, level: float = 0.95) -> Interval:
    """Accuracy with a Wilson score interval (:func:`assay.stats.wilson_interval`)."""
    pred, y = torch.as_tensor(pred).flatten(), torch.as_tensor(y).flatten()
    if pred.numel() != y.numel() or pred.numel() == 0:
        raise ValueError(f"need equally many predictions and labels (>0), got {pred.numel()} and {y.numel()}")
    hits = int((pred.long() == y.long()).sum())
    low, high = wilson_interval(hits, pred.numel(), level=level)
    return Interval(hits / pred.numel(), float(low), float(high))


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
    """AUROC of each fold (NaN where a fold holds a single class)."""
    scores: Tensor
    """Out-of-fold scores ``[N]``."""


def _check_inputs(x: Tensor | Sequences, y: Tensor) -> tuple[Tensor | Sequences, Tensor]:
    if not isinstance(x, Sequences):
        return check_xy(x, y)
    _, yb = check_xy(torch.zeros(len(x), 1), y)  # the label checks
    if not torch.isfinite(x.h[x.mask]).all():
        raise ValueError("sequence activations contain NaN or inf at real tokens")
    return x, yb


def cross_validate(fit: Callable[[Any, Tensor], Any], x: Tensor | Sequences, y: Tensor, *, k: int = 5,
                   seed: int = 0, level: float = 0.95) -> CVResult:
    """k-fold stratified cross-validation of ``fit(x_train, y_train) -> probe`` (anything with
    ``probe.score(x_test) -> [n]``): pooled features ``x [N, d]`` with a :class:`~assay.lenses.probes.LinearProbe`, or
    :class:`~assay.lenses.pooling.Sequences` with a :class:`~assay.lenses.pooling.SequenceProbe`."""
    x, yb = _check_inputs(x, y)
    scores = torch.empty(len(x), dtype=torch.float64)
    fold_auc = []
    for test in stratified_folds(yb, k, seed=seed):
        train = torch.ones(len(x), dtype=torch.bool)
        train[test] = False
        probe = fit(x[train], yb[train].long())
        s = probe.score(x[test]).double()
        scores[test] = s
        yt = yb[test]
        fold_auc.append(auroc(s, yt))
    return CVResult(delong_interval(scores, yb, level=level), accuracy_ci((scores > 0).long(), yb, level=level),
                    tuple(fold_auc), scores)
