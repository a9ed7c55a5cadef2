"""Neighbourhoods Z of the local-approximation engine: where around x the surrogate is fitted.

Han, Srinivas & Lakkaraju (2022), "Which Explanation Should I Choose?" — each classic method is a
neighbourhood (this module) × a surrogate × a loss:

* Gaussian noise ξ ~ N(0, σ²I), x' = x + ξ (SmoothGrad, C-LIME; σ → 0 gives the gradient);
* the straight path x' = b + α(x − b), α on [0, 1] with a quadrature rule (Integrated Gradients);
* binary masks z ∈ {0,1}^d over d interpretable features, x' = b + z ⊙ (x − b) (LIME: Bernoulli(½);
  KernelSHAP: subset sizes drawn from the Shapley kernel, Lundberg & Lee 2017);
* sliding windows set to the baseline (occlusion, Zeiler & Fergus 2014).

Samples are drawn once per call from the ``generator`` and shared by every example of the batch, so
an example's attribution does not depend on which other examples share its batch.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

__all__ = [
    "Quadrature",
    "quadrature",
    "bernoulli_masks",
    "shapley_kernel_masks",
    "shapley_kernel_weight",
    "expand_features",
    "features_block",
    "shared_mask",
    "check_feature_mask",
    "n_features",
    "grid_feature_mask",
    "window_starts",
    "window_masks",
]

Quadrature = Literal["gauss_legendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
                     "captum_trapezoid"]


def quadrature(rule: Quadrature, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes α and weights q on [0, 1] for ∫₀¹ g(α) dα ≈ Σ q_s g(α_s) (float64).

    Conventions match Captum's ``approximation_methods``: Riemann left/right/middle use n equal
    cells; the trapezoid uses n equally spaced nodes α_s = s/(n − 1) including both ends. Every rule
    has Σq = 1 except ``captum_trapezoid``: the textbook ``riemann_trapezoid`` weights are
    1/(n − 1) with halved ends, Captum's ``riemann_trapezoid`` weights 1/n with halved ends on the same
    nodes (Σq = (n − 1)/n, so it integrates a constant to (n − 1)/n); ``captum_trapezoid`` reproduces it.
    """
    trapezoid = rule in ("riemann_trapezoid", "captum_trapezoid")
    if n < 1 or (trapezoid and n < 2):
        raise ValueError(f"{rule} needs at least {2 if trapezoid else 1} steps, got {n}")
    k = torch.arange(n, dtype=torch.float64)
    if rule == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    if rule == "riemann_left":
        return k / n, torch.full((n,), 1 / n, dtype=torch.float64)
    if rule == "riemann_right":
        return (k + 1) / n, torch.full((n,), 1 / n, dtype=torch.float64)
    if rule == "riemann_middle":
        return (k + 0.5) / n, torch.full((n,), 1 / n, dtype=torch.float64)
    if trapezoid:
        q = torch.full((n,), 1 / (n - 1 if rule == "riemann_trapezoid" else n), dtype=torch.float64)
        q[0] /= 2
        q[-1] /= 2
        return k / (n - 1), q
    raise ValueError(
        f"unknown quadrature {rule!r}; choose gauss_legendre, riemann_left, riemann_right, riemann_middle, "
        "riemann_trapezoid or captum_trapezoid"
    )


def bernoulli_masks(n: int, d: int, *, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """``[n, d]`` float masks with i.i.d. Bernoulli(p) entries (LIME's and LFA's neighbourhood)."""
    return (torch.rand(n, d, generator=generator, dtype=torch.float64) < p).to(torch.float64)


def shapley_kernel_weight(z: torch.Tensor, inf_weight: float = 1e6) -> torch.Tensor:
    """Shapley kernel π(z) = (d−1) / (C(d,s)·s·(d−s)), s = |z|; all-0/all-1 rows get ``inf_weight``."""
    d = z.shape[-1]
    s = z.sum(-1).round().long()
    out = torch.full(s.shape, inf_weight, dtype=torch.float64)
    mid = (s > 0) & (s < d)
    sm = s[mid].double()
    log_binom = math.lgamma(d + 1) - torch.lgamma(sm + 1) - torch.lgamma(d - sm + 1)
    out[mid] = (d - 1) / (torch.exp(log_binom) * sm * (d - sm))
    return out


def shapley_kernel_masks(n: int, d: int, *, generator: torch.Generator) -> torch.Tensor:
    """``[n, d]`` masks for KernelSHAP sampled in proportion to the Shapley kernel (Captum's scheme).

    Row 0 is all ones and row 1 all zeros; every other row draws a size s ∈ 1..d−1 with
    p(s) ∝ (d−1)/(s(d−s)), then a uniformly random subset of that size. With this sampling the
    regression weights are 1 (and ``inf_weight`` on the two end rows).
    """
    if d < 2:
        raise ValueError(f"KernelSHAP needs at least 2 features, got {d}")
    if n < 3:
        raise ValueError(f"KernelSHAP needs at least 3 samples, got {n}")
    sizes = torch.arange(1, d, dtype=torch.float64)
    p = (d - 1) / (sizes * (d - sizes))
    k = torch.multinomial(p / p.sum(), n - 2, replacement=True, generator=generator) + 1
    ranks = torch.rand(n - 2, d, generator=generator).argsort(dim=1).argsort(dim=1)
    z = (ranks < k[:, None]).to(torch.float64)
    ends = torch.stack([torch.ones(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)])
    return torch.cat([ends, z])


def n_features(feature_mask: torch.Tensor | None, x: torch.Tensor) -> int:
    """Number of interpretable features: mask ids must be 0..d−1 (each input element alone if None)."""
    if feature_mask is None:
        return x[0].numel()
    return int(feature_mask.max()) + 1


def check_feature_mask(feature_mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """Validate a feature mask and broadcast it to ``[B, *x]`` (long)."""
    if feature_mask is None:
        return None
    if feature_mask.dtype.is_floating_point or feature_mask.dtype == torch.bool:
        raise TypeError(f"feature_mask must hold integer feature ids, got dtype {feature_mask.dtype}")
    m = feature_mask.to(device=x.device, dtype=torch.long)
    if m.dim() == x.dim() - 1:
        m = m[None]
    try:
        m = m.expand_as(x)
    except RuntimeError:
        raise ValueError(
            f"feature_mask of shape {tuple(feature_mask.shape)} does not broadcast to input {tuple(x.shape)}"
        ) from None
    ids = torch.unique(m)
    if int(ids.min()) != 0 or len(ids) != int(ids.max()) + 1:
        raise ValueError("feature_mask ids must be exactly 0..d-1 (every id used at least once)")
    return m


def expand_features(z: torch.Tensor, feature_mask: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """Map feature-space rows ``z [n, d]`` to input space ``[n, *shape]`` (mask rows ``[n, *shape]``)."""
    if feature_mask is None:
        return z.reshape(z.shape[0], *shape)
    flat = feature_mask.reshape(feature_mask.shape[0], -1)
    return torch.gather(z, 1, flat).reshape(z.shape[0], *shape)


def shared_mask(feature_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The ``[*x]`` mask when every example of a ``[B, *x]`` feature mask is the same, else None."""
    if feature_mask is None:
        return None
    if feature_mask.shape[0] == 1 or feature_mask.stride(0) == 0:
        return feature_mask[0]
    first = feature_mask[:1]
    return feature_mask[0] if bool((feature_mask == first).all()) else None


def features_block(
    z: torch.Tensor, feature_mask: torch.Tensor | None, shared: torch.Tensor | None, exs: slice,
    shape: tuple[int, ...],
) -> torch.Tensor:
    """Feature-space rows ``z [ns, d]`` in input space for the examples ``exs``: ``[1, ns, *shape]`` when
    the mask is absent or shared by all examples, else ``[nb, ns, *shape]``."""
    ns = z.shape[0]
    if feature_mask is None:
        return z.reshape(1, ns, *shape)
    if shared is not None:
        return z[:, shared.reshape(-1)].reshape(1, ns, *shape)
    fm = feature_mask[exs].reshape(exs.stop - exs.start, 1, -1)
    return torch.gather(z[None].expand(fm.shape[0], -1, -1), 2, fm.expand(-1, ns, -1)).reshape(-1, ns, *shape)


def grid_feature_mask(shape: tuple[int, ...], patch: tuple[int, ...]) -> torch.Tensor:
    """Feature ids grouping an input of ``shape`` into patches of size ``patch`` (per dimension).

    For images ``shape = (C, H, W)`` and ``patch = (C, 4, 4)`` gives one feature per 4×4 patch
    over all channels.
    """
    if len(shape) != len(patch):
        raise ValueError(f"patch {patch} needs one size per input dimension {shape}")
    counts = [math.ceil(s / p) for s, p in zip(shape, patch)]
    idx = torch.zeros(shape, dtype=torch.long)
    stride = 1
    for dim in reversed(range(len(shape))):
        coord = torch.arange(shape[dim]) // patch[dim]
        view = [1] * len(shape)
        view[dim] = shape[dim]
        idx = idx + coord.view(view) * stride
        stride *= counts[dim]
    return idx


def window_starts(shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...]) -> list[torch.Tensor]:
    """Start offsets of sliding windows per dimension: 1 + ⌈(size − window)/stride⌉ positions, the last
    window clipped at the border so every element is covered (Captum's convention)."""
    if not (len(shape) == len(window) == len(strides)):
        raise ValueError(f"window {window} and strides {strides} need one entry per input dimension {shape}")
    starts = []
    for size, w, st in zip(shape, window, strides):
        if not (1 <= w <= size) or st < 1:
            raise ValueError(f"window {window} / strides {strides} do not fit input dimensions {shape}")
        starts.append(torch.arange(0, math.ceil((size - w) / st) + 1) * st)
    return starts


def window_masks(
    ids: torch.Tensor, starts: list[torch.Tensor], shape: tuple[int, ...], window: tuple[int, ...]
) -> torch.Tensor:
    """Boolean masks ``[n, *shape]`` of the windows with flat ids ``ids`` (row-major over positions)."""
    counts = [len(s) for s in starts]
    rem = ids.clone()
    mask = None
    for dim in reversed(range(len(shape))):
        pos = starts[dim].to(ids.device)[rem % counts[dim]]
        rem = rem // counts[dim]
        ar = torch.arange(shape[dim], device=ids.device)
        inside = (ar[None] >= pos[:, None]) & (ar[None] < pos[:, None] + window[dim])  # [n, size]
        view = [ids.shape[0]] + [1] * len(shape)
        view[dim + 1] = shape[dim]
        inside = inside.view(view)
        mask = inside if mask is None else mask & inside
    return mask
