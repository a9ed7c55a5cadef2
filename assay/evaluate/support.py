"""Support recovery of sparse codes: precision, recall and F1 of the recovered nonzeros against a planted support.

As used to score sparse recovery in compressed sensing and, here, SpLiCE's decompositions (Bhalla,
Oesterling, Srinivas, Calmon & Lakkaraju 2024, "Interpreting CLIP with Sparse Linear Concept Embeddings")
on a world with planted concept codes. Per example b, with recovered support R_b = {i : w_bi > threshold}
and true support T_b:

    precision_b = |R_b ∩ T_b| / |R_b|  (1 when R_b is empty),   recall_b = |R_b ∩ T_b| / |T_b|  (1 when T_b is empty)
    F1_b = 2 |R_b ∩ T_b| / (|R_b| + |T_b|)  (1 when both are empty)

and each metric is the mean over examples (per-example averaging, so every query counts once).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["SupportMetrics", "support_recovery"]


class SupportMetrics(NamedTuple):
    """Mean per-example support recovery."""

    f1: float
    """Mean F1 of the recovered support."""
    precision: float
    """Mean precision."""
    recall: float
    """Mean recall."""
    l0: float
    """Mean size of the recovered support."""


def support_recovery(w: Tensor, support: Tensor, *, threshold: float = 0.0) -> SupportMetrics:
    """Recovered support ``w [n, c] > threshold`` scored against the planted boolean ``support [n, c]``."""
    if w.shape != support.shape or w.dim() != 2:
        raise ValueError(f"codes and support must both be [n, c], got {tuple(w.shape)} and {tuple(support.shape)}")
    rec = w > threshold
    true = support.bool()
    hit = (rec & true).sum(1).double()
    nr, nt = rec.sum(1).double(), true.sum(1).double()
    precision = (hit / nr).where(nr > 0, hit.new_ones(()))
    recall = (hit / nt).where(nt > 0, hit.new_ones(()))
    f1 = (2 * hit / (nr + nt)).where(nr + nt > 0, hit.new_ones(()))
    return SupportMetrics(float(f1.mean()), float(precision.mean()), float(recall.mean()), float(nr.mean()))
