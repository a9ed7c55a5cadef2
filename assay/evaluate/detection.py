"""Latents as concept detectors: best single-latent AUROC/F1, k-sparse probes, activation MCC.

For codes z ``[N, n]`` and binary ground-truth concepts y ``[N, C]`` (a planted feature firing, a
Dyck depth, a PCFG nonterminal — :func:`one_hot_concepts` turns integer labels into such columns),
with the AUROC matrix of :func:`assay.stats.auroc_matrix`:

    AUROC_ic = P(z_i of a positive > z_i of a negative) = (R_ic − P_c(P_c+1)/2) / (P_c (N − P_c)),
               R_ic = Σ of the (average-tie) ranks of z_i over the positives of concept c (Mann–Whitney)
    F1_ic    = 2 TP_ic / (#fires_i + P_c),   latent i "fires" when z_i > 1e-6 (SpaDE protocol)
    best latent of c: argmax_i AUROC_ic (resp. F1_ic)
    best-k F1 of c: mean of the k largest F1_ic over latents i (k = 5: the per-latent F1 of Hindupur et
               al. 2025, "Projecting Assumptions", which credits a concept tiled by several latents)

k-sparse probing follows Gurnee et al. 2023, "Finding Neurons in a Haystack: Case Studies with Sparse
Probing" and SAEBench (Karvonen et al. 2025): on a train split keep the k latents with the largest
|mean(z_i | y) − mean(z_i | ¬y)|, fit a logistic regression on them (:func:`assay.stats.logistic_regression`,
scikit-learn's objective with C = 1), report its AUROC on the test split.

Activation MCC (mean correlation coefficient, the identifiability metric of Hyvärinen & Morioka 2016,
"Unsupervised Feature Extraction by Time-Contrastive Learning and Nonlinear ICA"): Pearson correlations
between true feature values and latents, matched one-to-one by the Hungarian algorithm, averaged over
the true features (unmatched features count 0). A perfect dictionary scores 1; codes independent of
the features score ≈ 0 (AUROC ≈ 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from assay.evaluate.geometry import hungarian_match
from assay.stats import auroc, auroc_matrix, logistic_regression

__all__ = ["DetectionMetrics", "f1_matrix", "best_k_f1", "sparse_probe_auroc", "activation_mcc", "latent_detection",
           "one_hot_concepts", "FIRE_THRESHOLD"]

FIRE_THRESHOLD = 1e-6
"""A latent fires on a token when its code exceeds this."""


def _check(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if z.ndim != 2 or y.ndim != 2 or z.shape[0] != y.shape[0]:
        raise ValueError(f"codes must be [N, n] and concepts [N, C] with the same N, got {tuple(z.shape)} "
                         f"and {tuple(y.shape)}")
    if z.shape[0] < 2:
        raise ValueError("need at least 2 tokens to score detection")
    return z.detach().double().cpu(), y.detach().bool().cpu()


def f1_matrix(z: Tensor, y: Tensor, *, threshold: float = FIRE_THRESHOLD) -> Tensor:
    """F1 of "latent i fires" (z_i > threshold) as a detector of concept c, ``[n, C]``."""
    z, y = _check(z, y)
    on = (z > threshold).double()
    tp = on.t() @ y.double()
    denom = on.sum(0)[:, None] + y.double().sum(0)[None, :]
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))


def best_k_f1(z: Tensor, y: Tensor, *, k: int = 5, threshold: float = FIRE_THRESHOLD) -> Tensor:
    """Per concept, the mean F1 of its ``k`` best latents ``[C]`` (all latents when there are fewer than k)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    f1 = f1_matrix(z, y, threshold=threshold)
    return f1.topk(min(k, f1.shape[0]), dim=0).values.mean(0)


def sparse_probe_auroc(z: Tensor, y: Tensor, *, ks: Sequence[int] = (1, 2, 5), train_fraction: float = 0.5,
                       C: float = 1.0) -> dict[int, Tensor]:
    """Test AUROC of the best k-sparse logistic probe over latents, per concept: ``{k: [C]}``.

    The first ``train_fraction`` of the rows is the train split (rows must be exchangeable, e.g. iid
    samples); latents are chosen by the class-mean difference on it (SAEBench), standardised, and a
    logistic regression (:func:`assay.stats.logistic_regression`, inverse L2 strength ``C``) is fitted.
    NaN where a split lacks a class.
    """
    z, y = _check(z, y)
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if any(k <= 0 for k in ks):
        raise ValueError(f"probe sizes k must be positive, got {tuple(ks)}")
    n_train = int(round(z.shape[0] * train_fraction))
    ztr, zte, ytr, yte = z[:n_train], z[n_train:], y[:n_train], y[n_train:]
    mu, sd = ztr.mean(0), ztr.std(0).clamp(min=1e-8)
    ztr, zte = (ztr - mu) / sd, (zte - mu) / sd
    out = {k: torch.full((y.shape[1],), float("nan"), dtype=torch.float64) for k in ks}
    for c in range(y.shape[1]):
        yc, tc = ytr[:, c], yte[:, c]
        if yc.all() or not yc.any() or tc.all() or not tc.any():
            continue
        diff = (ztr[yc].mean(0) - ztr[~yc].mean(0)).abs()
        order = diff.argsort(descending=True)
        for k in ks:
            idx = order[: min(k, z.shape[1])]
            fit = logistic_regression(ztr[:, idx], yc, C=C)
            out[k][c] = auroc(zte[:, idx] @ fit.weight + fit.bias, tc)
    return out


def activation_mcc(z: Tensor, acts: Tensor) -> tuple[float, Tensor]:
    """Mean Hungarian-matched Pearson correlation between true feature values ``acts [N, m]`` and
    latents ``z [N, n]``; returns ``(mcc, per-feature matched correlation [m])`` (0 where unmatched)."""
    if z.ndim != 2 or acts.ndim != 2 or z.shape[0] != acts.shape[0]:
        raise ValueError(f"codes [N, n] and feature values [N, m] must share N, got {tuple(z.shape)}, "
                         f"{tuple(acts.shape)}")
    a = acts.detach().double().cpu()
    b = z.detach().double().cpu()
    rows, _, corr = hungarian_match((a - a.mean(0)).t(), (b - b.mean(0)).t(), signed=True)
    per = torch.zeros(a.shape[1], dtype=torch.float64)
    per[rows] = corr
    return per.mean().item(), per


class DetectionMetrics(NamedTuple):
    """How well single latents and sparse sets of latents detect each ground-truth concept."""

    concepts: tuple[str, ...]
    """Concept names, one per column of the label matrix."""
    best_auroc: Tensor
    """Per concept: the best single latent's AUROC ``[C]``."""
    best_auroc_latent: Tensor
    """Per concept: index of that latent ``[C]`` (long)."""
    best_f1: Tensor
    """Per concept: the best single latent's F1 of firing ``[C]``."""
    best_f1_latent: Tensor
    """Per concept: index of that latent ``[C]``."""
    probe_auroc: dict[int, Tensor]
    """k → per-concept test AUROC of the best k-sparse probe ``[C]`` (empty when not computed)."""
    mean_auroc: float
    """Mean of ``best_auroc`` over concepts (NaNs skipped)."""
    mean_f1: float
    """Mean of ``best_f1`` over concepts."""


def latent_detection(z: Tensor, y: Tensor, concepts: Sequence[str] | None = None, *,
                     probe_ks: Sequence[int] = (1, 2, 5), train_fraction: float = 0.5) -> DetectionMetrics:
    """All detection metrics of codes ``z [N, n]`` for concepts ``y [N, C]`` (``probe_ks=()`` skips probes)."""
    names = tuple(concepts) if concepts is not None else tuple(f"c{i}" for i in range(y.shape[1]))
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} concept names for {y.shape[1]} concept columns")
    auc = auroc_matrix(*_check(z, y))
    f1 = f1_matrix(z, y)
    auc_filled = torch.nan_to_num(auc, nan=-1.0)
    best_auc, best_auc_i = auc_filled.max(0)
    best_auc = torch.where(best_auc < 0, torch.full_like(best_auc, float("nan")), best_auc)
    best_f1, best_f1_i = f1.max(0)
    probes = sparse_probe_auroc(z, y, ks=probe_ks, train_fraction=train_fraction) if probe_ks else {}
    return DetectionMetrics(names, best_auc, best_auc_i, best_f1, best_f1_i, probes,
                            best_auc.nanmean().item(), best_f1.mean().item())


def one_hot_concepts(labels: Mapping[str, Tensor], *, mask: Tensor | None = None, min_count: int = 1,
                     max_values: int = 32) -> tuple[Tensor, tuple[str, ...]]:
    """Binary concept columns from labels: a bool label stays one column (``name``; a set-valued bool
    label ``[..., K]`` gives K columns ``name[j]``), an integer label
    gives one column per value ≥ 0 (``name=value``), at most ``max_values`` values each, values seen
    fewer than ``min_count`` times dropped. ``mask`` (bool, the labels' shape) keeps only those rows.

    Returns ``(y [N, C] bool, names)`` with N = mask.sum() (or all rows of the flattened labels).
    """
    cols: list[Tensor] = []
    names: list[str] = []
    for name, lab in labels.items():
        flat = lab[mask] if mask is not None else lab.reshape(-1)
        if flat.dtype == torch.bool and flat.ndim == 2:  # set-valued label: one column per member
            for j in range(flat.shape[1]):
                if int(flat[:, j].sum()) >= min_count:
                    cols.append(flat[:, j])
                    names.append(f"{name}[{j}]")
            continue
        if flat.dtype == torch.bool:
            if int(flat.sum()) >= min_count:
                cols.append(flat)
                names.append(name)
            continue
        if flat.is_floating_point():
            raise ValueError(f"label {name!r} is real-valued; one_hot_concepts takes bool or integer labels")
        for v in sorted(set(flat[flat >= 0].tolist()))[:max_values]:
            col = flat == v
            if int(col.sum()) >= min_count:
                cols.append(col)
                names.append(f"{name}={v}")
    if not cols:
        raise ValueError("no concept columns: every label was empty or below min_count")
    return torch.stack(cols, 1), tuple(names)
