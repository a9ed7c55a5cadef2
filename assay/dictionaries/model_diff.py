"""Model diffing with a two-source crosscoder: which latents are shared, which exclusive to one model, and
whether an "exclusive" label survives the sparsity artifacts that fake it.

Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features and Model Diffing" (relative decoder
norms); Minder, Dumas, Juang, Chughtai & Nanda 2025, "Overcoming Sparsity Artifacts in Crosscoders to
Interpret Chat-Tuning" (NeurIPS 2025, arXiv 2504.02922; repo science-of-finetuning/sparsity-artifacts-
crosscoders, ``closed_form.py``) for Δ and Latent Scaling.

    r_i = ‖d_i^B‖ / (‖d_i^A‖ + ‖d_i^B‖)        (≈ 0 A-only, ≈ 0.5 shared, ≈ 1 B-only)
    Δ_i = ½ ((‖d_i^B‖ − ‖d_i^A‖) / max(‖d_i^A‖, ‖d_i^B‖) + 1)
    β = dᵀ Σ_n f(x_n) y_n / (‖d‖² Σ_n f(x_n)²)   (least squares of β·f·d against y; d = d_j^B)

Latent Scaling, per latent j and model M ∈ {A, B}: targets y = â^M ("r", reconstruction) and
y = a^M − â^M + f_j d_j^M ("ε", the error with the latent's own part added back); ν = β^A / β^B. The L1
term can zero A's decoder of a concept that is only *weaker* in A (complete shrinkage: high ν^ε) or split a
shared concept into a B-only latent plus others in A (latent decoupling: high ν^r). A latent is called
B-exclusive only when r is high **and** both ν are small, and its cosine between the two decoders is reported
for shared ones. Checks: ‖d^A‖ = 3, ‖d^B‖ = 1 → r = 0.25, Δ = 0.166667; d = (1, 0), f = (1, 2, 0),
y = (2, 1), (3, 0), (5, 5) → β = 1.6.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor

from assay.dictionaries.crosscoder import Crosscoder

__all__ = ["relative_norms", "delta_norms", "decoder_cosines", "scaling_beta", "LatentScaling", "latent_scaling",
           "DiffLatents", "diff_latents"]


def _two(cc: Crosscoder) -> Tensor:
    if cc.n_sources != 2:
        raise ValueError(f"model diffing compares two sources; this crosscoder has {cc.n_sources}")
    return cc.decoder_norms().detach()


def relative_norms(cc: Crosscoder) -> Tensor:
    """r_i = ‖d_i^B‖/(‖d_i^A‖ + ‖d_i^B‖) ``[n]`` (source 0 = A, source 1 = B)."""
    nrm = _two(cc)
    return nrm[:, 1] / (nrm.sum(-1) + 1e-12)


def delta_norms(cc: Crosscoder) -> Tensor:
    """Minder et al.'s Δ_i = ½((‖d^B‖ − ‖d^A‖)/max(‖d^A‖, ‖d^B‖) + 1) ``[n]``."""
    nrm = _two(cc)
    return 0.5 * ((nrm[:, 1] - nrm[:, 0]) / (nrm.max(-1).values + 1e-12) + 1)


def decoder_cosines(cc: Crosscoder) -> Tensor:
    """cos(d_i^A, d_i^B) ``[n]`` (0 where a decoder is zero)."""
    _two(cc)
    dec = cc.source_decoders().detach()
    return torch.nn.functional.cosine_similarity(dec[0], dec[1], dim=-1, eps=1e-12)


def scaling_beta(d: Tensor, f: Tensor, y: Tensor) -> Tensor:
    """Least-squares scale β of ``f [N]`` times direction ``d [D]`` against targets ``y [N, D]``.
    Check: d = (1, 0), f = (1, 2, 0), y rows (2, 1), (3, 0), (5, 5) → 1.6."""
    return (f.double() @ y.double() @ d.double()) / (d.double().pow(2).sum() * f.double().pow(2).sum())


class LatentScaling(NamedTuple):
    """Latent Scaling figures of the chosen latents (Minder et al. 2025)."""

    latents: Tensor
    """The latent indices ``[L]``."""
    beta_r: Tensor
    """β of the reconstruction target, ``[2, L]`` (model A, model B)."""
    beta_eps: Tensor
    """β of the error target with the latent's own part added back, ``[2, L]``."""
    nu_r: Tensor
    """β^{r,A} / β^{r,B} ``[L]`` (high: latent decoupling)."""
    nu_eps: Tensor
    """β^{ε,A} / β^{ε,B} ``[L]`` (high: complete shrinkage)."""


@torch.no_grad()
def latent_scaling(cc: Crosscoder, batches: Iterable[Tensor], latents: Tensor) -> LatentScaling:
    """Latent Scaling of ``latents`` over ``batches`` of concatenated sources ``[B, 2·d]`` (as the crosscoder
    was trained on), streamed as the three sums per latent, model and target: Σ f², and dᵀ Σ f y for both
    targets (d = the latent's B decoder)."""
    _two(cc)
    latents = torch.as_tensor(latents, dtype=torch.long)
    dec = cc.source_decoders()[:, latents]  # [2, L, d]
    direction = dec[1].double()  # d_j^B
    ff = torch.zeros(len(latents), dtype=torch.float64)
    fy = {t: torch.zeros(2, len(latents), dtype=torch.float64) for t in ("r", "eps")}
    d = cc.d_source
    for x in batches:
        z = cc.encode(x)
        x_hat = cc.decode(z)
        f = z[:, latents].double()  # [B, L]
        ff += f.pow(2).sum(0)
        for m in range(2):
            a, a_hat = x[:, m * d:(m + 1) * d].double(), x_hat[:, m * d:(m + 1) * d].double()
            proj_r = a_hat @ direction.t()  # [B, L]: dᵀ y for y = â^M
            # y = a − â + f_j d_j^M: dᵀ y = dᵀ(a − â) + f_j (d · d_j^M)
            proj_e = (a - a_hat) @ direction.t() + f * (direction * dec[m].double()).sum(-1)
            fy["r"][m] += (f * proj_r).sum(0)
            fy["eps"][m] += (f * proj_e).sum(0)
    norm2 = direction.pow(2).sum(-1)
    beta_r, beta_e = fy["r"] / (norm2 * ff), fy["eps"] / (norm2 * ff)
    return LatentScaling(latents, beta_r, beta_e, beta_r[0] / beta_r[1], beta_e[0] / beta_e[1])


class DiffLatents(NamedTuple):
    """The latents of a two-model crosscoder, sorted into shared and exclusive."""

    relative_norm: Tensor
    """r ``[n]``."""
    cosine: Tensor
    """cos(d^A, d^B) ``[n]``."""
    a_only: Tensor
    """Indices with r < ``low`` (A-exclusive by norms)."""
    b_only: Tensor
    """Indices with r > ``high`` whose Latent Scaling ν^r and ν^ε are both < ``max_nu`` (robustly B-exclusive)."""
    b_only_by_norm: Tensor
    """Indices with r > ``high`` (before the Latent Scaling check; includes the artifacts)."""
    shared: Tensor
    """Indices with ``shared_band[0]`` ≤ r ≤ ``shared_band[1]``."""
    scaling: LatentScaling
    """Latent Scaling of ``b_only_by_norm``."""


def diff_latents(cc: Crosscoder, batches: Iterable[Tensor], *, low: float = 0.1, high: float = 0.9,
                 shared_band: tuple[float, float] = (0.4, 0.6), max_nu: float = 0.2,
                 alive: Tensor | None = None) -> DiffLatents:
    """Sort the latents of ``cc`` (source 0 = A, source 1 = B) by relative decoder norm and confirm the
    B-exclusive ones with Latent Scaling over ``batches``. ``alive`` (bool ``[n]``) restricts to latents
    that fire (dead latents have arbitrary norms). Thresholds are the spec's (circuits.md §2.2; marked
    unverified there) and are parameters."""
    r = relative_norms(cc)
    keep = torch.ones_like(r, dtype=torch.bool) if alive is None else alive.bool()
    by_norm = ((r > high) & keep).nonzero().squeeze(1)
    scaling = latent_scaling(cc, batches, by_norm)
    robust = by_norm[(scaling.nu_r.abs() < max_nu) & (scaling.nu_eps.abs() < max_nu)]
    return DiffLatents(r, decoder_cosines(cc), ((r < low) & keep).nonzero().squeeze(1), robust, by_norm,
                       ((r >= shared_band[0]) & (r <= shared_band[1]) & keep).nonzero().squeeze(1), scaling)
