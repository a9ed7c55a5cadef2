"""Batched multivariate normal CDF: Genz's separation-of-variables integral, randomised lattice QMC.

Genz 1992, "Numerical Computation of Multivariate Normal Probabilities" (J. Comput. Graph. Stat.);
Genz & Bretz 2009, "Computation of Multivariate Normal and t Probabilities" (the algorithm behind
SciPy's ``multivariate_normal.cdf``).

With Σ = LLᵀ (Cholesky), P(Z ≤ b) for Z ∼ N(0, Σ) in ℝ^m is the integral over w ∈ [0, 1]^{m−1} of

    e_1 · e_2(w) ⋯ e_m(w),   e_i = Φ((b_i − Σ_{j<i} L_ij y_j) / L_ii),   y_j = Φ⁻¹(w_j e_j),

which is smooth, so a randomly shifted rank-1 lattice (Richtmyer, generators √prime) with the
baker's (tent) transform converges fast. Unlike SciPy (one Fortran call per Σ), all B problems of a
batch share the lattice and run as [B, N] tensor operations — one loop over the m dimensions, not
over the batch. Variables are ordered by increasing b_i/√Σ_ii (most restrictive first), which lowers
the variance. The error estimate is 3 standard errors over the independent random shifts.

Small dimensions are done without sampling: m = 1 is Φ(b/√Σ); m = 2 uses the one-dimensional
integral (Sheppard 1899; Drezner & Wesolowsky 1990)

    Φ₂(h, k; r) = Φ(h)Φ(k) + (1/2π) ∫_0^{asin r} exp(−(h² + k² − 2hk sin θ)/(2cos²θ)) dθ

by 128-node Gauss–Legendre quadrature, batched.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["MVNCDF", "mvn_cdf", "bvn_cdf", "cholesky_jittered"]

_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97,
           101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167, 173, 179, 181, 191, 193)


class MVNCDF(NamedTuple):
    """Batched P(Z ≤ b)."""

    p: torch.Tensor
    """Probabilities ``[B]`` (float64)."""
    error: torch.Tensor
    """Estimated absolute error ``[B]``: 3 standard errors over the random shifts (0 where exact)."""


def cholesky_jittered(sigma: torch.Tensor, jitter: float = 0.0, max_jitter: float = 1e-1) -> torch.Tensor:
    """Lower Cholesky factors of ``sigma [B, m, m]``; where a matrix is not positive definite, add
    jitter·I, growing ×10 from 1e-8 up to ``max_jitter`` (ill-conditioned margin covariances need it)."""
    eye = torch.eye(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device)
    L, info = torch.linalg.cholesky_ex(sigma + jitter * eye)
    j = max(jitter * 10, 1e-8)
    while bool((info > 0).any()):
        if j > max_jitter:
            raise ValueError(f"covariance is not positive definite even with jitter {max_jitter}")
        bad = info > 0
        L_bad, info_bad = torch.linalg.cholesky_ex(sigma[bad] + j * eye)
        L[bad] = L_bad
        info = info.clone()
        info[bad] = info_bad
        j *= 10
    return L


def bvn_cdf(h: torch.Tensor, k: torch.Tensor, r: torch.Tensor, n_nodes: int = 128) -> torch.Tensor:
    """Standard bivariate normal P(X ≤ h, Y ≤ k) with correlation ``r``, elementwise (float64)."""
    h, k, r = (t.to(torch.float64) for t in torch.broadcast_tensors(h, k, r))
    h, k = h.clamp(-40, 40), k.clamp(-40, 40)
    nodes, weights = _legendre(n_nodes, h.device)
    top = torch.asin(r.clamp(-1 + 1e-12, 1 - 1e-12))
    theta = (top[..., None] / 2) * (nodes + 1)  # [..., n]
    sn, cs2 = torch.sin(theta), torch.cos(theta) ** 2
    h_, k_ = h[..., None], k[..., None]
    integrand = torch.exp(-(h_**2 + k_**2 - 2 * h_ * k_ * sn) / (2 * cs2))
    integral = (top / 2) * (integrand * weights).sum(-1)
    return (torch.special.ndtr(h) * torch.special.ndtr(k) + integral / (2 * torch.pi)).clamp(0, 1)


def _legendre(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy(x).to(device), torch.from_numpy(w).to(device)


def _lattice(k0: int, k1: int, dim: int, device: torch.device) -> torch.Tensor:
    """Richtmyer rank-1 lattice points frac(k·√p_j) for k = k0+1..k1: ``[k1 - k0, dim]``."""
    if dim > len(_PRIMES):
        raise ValueError(f"mvn_cdf supports up to {len(_PRIMES) + 1} dimensions, got {dim + 1}")
    gens = torch.tensor(_PRIMES[:dim], dtype=torch.float64, device=device).sqrt()
    k = torch.arange(k0 + 1, k1 + 1, dtype=torch.float64, device=device)[:, None]
    return torch.frac(k * gens)


def _genz_sums(b: torch.Tensor, L: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Sum over points of the Genz integrand: b ``[B, m]``, L ``[B, m, m]``, w ``[K, N, m-1]`` → ``[B, K]``.

    The integrand runs in the dtype of ``w`` (float32 halves the cost of the special functions and
    is accurate to ~1e-7 per point); the sums are float64."""
    B, m = b.shape
    K, N, _ = w.shape
    dt = w.dtype
    w = w.reshape(K * N, m - 1)
    b, L = b.to(dt), L.to(dt)
    diag = torch.diagonal(L, dim1=-2, dim2=-1)
    e = torch.special.ndtr(b[:, :1] / diag[:, :1]).expand(B, K * N)
    f = e
    y = torch.zeros(B, K * N, m - 1, dtype=dt, device=w.device)
    tiny = torch.finfo(dt).tiny
    for i in range(1, m):
        u = (w[None, :, i - 1] * e).clamp(tiny, 1 - torch.finfo(dt).eps)
        y[:, :, i - 1] = torch.special.ndtri(u)
        shift = torch.bmm(y[:, :, :i], L[:, i, :i, None]).squeeze(2)
        e = torch.special.ndtr((b[:, i, None] - shift) / diag[:, i, None])
        f = f * e
    return f.reshape(B, K, N).to(torch.float64).sum(2)


def mvn_cdf(
    b: torch.Tensor,
    sigma: torch.Tensor,
    *,
    abseps: float = 1e-4,
    n_points: int = 128,
    max_points: int = 16384,
    n_shifts: int = 8,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> MVNCDF:
    """P(Z ≤ b) for Z ∼ N(0, Σ), batched over the leading dimension.

    ``b``: upper limits ``[B, m]`` (±inf allowed); ``sigma``: covariances ``[B, m, m]``.
    Adaptive: starts with ``n_points`` lattice points per random shift (``n_shifts`` shifts) and
    doubles the lattice, for the problems not yet converged, until the error estimate is at most
    ``abseps`` or ``max_points`` points per shift are used. The integrand is evaluated in ``dtype``
    (float32 by default; pass float64 for errors below ~1e-6), set-up and sums in float64; the shifts
    come from ``generator``.
    """
    if b.ndim != 2 or sigma.shape != (*b.shape, b.shape[1]):
        raise ValueError(f"need b [B, m] and sigma [B, m, m], got {tuple(b.shape)} and {tuple(sigma.shape)}")
    if n_points < 1 or n_shifts < 2 or max_points < n_points or abseps <= 0:
        raise ValueError(f"need n_points >= 1, max_points >= n_points, n_shifts >= 2 and abseps > 0; got "
                         f"{n_points}, {max_points}, {n_shifts}, {abseps}")
    device = b.device
    b = b.to(torch.float64)
    sigma = sigma.to(torch.float64)
    B, m = b.shape
    if B == 0:
        empty = b.new_zeros(0)
        return MVNCDF(empty, empty)
    sd = torch.diagonal(sigma, dim1=-2, dim2=-1).sqrt()
    zero = torch.zeros(B, dtype=torch.float64, device=device)
    if m == 1:
        return MVNCDF(torch.special.ndtr(b[:, 0] / sd[:, 0]), zero)
    if m == 2:
        r = sigma[:, 0, 1] / (sd[:, 0] * sd[:, 1])
        return MVNCDF(bvn_cdf(b[:, 0] / sd[:, 0], b[:, 1] / sd[:, 1], r), zero)
    # order variables: most restrictive (smallest standardised limit) first
    order = torch.argsort(b / sd, dim=1)
    b = torch.gather(b, 1, order).clamp(-1e10, 1e10)  # ±inf → large finite, keeps arithmetic NaN-free
    sigma = torch.gather(torch.gather(sigma, 1, order[:, :, None].expand(B, m, m)), 2,
                         order[:, None, :].expand(B, m, m))
    L = cholesky_jittered(sigma)
    shifts = torch.rand(n_shifts, m - 1, dtype=torch.float64, device=device, generator=generator)
    sums = torch.zeros(B, n_shifts, dtype=torch.float64, device=device)
    counts = torch.zeros(B, 1, dtype=torch.float64, device=device)
    active = torch.arange(B, device=device)
    done, n = 0, n_points
    while True:
        w = torch.frac(_lattice(done, n, m - 1, device)[None] + shifts[:, None])
        w = (1 - (2 * w - 1).abs()).to(dtype)  # baker's transform
        sums[active] += _genz_sums(b[active], L[active], w)
        counts[active] = float(n)
        done = n
        means = sums / counts
        err = 3 * means.std(1) / n_shifts**0.5
        active = torch.nonzero(err > abseps).flatten()
        if active.numel() == 0 or 2 * n > max_points:
            break
        n *= 2
    return MVNCDF(means.mean(1).clamp(0, 1), err)
