"""Data initialisation of a TopK transcoder: one feature per input centre, winning on the inputs nearest to it.

Encoder columns from data points, as the k-means / "data-point" initialisations of dictionary learning (Coates &
Ng 2012, "Learning Feature Representations with K-means"; k-means++ seeding after Arthur & Vassilvitskii 2007),
written for a transcoder (Dunefsky, Chlenski & Nanda 2024) with free decoder norms (sparsify's recipe). From one
batch of (input x, output y) pairs:

1. the distinct input rows r (with their counts) are measured in per-coordinate standardised units, metric
   ‖u‖²_w = Σ_i w_i u_i² with w_i = 1/Var(x_i) (coordinates that never vary get w_i = 0);
2. when some rows' mean target t = y − b_dec is 0, the most frequent of them is the *origin* o: "no feature
   fires" rebuilds 0 there (b_dec); otherwise o is the mean input;
3. up to ``n`` centres μ_j are drawn among the other distinct rows by k-means++ weighted by the error of the
   nearest centre so far: probability ∝ count × squared distance to the nearest centre × squared distance
   between the row's mean target and that centre's (starting from the origin when there is one), so rows the
   centres would already rebuild are not drawn and drawing stops when none is left;
4. feature j scores s_j(x) = ‖x − o‖²_w − ‖x − μ_j‖²_w + C — affine in x, so W_enc[:, j] = 2 w ⊙ (μ_j − o),
   b_enc[j] = C − ‖μ_j‖²_w + ‖o‖²_w (both expanded) — and TopK with k = 1 picks the nearest centre (a power
   diagram); C = 0 with a zero-output origin (inputs nearer to o than to every centre fire nothing), else the
   smallest C that makes every winner positive plus the winners' standard deviation; feature j's bias is lowered
   by j · 10⁻⁴/n of the mean winning score, so an input equidistant from two centres goes to the earlier one
   whatever the TopK kernel's tie-breaking;
5. W_dec[j] is the least-squares fit of t on the winning activation over the rows feature j wins; finally
   all features are rescaled together (encoder × α, decoder ÷ α, the winners unchanged) to a mean decoder norm of 1.

When no two distinct non-zero-output rows share a target and n ≥ their number, every distinct input is its own
feature's winner and the batch is rebuilt exactly; features left undrawn stay at 0 (never active). On a
discretising MLP (the compiled ``histogram`` program, docs/circuits.md A4) this is what gradient training of a
k = 1 TopK transcoder does not find.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["CentreInit", "nearest_centre_init"]


class CentreInit(NamedTuple):
    """Transcoder weights from :func:`nearest_centre_init` (float32)."""

    W_enc: Tensor
    """[d_in, n]; unused features have a zero column."""
    b_enc: Tensor
    """[n]; unused features 0."""
    W_dec: Tensor
    """[n, d_out]; unused features (and features that win no row) have a zero row."""
    centres: Tensor
    """Row indices (into ``x``) of the centres, one per used feature, in feature order."""
    origin: int | None
    """Row index of the zero-output origin, None when no row's mean target is 0."""


@torch.no_grad()
def nearest_centre_init(x: Tensor, target: Tensor, n: int, *, generator: torch.Generator,
                        zero_tol: float = 1e-6) -> CentreInit:
    """Weights of an ``n``-feature TopK transcoder (k = 1 cells) from a batch of inputs ``x [B, d_in]`` and the
    targets ``target [B, d_out]`` its decoder must rebuild (y − b_dec); module docstring. ``zero_tol``: a
    distinct row's mean target counts as 0 below this share of the largest one."""
    if x.ndim != 2 or target.ndim != 2 or x.shape[0] != target.shape[0] or x.shape[0] == 0:
        raise ValueError(f"expected inputs [B, d_in] and targets [B, d_out] with the same B ≥ 1, got "
                         f"{tuple(x.shape)} and {tuple(target.shape)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    x, t = x.float(), target.float()
    rows, inverse, counts = torch.unique(x, dim=0, return_inverse=True, return_counts=True)
    mean_t = torch.zeros(rows.shape[0], t.shape[1]).index_add_(0, inverse, t) / counts[:, None]
    sd = x.std(0, correction=0)
    w = torch.where(sd > 1e-6 * sd.max().clamp(min=1e-30), sd.clamp(min=1e-30) ** -2, torch.zeros_like(sd))
    norm_t = mean_t.norm(dim=1)
    zero = norm_t <= zero_tol * norm_t.max().clamp(min=1e-30)
    origin = int(torch.where(zero, counts, 0).argmax()) if bool(zero.any()) else None
    chosen = _kmeans_pp(rows * w.sqrt(), counts.float() * ~zero, mean_t, n, generator, origin=origin)
    d_in, d_out = x.shape[1], t.shape[1]
    first_row = torch.full((rows.shape[0],), x.shape[0]).scatter_reduce_(0, inverse, torch.arange(x.shape[0]), "amin")
    W_enc, b_enc, W_dec = torch.zeros(d_in, n), torch.zeros(n), torch.zeros(n, d_out)
    used = len(chosen)
    if used:
        mu = rows[chosen]
        o = x.mean(0) if origin is None else rows[origin]
        W_enc[:, :used] = 2 * w[:, None] * (mu - o).t()
        b_enc[:used] = (o * o) @ w - (mu * mu) @ w
        best = (x @ W_enc[:, :used] + b_enc[:used]).max(1).values
        if origin is None:  # every winner positive, with a margin of the winners' spread
            b_enc[:used] += (-best.min()).clamp(min=0) + best.std(correction=0)
        # inputs equidistant from two centres (structural in compiled models) go to the earlier feature whatever
        # the TopK kernel's tie-breaking: steps of 1e-4 / n of the mean winner, far below the gaps between inputs
        b_enc[:used] -= torch.arange(used) * (1e-4 / used) * best.abs().mean()
        best, win = (x @ W_enc[:, :used] + b_enc[:used]).max(1)
        a = best.clamp(min=0)
        num = torch.zeros(used, d_out).index_add_(0, win, a[:, None] * t)
        den = torch.zeros(used).index_add_(0, win, a * a)
        W_dec[:used] = num / den.clamp(min=1e-30)[:, None]
        norms = W_dec.norm(dim=1)
        if bool((norms > 0).any()):
            alpha = norms[norms > 0].mean()
            W_enc.mul_(alpha)
            b_enc.mul_(alpha)
            W_dec.div_(alpha)
    return CentreInit(W_enc, b_enc, W_dec, first_row[torch.tensor(chosen, dtype=torch.long)],
                      None if origin is None else int(first_row[origin]))


def _kmeans_pp(z: Tensor, weight: Tensor, mean_t: Tensor, n: int, generator: torch.Generator, *,
               origin: int | None) -> list[int]:
    """k-means++ seeding weighted by the error of the nearest centre so far: up to ``n`` rows of ``z`` drawn with
    probability ∝ weight × squared distance to the nearest centre × squared distance of the row's mean target
    ``mean_t`` to that centre's (the origin row ``origin`` is a centre from the start; without one the first draw
    is ∝ weight). Stops early when every row's nearest centre already has its target."""
    if origin is None:
        d2, near_t = torch.ones(z.shape[0]), None
    else:
        d2, near_t = ((z - z[origin]) ** 2).sum(1), mean_t[origin].expand_as(mean_t)
    chosen: list[int] = []
    while len(chosen) < n:
        p = weight if near_t is None else weight * d2 * ((mean_t - near_t) ** 2).sum(1)
        if not bool(p.sum() > 0):
            break
        j = int(torch.multinomial(p / p.sum(), 1, generator=generator))
        chosen.append(j)
        dj = ((z - z[j]) ** 2).sum(1)
        closer = torch.ones_like(dj, dtype=torch.bool) if near_t is None else dj < d2
        d2 = torch.where(closer, dj, d2)
        near_t = torch.where(closer[:, None], mean_t[j], mean_t[j] if near_t is None else near_t)
    return chosen
