"""Latents as concept detectors: best single-latent AUROC/F1, k-sparse probes, activation MCC.

For codes z ``[N, n]`` and binary ground-truth concepts y ``[N, C]`` (a planted feature firing, a
Dyck depth, a PCFG nonterminal — :func:`one_hot_concepts` turns integer labels into such columns):

    AUROC_ic = P(z_i of a positive > z_i of a negative) = (R_ic − P_c(P_c+1)/2) / (P_c (N − P_c)),
               R_ic = Σ of the (average-tie) ranks of z_i over the positives of concept c (Mann–Whitney)
    F1_ic    = 2 TP_ic / (#fires_i + P_c),   latent i "fires" when z_i > 1e-6 (SpaDE protocol)
    best latent of c: argmax_i AUROC_ic (resp. F1_ic)

k-sparse probing follows Gurnee et al. 2023, "Finding Neurons in a Haystack: Case Studies with Sparse
Probing" and SAEBench (Karvonen et al. 2025): on a train split keep the k latents with the largest
|mean(z_i | y) − mean(z_i | ¬y)|, fit a logistic regression on them (Newton/IRLS, scikit-learn's
objective with C = 1), report its AUROC on the test split.

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

__all__ = ["DetectionMetrics", "auroc_matrix", "f1_matrix", "average_ranks", "logistic_fit", "sparse_probe_auroc", "activation_mcc",
           "latent_detection", "one_hot_concepts", "FIRE_THRESHOLD"]

FIRE_THRESHOLD = 1e-6
"""A latent fires on a token when its code exceeds this."""


def _check(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if z.ndim != 2 or y.ndim != 2 or z.shape[0] != y.shape[0]:
        raise ValueError(f"codes must be [N, n] and concepts [N, C] with the same N, got {tuple(z.shape)} "
                         f"and {tuple(y.shape)}")
    if z.shape[0] < 2:
        raise ValueError("need at least 2 tokens to score detection")
    return z.detach().double().cpu(), y.detach().bool().cpu()


def average_ranks(z: Tensor, *, chunk: int = 512) -> Tensor:
    """Ranks 1..N of each column of ``z [N, n]``, ties given their average rank (float64)."""
    N = z.shape[0]
    out = torch.empty(z.shape, dtype=torch.float64)
    pos = torch.arange(1, N + 1, dtype=torch.float64)[:, None]
    for a in range(0, z.shape[1], chunk):
        s, idx = z[:, a : a + chunk].sort(0)
        new = torch.ones_like(s, dtype=torch.bool)
        new[1:] = s[1:] != s[:-1]
        gid = new.long().cumsum(0) - 1
        p = pos.expand_as(s)
        sums = torch.zeros_like(p).scatter_add_(0, gid, p)
        cnt = torch.zeros_like(p).scatter_add_(0, gid, torch.ones_like(p))
        out[:, a : a + chunk] = torch.empty_like(p).scatter_(0, idx, (sums / cnt.clamp(min=1)).gather(0, gid))
    return out


def auroc_matrix(z: Tensor, y: Tensor) -> Tensor:
    """AUROC of every latent (column of ``z [N, n]``) for every concept (column of bool ``y [N, C]``) ``[n, C]``.

    Ties count one half (average ranks). A concept with no positives or no negatives gives NaN.
    """
    z, y = _check(z, y)
    ranks = average_ranks(z)  # [N, n]
    pos = y.double().sum(0)  # [C]
    neg = y.shape[0] - pos
    r = ranks.t() @ y.double()  # [n, C]
    auc = (r - pos * (pos + 1) / 2) / (pos * neg)
    return torch.where((pos > 0) & (neg > 0), auc, torch.full_like(auc, float("nan")))


def f1_matrix(z: Tensor, y: Tensor, *, threshold: float = FIRE_THRESHOLD) -> Tensor:
    """F1 of "latent i fires" (z_i > threshold) as a detector of concept c, ``[n, C]``."""
    z, y = _check(z, y)
    on = (z > threshold).double()
    tp = on.t() @ y.double()
    denom = on.sum(0)[:, None] + y.double().sum(0)[None, :]
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))


def _auroc_1d(score: Tensor, y: Tensor) -> float:
    return auroc_matrix(score[:, None], y[:, None])[0, 0].item()


def logistic_fit(X: Tensor, y: Tensor, *, l2: float = 1.0, iters: int = 50, tol: float = 1e-10) -> Tensor:
    """L2-regularised logistic regression by Newton's method (IRLS): minimises
    Σ_b log(1 + exp(−s_b (X_b w + w₀))) + (l2/2)‖w‖² (bias unpenalised) — scikit-learn's
    ``LogisticRegression(C=1/l2)`` objective. Returns ``[w, w₀]`` ``[k + 1]`` (float64)."""
    A = torch.cat([X.double(), torch.ones(X.shape[0], 1, dtype=torch.float64)], 1)
    t = y.double()
    w = torch.zeros(A.shape[1], dtype=torch.float64)
    reg = torch.full((A.shape[1],), float(l2), dtype=torch.float64)
    reg[-1] = 0.0
    for _ in range(iters):
        p = torch.sigmoid(A @ w)
        g = A.t() @ (p - t) + reg * w
        H = (A * (p * (1 - p))[:, None]).t() @ A + torch.diag(reg) + 1e-9 * torch.eye(A.shape[1], dtype=torch.float64)
        step = torch.linalg.solve(H, g)
        w = w - step
        if step.abs().max().item() < tol:
            break
    return w


def sparse_probe_auroc(z: Tensor, y: Tensor, *, ks: Sequence[int] = (1, 2, 5), train_fraction: float = 0.5,
                       l2: float = 1.0) -> dict[int, Tensor]:
    """Test AUROC of the best k-sparse logistic probe over latents, per concept: ``{k: [C]}``.

    The first ``train_fraction`` of the rows is the train split (rows must be exchangeable, e.g. iid
    samples); latents are chosen by the class-mean difference on it (SAEBench), standardised, and a
    logistic regression (L2 ``l2``, :func:`logistic_fit`) is fitted. NaN where a split lacks a class.
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
            w = logistic_fit(ztr[:, idx], yc, l2=l2)
            out[k][c] = _auroc_1d(zte[:, idx] @ w[:-1] + w[-1], tc)
    return out


def activation_mcc(z: Tensor, acts: Tensor) -> tuple[float, Tensor]:
    """Mean Hungarian-matched Pearson correlation between true feature values ``acts [N, m]`` and
    latents ``z [N, n]``; returns ``(mcc, per-feature matched correlation [m])`` (0 where unmatched)."""
    if z.ndim != 2 or acts.ndim != 2 or z.shape[0] != acts.shape[0]:
        raise ValueError(f"codes [N, n] and feature values [N, m] must share N, got {tuple(z.shape)}, "
                         f"{tuple(acts.shape)}")
    a = acts.detach().double().cpu()
    b = z.detach().double().cpu()
    rows, _, corr = hungarian_match((a - a.mean(0)).t(), (b - b.mean(0)).t(), signed=False)
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
    auc = auroc_matrix(z, y)
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
