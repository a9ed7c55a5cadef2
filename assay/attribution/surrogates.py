"""Surrogates and losses of the local-approximation engine: weighted least squares and its kernels.

Han, Srinivas & Lakkaraju (2022), "Which Explanation Should I Choose?": perturbation methods fit a
linear surrogate g(z) = w·z + c to f_t(x'(z)) by weighted squared loss

    w*, c* = argmin Σ_s π_s (f_t(x'_s) − w·z_s − c)²,

solved here in closed form (``torch.linalg.lstsq`` on √π-scaled rows, float64) instead of LFA's Adam
grid search. When the weights are shared by every example (KernelSHAP, C-LIME) one factorisation
serves the whole batch; example-dependent weights (LIME's distance kernel) are solved per example.
Kernels: LIME's exponential kernel on the distance between x and x' (Ribeiro, Singh & Guestrin 2016;
euclidean as in the LFA code, cosine as in Captum) and the Shapley kernel (Lundberg & Lee 2017) in
:mod:`assay.attribution.neighbourhoods`.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["weighted_lstsq", "exponential_kernel", "distances", "Distance"]

Distance = Literal["euclidean", "cosine"]


def weighted_lstsq(
    z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None, *, bias: bool, example_chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit y ≈ z·w + c for every example and target.

    ``z`` ``[S, d]`` (shared design), ``y`` ``[B, K, S]``, ``weights`` None, ``[S]`` (shared) or
    ``[B, S]`` (per example). Returns ``(w [B, K, d], c [B, K])`` in float64 (c = 0 without bias).
    """
    z = z.to(torch.float64)
    y = y.to(torch.float64)
    B, K, S = y.shape
    d = z.shape[1]
    a = torch.cat([z, torch.ones(S, 1, dtype=z.dtype, device=z.device)], 1) if bias else z
    if weights is None or weights.dim() == 1:
        sw = torch.ones(S, dtype=z.dtype, device=z.device) if weights is None else weights.to(z).sqrt()
        rhs = (y * sw).reshape(B * K, S).T  # [S, B·K]
        sol = torch.linalg.lstsq(a * sw[:, None], rhs).solution  # [p, B·K]
        sol = sol.T.reshape(B, K, -1)
    else:
        sol = torch.empty(B, K, a.shape[1], dtype=z.dtype, device=z.device)
        sw = weights.to(z).sqrt()
        for i in range(0, B, example_chunk):
            w = sw[i : i + example_chunk]  # [b, S]
            lhs = a[None] * w[:, :, None]  # [b, S, p]
            rhs = (y[i : i + example_chunk] * w[:, None]).transpose(1, 2)  # [b, S, K]
            sol[i : i + example_chunk] = torch.linalg.lstsq(lhs, rhs).solution.transpose(1, 2)
    coef = sol[..., :d]
    icpt = sol[..., d] if bias else torch.zeros(B, K, dtype=z.dtype, device=z.device)
    return coef, icpt


def distances(x: torch.Tensor, xp: torch.Tensor, kind: Distance) -> torch.Tensor:
    """Distance between each ``x`` ``[n, *]`` and its perturbations ``xp`` ``[n, s, *]``, as ``[n, s]``:
    euclidean or cosine (1 − cos)."""
    a, b = x.flatten(1).double()[:, None], xp.flatten(2).double()
    if kind == "euclidean":
        return (a - b).norm(dim=-1)
    if kind == "cosine":
        return 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)
    raise ValueError(f"distance must be 'euclidean' or 'cosine', got {kind!r}")


def exponential_kernel(dist: torch.Tensor, width: float) -> torch.Tensor:
    """π = exp(−dist²/width²), rescaled per example so its maximum is 1 (computed in log space, so
    far-away neighbourhoods do not underflow to all-zero weights; least squares ignores the scale)."""
    logw = -(dist.double() ** 2) / width**2
    return torch.exp(logw - logw.max(dim=-1, keepdim=True).values)
