"""Linear probes on activations: difference of means, LDA and L2-regularised logistic regression.

Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes"; Marks &
Tegmark 2023, "The Geometry of Truth" (mass-mean probes); the logistic baseline of McKenzie et al.
2025, "Detecting High-Stakes Interactions with Activation Probes". For features X ∈ ℝ^{N×d} and
labels y ∈ {0,1}^N:

    difference of means   w = μ₊ − μ₋,                          b = −w·(μ₊ + μ₋)/2
    LDA (shrinkage α)     w = Σ_α⁻¹(μ₊ − μ₋),  Σ_α = (1 − α)Σ + α·(tr Σ/d)·I,  b as above
    logistic              min_w,b  mean_i BCE(σ(w·x_i + b), y_i) + ‖w‖²/(2·C·N)
                          (sklearn's objective divided by C·N: ``C`` is ``LogisticRegression``'s C on
                          the features as given; with ``standardise=True`` x is replaced by the
                          standardised x̃ = (x − μ)/σ, i.e. ``StandardScaler → LogisticRegression(C)``,
                          and the penalty falls on the weights of x̃)

Every probe is returned as a :class:`LinearProbe` in *raw* activation coordinates
(score = w·x + b), whatever standardisation it was fitted with, so it can be read out, evaluated and
turned into a steering direction / :class:`~assay.lenses.direction.DirectionLens` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from assay.lenses.direction import DirectionLens
from assay.stats import LinearModel, logistic_regression

__all__ = [
    "LinearProbe",
    "check_xy",
    "diff_of_means",
    "lda",
    "logistic",
    "LogisticPath",
    "logistic_path",
    "SparseProbe",
    "sparse_probe",
]


@dataclass(frozen=True)
class LinearProbe:
    """A linear probe in raw activation coordinates: score(x) = w·x + b (a logit for logistic)."""

    w: Tensor
    """Weight ``[d]``."""
    b: Tensor
    """Bias (0-d tensor)."""
    method: str
    """How it was fitted ("diff_of_means", "lda", "logistic")."""

    def score(self, x: Tensor) -> Tensor:
        """Scores ``[...]`` of activations ``[..., d]``."""
        if x.shape[-1] != self.w.shape[0]:
            raise ValueError(f"probe expects width {self.w.shape[0]}, got activations of shape {tuple(x.shape)}")
        return x.to(self.w.dtype) @ self.w + self.b

    def predict_proba(self, x: Tensor) -> Tensor:
        """σ(score) — a probability for logistic probes, a monotone score otherwise."""
        return torch.sigmoid(self.score(x))

    def predict(self, x: Tensor) -> Tensor:
        """Class 1 where score > 0 (long)."""
        return (self.score(x) > 0).long()

    @property
    def direction(self) -> Tensor:
        """Unit direction w/‖w‖ ``[d]``."""
        return self.w / self.w.norm()

    def lens(self) -> DirectionLens:
        """The probe as a one-concept lens along its direction (Bhalla et al. 2024: x̂ = x + α w)."""
        return DirectionLens(self.w)


def check_xy(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Validate features ``[N, d]`` and binary labels ``[N]``; return ``(x float, y bool)``."""
    if x.dim() != 2:
        raise ValueError(f"probe features must be [N, d], got shape {tuple(x.shape)}; pool sequences first")
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be [N] with N={x.shape[0]} matching the features, got shape {tuple(y.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("probe features contain NaN or inf; check the activations (e.g. a padded or overflowing site)")
    vals = torch.unique(y)
    if not set(vals.tolist()) <= {0, 1}:
        raise ValueError(f"labels must be binary 0/1, got values {vals.tolist()[:10]}")
    if vals.numel() < 2:
        raise ValueError(f"labels have a single class ({vals.tolist()}); a probe needs examples of both classes")
    xf = x if torch.is_floating_point(x) else x.float()
    return xf, y.bool()


def _midpoint(w: Tensor, mu_pos: Tensor, mu_neg: Tensor) -> Tensor:
    return -(w @ (mu_pos + mu_neg)) / 2


def diff_of_means(x: Tensor, y: Tensor) -> LinearProbe:
    """Mass-mean probe w = μ₊ − μ₋ with the midpoint threshold."""
    x, y = check_xy(x, y)
    mu_pos, mu_neg = x[y].mean(0), x[~y].mean(0)
    w = mu_pos - mu_neg
    return LinearProbe(w, _midpoint(w, mu_pos, mu_neg), "diff_of_means")


def pooled_covariance(x: Tensor, y: Tensor) -> Tensor:
    """Pooled within-class covariance (maximum-likelihood, divided by N)."""
    xc = torch.cat([x[y] - x[y].mean(0), x[~y] - x[~y].mean(0)])
    return xc.T @ xc / x.shape[0]


def lda(x: Tensor, y: Tensor, *, shrinkage: float = 1e-3) -> LinearProbe:
    """LDA direction Σ_α⁻¹(μ₊ − μ₋) with shrinkage α towards (tr Σ/d)·I (IID mass-mean probe)."""
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must lie in [0, 1], got {shrinkage}")
    x, y = check_xy(x, y)
    xd = x.double()
    mu_pos, mu_neg = xd[y].mean(0), xd[~y].mean(0)
    cov = pooled_covariance(xd, y)
    d = cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * (torch.trace(cov) / d) * torch.eye(d, dtype=cov.dtype)
    w = torch.linalg.solve(cov, mu_pos - mu_neg)
    return LinearProbe(w.to(x.dtype), _midpoint(w, mu_pos, mu_neg).to(x.dtype), "lda")


def _standardise(x: Tensor, standardise: bool) -> tuple[Tensor, Tensor, Tensor]:
    mu = x.mean(0) if standardise else torch.zeros(x.shape[1], dtype=x.dtype)
    sd = x.std(0, unbiased=False) if standardise else torch.ones(x.shape[1], dtype=x.dtype)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    return (x - mu) / sd, mu, sd


def logistic(x: Tensor, y: Tensor, *, C: float = 1.0, standardise: bool = False, fit_intercept: bool = True,
             max_iter: int = 500, tol: float = 1e-9) -> LinearProbe:
    """L2 logistic regression, sklearn's ``LogisticRegression(C=C)`` fitted on ``x`` as given
    (:func:`assay.stats.logistic_regression`); ``standardise=True`` fits it on standardised features
    instead (``StandardScaler → LogisticRegression(C=C)``: the same C is then a different, scale-free
    regularisation). Returned in raw coordinates either way."""
    x, y = check_xy(x, y)
    xs, mu, sd = _standardise(x.double(), standardise)
    fit = logistic_regression(xs, y, C=C, fit_intercept=fit_intercept, max_iter=max_iter, tol=tol)
    return _to_raw(fit, mu, sd, x.dtype)


def _to_raw(fit: LinearModel, mu: Tensor, sd: Tensor, dtype: torch.dtype) -> LinearProbe:
    w = fit.weight / sd
    b = fit.bias - w @ mu
    return LinearProbe(w.to(dtype), b.to(dtype), "logistic")


class LogisticPath(NamedTuple):
    """Logistic probes along a regularisation path (warm-started from strong to weak regularisation)."""

    Cs: tuple[float, ...]
    """The inverse regularisation strengths, in the order fitted (ascending)."""
    probes: tuple[LinearProbe, ...]
    """One probe per C, in raw coordinates."""


def logistic_path(x: Tensor, y: Tensor, Cs: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0), *,
                  standardise: bool = False, fit_intercept: bool = True, max_iter: int = 500) -> LogisticPath:
    """Fit :func:`logistic` probes for every C (ascending, each warm-started from the previous
    solution); ``standardise`` as in :func:`logistic`."""
    if not Cs or any(c <= 0 for c in Cs):
        raise ValueError(f"Cs must be a non-empty list of positive numbers, got {Cs}")
    x, y = check_xy(x, y)
    xs, mu, sd = _standardise(x.double(), standardise)
    fit, probes = None, []
    order = sorted(Cs)
    for C in order:
        fit = logistic_regression(xs, y, C=C, fit_intercept=fit_intercept, init=fit, max_iter=max_iter)
        probes.append(_to_raw(fit, mu, sd, x.dtype))
    return LogisticPath(tuple(order), tuple(probes))


class SparseProbe(NamedTuple):
    """A logistic probe on the k latents with the largest class-mean difference (SAEBench-style)."""

    latents: Tensor
    """The selected latent indices ``[k]`` (largest |mean₊ − mean₋| first)."""
    probe: LinearProbe
    """Logistic probe over the selected latents (raw coordinates)."""

    def score(self, z: Tensor) -> Tensor:
        """Scores of full latent codes ``[..., n_latents]``."""
        return self.probe.score(z[..., self.latents])


def sparse_probe(z: Tensor, y: Tensor, k: int, *, C: float = 1.0) -> SparseProbe:
    """k-sparse probe on SAE latents ``z [N, n]`` (Gao et al. 2024; SAEBench): select the k latents
    with the largest |mean₊ − mean₋|, then fit a standardised logistic probe on them (``C`` applies to
    the standardised latents, as ``StandardScaler → LogisticRegression(C=C)``)."""
    z, yb = check_xy(z, y)
    if not 1 <= k <= z.shape[1]:
        raise ValueError(f"k must be in 1..{z.shape[1]}, got {k}")
    gap = (z[yb].mean(0) - z[~yb].mean(0)).abs()
    latents = torch.argsort(gap, descending=True, stable=True)[:k]
    return SparseProbe(latents, logistic(z[:, latents], yb.long(), C=C, standardise=True))
