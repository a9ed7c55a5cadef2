"""Contamination metrics: the accuracy/loss gap of inserted benchmark splits, and recovery of the copies.

Bordt, Srinivas, Boreiko & von Luxburg 2025, "How Much Can We Forget about Data Contamination?"
(ICML 2025). For splits s (0 = the never-inserted holdout) of benchmark items::

    accuracy gap(s) = acc(s) − acc(holdout),     loss gap(s) = loss(holdout) − loss(s)

with a standard error of the loss gap from the two independent sample means. Attribution ground truth
(the copies of item t are the training rows that should rank on top for t): per attributed item,
precision@r (r = its number of copies) of the top-r rows, and the AUROC of its copies against every other
row. This module never imports a method: it takes logits and score matrices.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from assay.stats import auroc

__all__ = ["SplitGaps", "split_gaps", "CopyRecovery", "copy_recovery"]


class SplitGaps(NamedTuple):
    """Per split (index 0 = the holdout), at the end of training."""

    accuracy: torch.Tensor
    """``[n_splits]`` multiple-choice accuracy."""
    loss: torch.Tensor
    """``[n_splits]`` mean answer cross-entropy over the full vocabulary."""
    accuracy_gap: torch.Tensor
    """``[n_splits]`` accuracy − holdout accuracy."""
    loss_gap: torch.Tensor
    """``[n_splits]`` holdout loss − loss (positive: the split is easier than the holdout)."""
    loss_gap_se: torch.Tensor
    """``[n_splits]`` standard error of ``loss_gap``."""
    item_loss: torch.Tensor
    """``[m]`` answer loss of every item."""


def split_gaps(logits: torch.Tensor, answer: torch.Tensor, answer_ids: torch.Tensor, split: torch.Tensor) -> SplitGaps:
    """Gaps from the next-token ``logits [m, V]`` after each item's prompt, its ``answer [m]`` token, the
    multiple-choice options ``answer_ids [A]`` and the ``split [m]`` of each item (0 = holdout; every split
    needs ≥ 2 items for a standard error)."""
    logits = logits.double()
    item_loss = torch.nn.functional.cross_entropy(logits, answer, reduction="none")
    correct = (answer_ids[logits[:, answer_ids].argmax(1)] == answer).double()
    splits = range(int(split.max()) + 1)
    acc = torch.stack([correct[split == s].mean() for s in splits])
    loss = torch.stack([item_loss[split == s].mean() for s in splits])
    var = torch.stack([item_loss[split == s].var() / int((split == s).sum()) for s in splits])
    return SplitGaps(acc, loss, acc - acc[0], loss[0] - loss, (var + var[0]).sqrt(), item_loss)


class CopyRecovery(NamedTuple):
    """How well scores find each item's own copies among all training rows."""

    precision_at_r: torch.Tensor
    """``[m]`` fraction of the top-r rows (r = the item's copies) that are its copies."""
    auroc: torch.Tensor
    """``[m]`` AUROC of the item's copies against every other row."""


def copy_recovery(scores: torch.Tensor, row_item: torch.Tensor, items: torch.Tensor) -> CopyRecovery:
    """Recovery for ``scores [n_rows, m]`` (column j attributes item ``items[j]``) against ``row_item
    [n_rows]`` (the item whose copy each row carries, −1 for none); every item needs ≥ 1 copy."""
    if scores.shape != (row_item.shape[0], items.shape[0]):
        raise ValueError(f"scores must be [n_rows, m] = [{row_item.shape[0]}, {items.shape[0]}], "
                         f"got {tuple(scores.shape)}")
    prec = torch.zeros(items.shape[0], dtype=torch.float64)
    roc = torch.zeros_like(prec)
    for j, t in enumerate(items.tolist()):
        pos = row_item == t
        r = int(pos.sum())
        if r == 0:
            raise ValueError(f"item {t} has no copy in the rows; attribute only inserted items")
        prec[j] = pos[torch.topk(scores[:, j], r).indices].double().mean()
        roc[j] = auroc(scores[:, j], pos)
    return CopyRecovery(prec, roc)
