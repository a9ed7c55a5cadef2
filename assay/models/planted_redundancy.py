"""A ReLU MLP with planted redundancy: hidden neurons that are exact, scaled or noisy copies of others.

The ground truth for data-free neuron merging (Srinivas & Babu 2015, "Data-free Parameter Pruning
for Deep Neural Networks", BMVC 2015) and for trainable gates (Louizos, Welling & Kingma 2018,
"Learning Sparse Neural Networks through L0 Regularization", ICLR 2018): a network
``d_in → hidden → n_out`` (an :class:`assay.models.mlp.MLP` with one ReLU hidden layer) whose hidden
units are

- ``n_base`` *base* neurons: incoming vectors w = (weights, bias) ∈ R^(d_in+1) that are orthonormal
  (so no two base neurons are alike: ‖w_i − w_k‖ = √2);
- ``n_exact`` *exact* copies: w_copy = w_source, so h_copy = h_source for every input;
- ``n_scaled`` *scaled* copies: w_copy = a·w_source with a > 0, so ReLU(a·wᵀx̃) = a·ReLU(wᵀx̃), i.e.
  h_copy = a·h_source exactly (positive homogeneity of ReLU);
- *noisy* copies, one per entry of ``noise_levels``: w_copy = w_source + δ with δ ⟂ w_source and
  ‖δ‖ = level·‖w_source‖, so the copy's relative distance to its source is exactly the level.

Every copy has its own source (no base neuron is copied twice), the hidden units are shuffled, and
every hidden unit's outgoing weight column has the same root-mean-square value ``out_rms``, so the
Srinivas-Babu saliency of a planted pair, ⟨a_j²⟩·‖w_i − w_j‖², is fixed by its weight distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from assay.models.mlp import MLP
from assay.worlds.base import make_generator

__all__ = ["PlantedRedundancyConfig", "RedundancyTruth", "PlantedRedundancy", "planted_redundancy_mlp"]

KINDS = ("base", "exact", "scaled", "noisy")


@dataclass(frozen=True, kw_only=True)
class PlantedRedundancyConfig:
    """Sizes and copy counts of the planted-redundancy MLP."""

    d_in: int = 12
    """Input dimension; the base neurons' (weights, bias) vectors live in R^(d_in+1)."""
    n_base: int = 10
    """Distinct base neurons (at most d_in + 1, so their incoming vectors can be orthonormal)."""
    n_exact: int = 3
    """Exact copies (same incoming weights and bias as their source)."""
    n_scaled: int = 3
    """Scaled copies: a positive multiple of their source's incoming weights and bias."""
    scale_range: tuple[float, float] = (0.5, 2.0)
    """Scales of the scaled copies are drawn log-uniformly from this range (both ends positive)."""
    noise_levels: tuple[float, ...] = (0.05, 0.1, 0.2)
    """One noisy copy per level: its distance to its source is level × the source's norm."""
    n_out: int = 3
    """Output dimension."""
    out_rms: float = 1.0
    """Root-mean-square of every hidden unit's outgoing weight column."""

    def __post_init__(self) -> None:
        if self.d_in <= 0 or self.n_out <= 0 or self.n_base <= 0:
            raise ValueError(f"d_in, n_out and n_base must be positive, got {self.d_in}, {self.n_out}, {self.n_base}")
        if self.n_base > self.d_in + 1:
            raise ValueError(f"n_base={self.n_base} orthonormal base neurons need n_base <= d_in + 1 = {self.d_in + 1}")
        if self.n_exact < 0 or self.n_scaled < 0:
            raise ValueError(f"n_exact and n_scaled must be >= 0, got {self.n_exact}, {self.n_scaled}")
        n_copies = self.n_exact + self.n_scaled + len(self.noise_levels)
        if n_copies > self.n_base:
            raise ValueError(f"{n_copies} copies need as many distinct sources, but n_base={self.n_base}; raise n_base")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        if any(not 0 < level < 1 for level in self.noise_levels):
            raise ValueError(f"noise_levels must lie in (0, 1), got {self.noise_levels}")
        if self.out_rms <= 0:
            raise ValueError(f"out_rms must be positive, got {self.out_rms}")

    @property
    def hidden(self) -> int:
        """Width of the hidden layer: base neurons plus all copies."""
        return self.n_base + self.n_exact + self.n_scaled + len(self.noise_levels)


class RedundancyTruth(NamedTuple):
    """Which hidden unit copies which. Indices are positions in the (shuffled) hidden layer."""

    kind: tuple[str, ...]
    """Per hidden unit: ``"base"``, ``"exact"``, ``"scaled"`` or ``"noisy"``."""
    source: torch.Tensor
    """Per hidden unit (long): the unit it copies, or −1 for a base neuron."""
    scale: torch.Tensor
    """Per hidden unit: a with w_copy ≈ a·w_source (1 for base, exact and noisy units)."""
    noise: torch.Tensor
    """Per hidden unit: ‖w_copy − a·w_source‖ / ‖a·w_source‖ (0 except for noisy copies)."""

    def pairs(self, *kinds: str) -> list[tuple[int, int]]:
        """``(source, copy)`` for every copy of one of ``kinds`` (all copies if none given), by copy index."""
        wanted = kinds or KINDS[1:]
        unknown = set(wanted) - set(KINDS[1:])
        if unknown:
            raise ValueError(f"unknown copy kinds {sorted(unknown)}; choose from {KINDS[1:]}")
        return [(int(self.source[j]), j) for j, k in enumerate(self.kind) if k in wanted]


class PlantedRedundancy(NamedTuple):
    """The model and its truth."""

    model: MLP
    """``MLP(d_in, (hidden,), n_out)`` with ReLU; sites ``fc0``, ``act0``, ``out``."""
    truth: RedundancyTruth
    """Which hidden unit copies which, and how."""


@torch.no_grad()
def planted_redundancy_mlp(config: PlantedRedundancyConfig | None = None, *, seed: int = 0) -> PlantedRedundancy:
    """Build the planted-redundancy MLP (see the module docstring) from ``seed``."""
    cfg = config or PlantedRedundancyConfig()
    g = make_generator(seed)
    dim = cfg.d_in + 1
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    base = q.T[: cfg.n_base]  # orthonormal rows

    kinds = ["base"] * cfg.n_base + ["exact"] * cfg.n_exact + ["scaled"] * cfg.n_scaled
    kinds += ["noisy"] * len(cfg.noise_levels)
    sources = torch.randperm(cfg.n_base, generator=g)[: len(kinds) - cfg.n_base]
    lo, hi = cfg.scale_range
    log_scales = torch.empty(cfg.n_scaled).uniform_(math.log(lo), math.log(hi), generator=g)
    rows, scale, noise = [*base], [1.0] * cfg.n_base, [0.0] * cfg.n_base
    for c, (kind, src) in enumerate(zip(kinds[cfg.n_base:], sources.tolist())):
        w = base[src]
        if kind == "exact":
            rows.append(w.clone())
            scale.append(1.0)
            noise.append(0.0)
        elif kind == "scaled":
            a = float(log_scales[c - cfg.n_exact].exp())
            rows.append(a * w)
            scale.append(a)
            noise.append(0.0)
        else:
            level = cfg.noise_levels[c - cfg.n_exact - cfg.n_scaled]
            d = torch.randn(dim, generator=g)
            d = d - (d @ w) / (w @ w) * w
            rows.append(w + level * w.norm() * d / d.norm())
            scale.append(1.0)
            noise.append(level)
    source = torch.cat([torch.full((cfg.n_base,), -1, dtype=torch.long), sources])

    perm = torch.randperm(cfg.hidden, generator=g)  # position p holds original unit perm[p]
    where = torch.empty_like(perm)
    where[perm] = torch.arange(cfg.hidden)  # original unit u sits at position where[u]
    incoming = torch.stack(rows)[perm]
    source = torch.where(source[perm] >= 0, where[source[perm].clamp(min=0)], -1)
    outgoing = torch.randn(cfg.n_out, cfg.hidden, generator=g)
    outgoing *= cfg.out_rms / outgoing.pow(2).mean(0, keepdim=True).sqrt()

    model = MLP(cfg.d_in, (cfg.hidden,), cfg.n_out, generator=g)
    model.fc0.weight.copy_(incoming[:, :-1])
    model.fc0.bias.copy_(incoming[:, -1])
    model.out.weight.copy_(outgoing)
    truth = RedundancyTruth(
        kind=tuple(kinds[i] for i in perm.tolist()), source=source,
        scale=torch.tensor(scale)[perm], noise=torch.tensor(noise)[perm],
    )
    return PlantedRedundancy(model.eval(), truth)
