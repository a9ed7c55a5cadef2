"""The statistics floor: ranks, AUROC with its DeLong interval, Spearman correlation, Wilson and
Student-t intervals, and L2-regularised logistic / softmax regression, each defined once.

    average ranks     r_i = 1 + #{j: x_j < x_i} + (#{j ≠ i: x_j = x_i})/2   (scipy's rankdata "average")
    AUROC             (Σ_{i positive} r_i − m(m+1)/2) / (m·n)  = P(s₊ > s₋) + ½P(s₊ = s₋)
                      (Mann & Whitney 1947, "On a test of whether one of two random variables is
                      stochastically larger than the other"; m positives, n negatives)
    DeLong interval   Var(AUC) = Var(V₁₀)/m + Var(V₀₁)/n, V₁₀(i) = mean_j ψ(s₊ᵢ, s₋ⱼ),
                      V₀₁(j) = mean_i ψ(s₊ᵢ, s₋ⱼ) (DeLong, DeLong & Clarke-Pearson 1988, "Comparing the
                      areas under two or more correlated receiver operating characteristic curves: a
                      nonparametric approach"), from mid-ranks in O(N log N) (Sun & Xu 2014, "Fast
                      implementation of DeLong's algorithm"); normal interval AUC ± z·√Var, clipped to [0, 1]
    Spearman          Pearson correlation of the average ranks (Spearman 1904)
    Wilson            (p̂ + z²/2n ± z√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n) (Wilson 1927, "Probable
                      inference, the law of succession, and statistical inference")
    Student t         mean ± t_{n−1, (1+level)/2} · s/√n (Student 1908, "The probable error of a mean")
    logistic/softmax  min_{W,b} C·Σ_i CE(softmax(W x_i + b), y_i) + ½‖W‖² (+ ½‖b‖² if the intercept
                      is penalised): scikit-learn's ``LogisticRegression(C=C)`` objective, minimised
                      in float64 by L-BFGS (Liu & Nocedal 1989, "On the limited memory BFGS method for
                      large scale optimization") on the equivalent mean CE + ‖W‖²/(2CN)

Conventions, fixed here for the whole library: an AUROC (or its interval) over labels of a single
class is NaN; a Spearman correlation with a constant side is NaN; NaN inputs get NaN ranks (the
other values are ranked among themselves, scipy's ``nan_policy="omit"``); a Wilson interval over
n = 0 trials is [0, 1] (its limit as n → 0). This module imports nothing from assay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from statistics import NormalDist
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Interval",
    "MeanInterval",
    "LinearModel",
    "average_ranks",
    "auroc",
    "auroc_matrix",
    "delong_interval",
    "pearson",
    "spearman",
    "wilson_interval",
    "t_interval",
    "logistic_regression",
    "softmax_regression",
]


class Interval(NamedTuple):
    """A point estimate with a two-sided confidence interval."""

    value: float
    """The estimate."""
    low: float
    """Lower bound."""
    high: float
    """Upper bound."""


class MeanInterval(NamedTuple):
    """A mean with its Student-t interval."""

    mean: float
    """Mean of the finite values (NaN when there are none)."""
    low: float
    """Lower bound (the mean itself when n = 1)."""
    high: float
    """Upper bound."""
    n: int
    """Number of finite values."""


class LinearModel(NamedTuple):
    """A fitted linear model: logits = x Wᵀ + b (float64)."""

    weight: Tensor
    """``[d]`` (binary logistic regression) or ``[K, d]`` (softmax regression)."""
    bias: Tensor
    """``[]`` (binary) or ``[K]`` (softmax); zeros without an intercept."""


def _z(level: float) -> float:
    """The two-sided standard-normal quantile Φ⁻¹((1 + level)/2)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


# ----------------------------------------------------------------------------------------------- ranks


def average_ranks(x: Tensor, dim: int = -1, *, chunk: int = 512) -> Tensor:
    """Ranks 1..N of ``x`` along ``dim`` (float64, ``x``'s shape), ties given their average rank.

    Equals ``scipy.stats.rankdata(x, axis=dim, nan_policy="omit")``: NaNs get NaN ranks and the other
    values are ranked among themselves. ``chunk`` slices along ``dim`` are ranked at a time, which
    bounds the temporaries to a few ``chunk × N`` tensors.
    """
    x = torch.as_tensor(x).detach()
    if x.ndim == 0:
        raise ValueError("average_ranks needs at least one dimension, got a 0-d tensor")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    moved = x.movedim(dim, -1)
    n = moved.shape[-1]
    if moved.numel() == 0:
        return torch.empty(x.shape, dtype=torch.float64, device=x.device)
    rows = moved.reshape(-1, n)
    out = torch.empty(rows.shape, dtype=torch.float64, device=x.device)
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    for a in range(0, rows.shape[0], chunk):
        s, idx = rows[a : a + chunk].sort(-1)
        first = torch.ones_like(s, dtype=torch.bool)  # first element of a run of equal values
        first[:, 1:] = s[:, 1:] != s[:, :-1]
        last = torch.ones_like(first)
        last[:, :-1] = first[:, 1:]
        lo = torch.where(first, pos, 0.0).cummax(-1).values
        hi = torch.where(last, pos, n + 1.0).flip(-1).cummin(-1).values.flip(-1)
        r = (lo + hi) / 2
        if s.is_floating_point():
            r = torch.where(s.isnan(), float("nan"), r)
        out[a : a + chunk].scatter_(-1, idx, r)
    return out.reshape(moved.shape).movedim(-1, dim)


def pearson(a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` (one shape) along ``dim``: float64, ``dim`` reduced.

    NaN where either side is constant along ``dim`` (or holds a NaN).
    """
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"a correlation needs two tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.double() - a.double().mean(dim, keepdim=True)
    b = b.double() - b.double().mean(dim, keepdim=True)
    den = (a.square().sum(dim) * b.square().sum(dim)).sqrt()
    return torch.where(den > 0, (a * b).sum(dim) / den, float("nan"))


def spearman(a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """Spearman rank correlation of ``a`` and ``b`` (one shape) along ``dim``: the Pearson correlation of
    their average ranks; float64, ``dim`` reduced. NaN where either side is constant along ``dim`` (or
    holds a NaN)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"a correlation needs two tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return pearson(average_ranks(a, dim), average_ranks(b, dim), dim)


# ----------------------------------------------------------------------------------------------- AUROC


def _binary(labels: Tensor, device: torch.device) -> Tensor:
    y = torch.as_tensor(labels).detach()
    if y.dtype != torch.bool:
        if ((y != 0) & (y != 1)).any():
            raise ValueError("AUROC labels must be bool or 0/1")
        y = y != 0
    return y.to(device)


def auroc_matrix(scores: Tensor, labels: Tensor) -> Tensor:
    """AUROC of every score column of ``scores [N, n]`` for every label column of ``labels [N, C]``
    (bool or 0/1): ``[n, C]`` float64. Ties count one half; a label column of a single class gives NaN."""
    s, labels = torch.as_tensor(scores).detach(), torch.as_tensor(labels)
    if s.ndim != 2 or labels.ndim != 2 or s.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must be [N, n] and labels [N, C] with the same N, got {tuple(s.shape)} "
                         f"and {tuple(labels.shape)}")
    if s.is_floating_point() and s.isnan().any():
        raise ValueError("AUROC scores contain NaN")
    y = _binary(labels, s.device).double()
    pos = y.sum(0)  # [C]
    neg = y.shape[0] - pos
    rank_sum = average_ranks(s, dim=0).t() @ y  # [n, C]
    auc = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
    return torch.where((pos > 0) & (neg > 0), auc, float("nan"))


def auroc(scores: Tensor, labels: Tensor) -> float:
    """AUROC of ``scores [N]`` (higher = more positive) against ``labels [N]`` (bool or 0/1); ties count
    one half; NaN when the labels hold a single class."""
    s, y = torch.as_tensor(scores).reshape(-1), torch.as_tensor(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.numel()} scores for {y.numel()} labels")
    return float(auroc_matrix(s[:, None], y[:, None])[0, 0])


def delong_interval(scores: Tensor, labels: Tensor, *, level: float = 0.95) -> Interval:
    """AUROC of ``scores [N]`` against ``labels [N]`` with DeLong's normal interval at ``level``
    (clipped to [0, 1]); all NaN when the labels hold a single class."""
    z = _z(level)
    s = torch.as_tensor(scores).detach().double().reshape(-1)
    y = _binary(torch.as_tensor(labels).reshape(-1), s.device)
    if s.shape != y.shape:
        raise ValueError(f"{s.numel()} scores for {y.numel()} labels")
    if s.isnan().any():
        raise ValueError("AUROC scores contain NaN")
    pos, neg = s[y], s[~y]
    m, n = pos.numel(), neg.numel()
    if m == 0 or n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    r_all = average_ranks(torch.cat([pos, neg]))
    v10 = (r_all[:m] - average_ranks(pos)) / n        # per positive: share of negatives below (+½ ties)
    v01 = 1.0 - (r_all[m:] - average_ranks(neg)) / m  # per negative: share of positives above (+½ ties)
    auc = float(v10.mean())
    var = (float(v10.var()) / m if m > 1 else 0.0) + (float(v01.var()) / n if n > 1 else 0.0)
    half = z * math.sqrt(var)
    return Interval(auc, max(0.0, auc - half), min(1.0, auc + half))


# ------------------------------------------------------------------------------------------- intervals


def wilson_interval(k: Tensor | float, n: Tensor | float, *, level: float = 0.95) -> tuple[Tensor, Tensor]:
    """Wilson score interval ``(low, high)`` (float64 tensors, broadcast shape) of k successes in n
    trials at ``level``; [0, 1] where n = 0."""
    z = _z(level)
    k = torch.as_tensor(k, dtype=torch.float64)
    n = torch.as_tensor(n, dtype=torch.float64, device=k.device)
    if bool(((k < 0) | (k > n)).any()):
        raise ValueError("Wilson interval needs 0 <= k <= n successes")
    seen = n > 0
    n1 = torch.where(seen, n, 1.0)
    p = k / n1
    denom = 1 + z * z / n1
    centre = (p + z * z / (2 * n1)) / denom
    half = z * torch.sqrt(p * (1 - p) / n1 + z * z / (4 * n1 * n1)) / denom
    low = torch.where(seen, (centre - half).clamp(0, 1), 0.0)
    high = torch.where(seen, (centre + half).clamp(0, 1), 1.0)
    return low, high


def t_interval(values: Iterable[float | None] | Tensor, *, level: float = 0.95) -> MeanInterval:
    """Mean of the finite values (None, NaN and inf skipped) with its Student-t interval at ``level``;
    n = 1 gives a zero-width interval, n = 0 all NaN."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if isinstance(values, Tensor):
        values = values.detach().reshape(-1).tolist()
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    n = len(v)
    if n == 0:
        return MeanInterval(float("nan"), float("nan"), float("nan"), 0)
    m = sum(v) / n
    if n == 1:
        return MeanInterval(m, m, m, 1)
    from scipy.special import stdtrit  # the Student-t quantile (a lighter import than scipy.stats)

    s = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1))
    half = float(stdtrit(n - 1, 0.5 + level / 2)) * s / math.sqrt(n)
    return MeanInterval(m, m - half, m + half, n)


# ------------------------------------------------------------------------------- logistic regression


def _check_fit(x: Tensor, y: Tensor, C: float, init: LinearModel | None) -> Tensor:
    if x.ndim != 2:
        raise ValueError(f"features must be [N, d], got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must be [N] with N={x.shape[0]}, got shape {tuple(y.shape)}")
    if not C > 0:
        raise ValueError(f"C (inverse regularisation strength) must be positive, got {C}")
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    if init is not None and not isinstance(init, LinearModel):
        raise TypeError(f"init must be a LinearModel (a previous fit), got {type(init).__name__}")
    return x.detach().double()


def _fit_linear(x: Tensor, y: Tensor, k: int, loss: Callable[[Tensor, Tensor], Tensor], *, C: float,
                fit_intercept: bool, penalize_intercept: bool, init: LinearModel | None, max_iter: int,
                tol: float) -> Tensor:
    """The one solver: min over θ = [W | b] ``[k, d + 1]`` of mean loss + (‖W‖² (+ ‖b‖²))/(2CN) by
    L-BFGS with a strong-Wolfe line search (float64)."""
    N, d = x.shape
    if init is None:
        theta = torch.zeros(k, d + 1, dtype=torch.float64, device=x.device)
    else:
        theta = torch.cat([init.weight.reshape(k, d), init.bias.reshape(k, 1)], 1).to(x.device, torch.float64)
    theta.requires_grad_(True)
    scale = 0.0 if math.isinf(C) else 1.0 / (2 * C * N)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-15,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        w, b = theta[:, :d], theta[:, d]
        if not fit_intercept:
            b = torch.zeros_like(b)
        penalty = w.square().sum() + (b.square().sum() if penalize_intercept else 0.0)
        value = loss(x @ w.t() + b, y) + scale * penalty
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(closure)
    out = theta.detach()
    if not fit_intercept:
        out[:, d] = 0.0
    return out


def logistic_regression(x: Tensor, y: Tensor, *, C: float = 1.0, fit_intercept: bool = True,
                        penalize_intercept: bool = False, init: LinearModel | None = None, max_iter: int = 500,
                        tol: float = 1e-9) -> LinearModel:
    """Binary L2 logistic regression: minimises C·Σ_i BCE(σ(w·x_i + b), y_i) + ½‖w‖² (+ ½b² with
    ``penalize_intercept``), scikit-learn's ``LogisticRegression(C=C)`` objective (``C=math.inf``: no
    penalty). ``x [N, d]``, ``y [N]`` bool or 0/1 with both classes; ``init`` warm-starts from a previous
    fit; L-BFGS stops when every gradient entry of the mean objective is below ``tol`` or after
    ``max_iter`` iterations. Returns ``weight [d]``, ``bias []`` (float64)."""
    x = _check_fit(x, y, C, init)
    yd = torch.as_tensor(y).detach()
    if yd.dtype != torch.bool and ((yd != 0) & (yd != 1)).any():
        raise ValueError("logistic_regression labels must be bool or 0/1; use softmax_regression for classes")
    yd = yd.to(x.device).double()
    if yd.min() == yd.max():
        raise ValueError("logistic_regression needs examples of both classes; got a single class")
    theta = _fit_linear(x, yd, 1, lambda logits, t: torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, 0], t), C=C, fit_intercept=fit_intercept, penalize_intercept=penalize_intercept, init=init,
        max_iter=max_iter, tol=tol)
    return LinearModel(theta[0, :-1], theta[0, -1])


def softmax_regression(x: Tensor, y: Tensor, n_classes: int | None = None, *, C: float = 1.0,
                       fit_intercept: bool = True, penalize_intercept: bool = False, init: LinearModel | None = None,
                       max_iter: int = 500, tol: float = 1e-9) -> LinearModel:
    """Multinomial (softmax) L2 logistic regression: minimises C·Σ_i CE(softmax(W x_i + b), y_i) + ½‖W‖²
    (+ ½‖b‖² with ``penalize_intercept``), scikit-learn's multinomial ``LogisticRegression(C=C)``
    objective. ``y [N]`` integer classes in 0..n_classes−1 (``n_classes`` defaults to max(y) + 1).
    Returns ``weight [K, d]``, ``bias [K]`` (float64). Without a penalised intercept the softmax is
    invariant to adding a constant to every bias, so only bias differences are determined; a class
    absent from ``y`` has no finite optimum unless the intercept is penalised or absent."""
    x = _check_fit(x, y, C, init)
    yl = torch.as_tensor(y).detach()
    if yl.is_floating_point() or yl.dtype == torch.bool:
        raise ValueError(f"softmax_regression labels must be integer classes, got {yl.dtype}")
    k = int(yl.max()) + 1 if n_classes is None else n_classes
    if int(yl.min()) < 0 or int(yl.max()) >= k:
        raise ValueError(f"class labels must lie in 0..{k - 1}, got {int(yl.min())}..{int(yl.max())}")
    theta = _fit_linear(x, yl.to(x.device).long(), k, torch.nn.functional.cross_entropy, C=C,
                        fit_intercept=fit_intercept, penalize_intercept=penalize_intercept, init=init,
                        max_iter=max_iter, tol=tol)
    return LinearModel(theta[:, :-1], theta[:, -1])
