"""Random projection of gradients to k dimensions, generated block by block from a seed.

Johnson–Lindenstrauss (as used by TRAK, Park et al. 2023, "TRAK: Attributing Model Behavior at
Scale"): φ = Rᵀ g / √k with R ∈ ℝ^{P×k} of i.i.d. N(0, 1) or Rademacher ±1 entries, so
E[⟨Rᵀg, Rᵀh⟩]/k = ⟨g, h⟩.

Dense path: R is never materialised. Rows of R are cut into fixed blocks of ``block_rows``; block b
is regenerated on demand from a generator seeded by (seed, b), so the same seed gives the same R
whatever the batch size, and memory is ``block_rows × k``.

Factored path (linear layers): a linear layer's per-example weight gradient is a sum of outer
products Σ_t s_t ā_tᵀ (output gradient ⊗ input with a 1 appended for the bias). Taking the layer's
block of R with Khatri–Rao columns r_c = vec(u_c v_cᵀ) (u_c ∈ ℝ^out, v_c ∈ ℝ^{in+1} i.i.d.),

    φ_c = Σ_t (u_cᵀ s_t)(v_cᵀ ā_t) / √k,

which costs (out + in)·k per example instead of out·in·k and never forms the gradient. The
projection is still unbiased (E[r_c r_cᵀ] = I); each feature has a larger variance than a dense one
(a product of two Gaussians: up to 4× a dense feature's for a single rank-1 layer gradient; see the
oversampling option below). The same idea, with
Kronecker rather than Khatri–Rao factors, is LoGra (Choe et al. 2024, "What is Your Data Worth to
GPT?"). Layers are combined by summing their projections, i.e. R stacks the per-layer blocks. With
``oversample = o > 1`` the factored path oversamples (o·k Khatri–Rao features) and mixes them down to k with a dense
Gaussian M (R = R_KR M / √k): each final column is then a Gaussian sum of o·k rank-1 columns, close
to a dense projection in variance, at (out + in)·o·k + o·k² per example.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "ProjectionConfig",
    "dense_block",
    "project_dense",
    "dense_matrix",
    "layer_factors",
    "project_factored",
    "khatri_rao_matrix",
    "mixing_matrix",
]

_MIX = 1_000_003


@dataclass(frozen=True, kw_only=True)
class ProjectionConfig:
    """A seeded random projection of gradients."""

    dim: int | None = 1024
    """Projection dimension k (None: no projection, features are the raw gradients)."""
    kind: Literal["gaussian", "rademacher"] = "gaussian"
    """Entry distribution of R: N(0, 1) or ±1."""
    seed: int = 0
    """Seed of R; train and target features must use the same one."""
    block_rows: int = 4096
    """Rows of R generated at a time on the dense path (memory block_rows × k)."""
    oversample: int = 1
    """Factored path only: project to oversample·k Khatri–Rao features, then mix them down to k with a
    dense Gaussian matrix, so each final column is a Gaussian sum of many rank-1 columns (1: the plain
    Khatri–Rao projection; on the benchmark MLP their LDS differed by less than the seed-to-seed spread)."""

    def __post_init__(self) -> None:
        if self.dim is not None and (not isinstance(self.dim, int) or self.dim < 1):
            raise ValueError(
                f"projection dim must be a positive integer (or None for no projection), got {self.dim!r}"
            )
        if self.kind not in ("gaussian", "rademacher"):
            raise ValueError(f"projection kind must be 'gaussian' or 'rademacher', got {self.kind!r}")
        if self.block_rows < 1:
            raise ValueError(f"block_rows must be ≥ 1, got {self.block_rows}")
        if self.oversample < 1:
            raise ValueError(f"oversample must be ≥ 1, got {self.oversample}")


def _generator(seed: int, salt: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((int(seed) * _MIX + int(salt)) % (2**63 - 1))
    return g


def _draw(shape: tuple[int, ...], kind: str, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(shape, generator=gen, dtype=dtype)
    return torch.randint(0, 2, shape, generator=gen).to(dtype).mul_(2).sub_(1)


def dense_block(cfg: ProjectionConfig, index: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Block ``index`` of R: rows ``index·block_rows .. (index+1)·block_rows`` (unscaled) ``[block_rows, k]``."""
    if cfg.dim is None:
        raise ValueError("dense_block needs a projection dim; this config has dim=None")
    return _draw((cfg.block_rows, cfg.dim), cfg.kind, _generator(cfg.seed, 2 * index), dtype)


def project_dense(grads: torch.Tensor, cfg: ProjectionConfig, *, row_offset: int = 0) -> torch.Tensor:
    """Rᵀ g / √k for gradients ``[B, P]`` → ``[B, k]``; R is regenerated block by block.

    ``row_offset`` is the row of R that column 0 of ``grads`` corresponds to (it must be a multiple of
    ``block_rows``), so that disjoint parameter groups can be projected separately and summed.
    """
    if cfg.dim is None:
        return grads
    if row_offset % cfg.block_rows:
        raise ValueError(f"row_offset {row_offset} is not a multiple of block_rows {cfg.block_rows}")
    n, p = grads.shape
    out = torch.zeros(n, cfg.dim, dtype=grads.dtype, device=grads.device)
    first = row_offset // cfg.block_rows
    for j, start in enumerate(range(0, p, cfg.block_rows)):
        stop = min(start + cfg.block_rows, p)
        block = dense_block(cfg, first + j, grads.dtype)[: stop - start].to(grads.device)
        out.addmm_(grads[:, start:stop], block)
    return out / math.sqrt(cfg.dim)


def dense_matrix(cfg: ProjectionConfig, p: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The full scaled R / √k ``[P, k]`` — a reference for tests on small P only."""
    if cfg.dim is None:
        return torch.eye(p, dtype=dtype)
    n_blocks = -(-p // cfg.block_rows)
    full = torch.cat([dense_block(cfg, b, dtype) for b in range(n_blocks)])[:p]
    return full / math.sqrt(cfg.dim)


def layer_factors(
    cfg: ProjectionConfig, layer: str, d_out: int, d_in: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Khatri–Rao factors ``U [d_out, k·o]`` and ``V [d_in, k·o]`` (o = ``cfg.oversample``) of a layer's
    block of R (seeded by the layer's name; ``d_in`` counts the appended bias column)."""
    if cfg.dim is None:
        raise ValueError("the factored projection needs a projection dim; this config has dim=None")
    salt = 2 * (zlib.crc32(layer.encode()) + 1) + 1  # odd salts ≥ 3: never collide with dense blocks
    gen = _generator(cfg.seed, salt)
    width = cfg.dim * cfg.oversample
    u = _draw((d_out, width), cfg.kind, gen, dtype)
    v = _draw((d_in, width), cfg.kind, gen, dtype)
    return u, v


def mixing_matrix(cfg: ProjectionConfig, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """The scaled Gaussian ``[k·o, k]`` / √k that mixes oversampled factored features down to k (None if o = 1)."""
    if cfg.dim is None or cfg.oversample == 1:
        return None
    gen = _generator(cfg.seed, 1)
    return torch.randn((cfg.dim * cfg.oversample, cfg.dim), generator=gen, dtype=dtype) / math.sqrt(cfg.dim)


def project_factored(
    acts: torch.Tensor, out_grads: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """Σ_t (Uᵀ s_t) ⊙ (Vᵀ ā_t) / √k per example, without forming s ⊗ ā.

    ``acts [B, (T,) d_in]`` (bias column already appended) and ``out_grads [B, (T,) d_out]`` → ``[B, k]``.
    """
    su = out_grads @ u
    av = acts @ v
    prod = su * av
    if prod.dim() == 3:
        prod = prod.sum(1)
    return prod / math.sqrt(u.shape[1])


def khatri_rao_matrix(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The materialised block ``[d_out·d_in, k]`` of R / √k that :func:`project_factored` applies (rows in
    row-major order of a ``[d_out, d_in]`` gradient) — a reference for tests."""
    k = u.shape[1]
    return (u[:, None, :] * v[None, :, :]).reshape(-1, k) / math.sqrt(k)
