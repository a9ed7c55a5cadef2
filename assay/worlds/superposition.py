"""Toy superposition: n sparse features planted as unit directions in d < n dimensions.

Elhage, Hume, Olsson, Schiefer, Henighan et al. 2022, "Toy Models of Superposition"
(transformer-circuits.pub); firing profiles after SAELens' SynthSAEBench generator
[code: decoderesearch/SAELens].

    x = Σ_i a_i G_i  (+ N(0, σ²I)),   a_i = m_i · 1[feature i fires],   G ∈ ℝ^{n×d}, ‖G_i‖ = 1

Feature i fires independently with probability p_i. The Zipf profile is
p_i = p_min + (p_max − p_min)(r_i − r_min)/(r_max − r_min), r_i = 1/i^e (i = 1..n); constant and
linear profiles are also offered, or p given per feature (``probabilities``). Magnitudes m_i are
U[lo, hi] (default U[0, 1], Elhage) or N(1.5, 0.25²) clipped at 0.

``correlated_pairs`` ((i, j, ρ), …) makes features i and j fire with Pearson correlation ρ while each
keeps its own p: the exact two-Bernoulli joint P(i ∧ j) = p_i p_j + ρ√(p_i(1−p_i)p_j(1−p_j)) (which must
lie in [max(0, p_i + p_j − 1), min(p_i, p_j)]); j is drawn given i, firing with P(i ∧ j)/p_i when i
fires and (p_j − P(i ∧ j))/(1 − p_i) when it does not. With ``hierarchy`` the features are grouped into parents with children: a child can fire only if
its parent fires, and siblings are mutually exclusive. Two samplers (``hierarchy_sampling``):

- ``"one_parent"`` (default) — the MP-SAE / Matryoshka toy (Costa, Fel, Lubana, Tolooshams & Ba 2025,
  "From Flat to Hierarchical"; Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning Multi-Level
  Features with Matryoshka Sparse Autoencoders"): every sample has exactly one root feature, drawn with
  probability ∝ p_root, plus — when that root has children — one child, drawn uniformly, with
  probability ``child_probability``. Absorption figures are comparable with those papers' only here.
- ``"independent"`` — every feature fires independently with p_i, then a child that fired without its
  parent is dropped and at most one firing child per parent is kept (uniformly).

Ground truth: ``world.directions`` (G), per example ``acts`` (the true coefficients a) and
``active`` (a ≠ 0 pattern). Check value: n = 4, e = 1, p_max 0.3, p_min 0.01 → p = (0.3, 0.106667,
0.042222, 0.01), expected L0 0.458889.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from assay.config import ConfigError
from assay.worlds.base import Batch, make_generator

__all__ = ["SuperpositionConfig", "SuperpositionWorld", "firing_probabilities", "pair_joint"]


@dataclass(frozen=True, kw_only=True)
class SuperpositionConfig:
    """A planted sparse-feature world."""

    n_features: int = 512
    """Number of planted features n."""
    d_model: int = 64
    """Embedding dimension d (d < n for superposition)."""
    profile: Literal["zipf", "constant", "linear"] = "zipf"
    """How firing probability falls with the feature index."""
    p_max: float = 0.3
    """Firing probability of the most frequent feature."""
    p_min: float = 0.01
    """Firing probability of the rarest feature (ignored by the constant profile)."""
    zipf_exponent: float = 1.0
    """Exponent e of the Zipf profile r_i = 1/i^e."""
    probabilities: tuple[float, ...] | None = None
    """Firing probability of each feature (n_features values); overrides ``profile``, ``p_max``, ``p_min``."""
    magnitude: Literal["uniform", "normal"] = "uniform"
    """Magnitude when active: U[lo, hi] (``magnitude_range``), or N(1.5, 0.25²) clipped at 0."""
    magnitude_range: tuple[float, float] = (0.0, 1.0)
    """(lo, hi) of uniform magnitudes, 0 ≤ lo ≤ hi, hi > 0."""
    correlated_pairs: tuple[tuple[int, int, float], ...] = ()
    """Pairs (i, j, ρ) of features firing with correlation ρ, each keeping its p (module docstring);
    a feature belongs to at most one pair; not with ``hierarchy``."""
    noise_std: float = 0.0
    """Standard deviation of isotropic Gaussian noise added to x."""
    target_cosine: float | None = None
    """If set, optimise the directions towards this pairwise cosine (200 Adam steps)."""
    hierarchy: tuple[int, ...] | None = None
    """Children per parent, e.g. (3, 3, 0, 0): features are laid out parent, its children, next parent…"""
    hierarchy_sampling: Literal["one_parent", "independent"] = "one_parent"
    """With a hierarchy: one root (+ at most one of its children) per sample, as in the MP-SAE/Matryoshka toy,
    or independent firing thinned by the tree (module docstring)."""
    child_probability: float = 0.5
    """``one_parent`` sampling: probability that the chosen root's sample also has one of its children."""
    seed: int = 0
    """Seed of the static structure (directions)."""

    def __post_init__(self) -> None:
        if self.n_features <= 0 or self.d_model <= 0:
            raise ConfigError(f"n_features and d_model must be positive, got {self.n_features}, {self.d_model}")
        if not 0.0 <= self.p_min <= self.p_max <= 1.0:
            raise ConfigError(f"need 0 <= p_min <= p_max <= 1, got p_min={self.p_min}, p_max={self.p_max}")
        if self.p_max == 0.0:
            raise ConfigError("p_max = 0 means no feature ever fires; use a positive p_max")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {self.noise_std}")
        if self.profile == "constant" and self.p_max >= 1.0 and self.d_model < self.n_features:
            raise ConfigError(
                f"every feature always fires (sparsity 0) with n_features={self.n_features} > d_model="
                f"{self.d_model}: the features cannot be recovered; lower p_max or raise d_model"
            )
        lo, hi = self.magnitude_range
        if not 0.0 <= lo <= hi or hi <= 0.0:
            raise ConfigError(f"magnitude_range must be (lo, hi) with 0 <= lo <= hi and hi > 0, got {self.magnitude_range}")
        if self.probabilities is not None:
            if len(self.probabilities) != self.n_features:
                raise ConfigError(f"probabilities has {len(self.probabilities)} values but n_features={self.n_features}")
            if not all(0.0 <= p <= 1.0 for p in self.probabilities) or not any(p > 0 for p in self.probabilities):
                raise ConfigError(f"probabilities must lie in [0, 1] with at least one > 0, got {self.probabilities}")
        if self.correlated_pairs:
            self._check_pairs()
        if not 0.0 <= self.child_probability <= 1.0:
            raise ConfigError(f"child_probability must lie in [0, 1], got {self.child_probability}")
        if self.hierarchy is not None:
            if any(c < 0 for c in self.hierarchy):
                raise ConfigError(f"hierarchy child counts must be >= 0, got {self.hierarchy}")
            total = len(self.hierarchy) + sum(self.hierarchy)
            if total != self.n_features:
                raise ConfigError(
                    f"hierarchy {self.hierarchy} lays out {total} features but n_features={self.n_features}"
                )


    def _check_pairs(self) -> None:
        if self.hierarchy is not None:
            raise ConfigError("correlated_pairs cannot be combined with hierarchy; use one or the other")
        p = firing_probabilities(self)
        used: set[int] = set()
        for pair in self.correlated_pairs:
            if len(pair) != 3:
                raise ConfigError(f"each correlated pair is (i, j, rho), got {pair}")
            i, j, rho = pair
            if not (0 <= i < self.n_features and 0 <= j < self.n_features) or i == j or {i, j} & used:
                raise ConfigError(f"correlated pair {pair}: i and j must be distinct features in "
                                  f"[0, {self.n_features}), each in at most one pair")
            used |= {i, j}
            p11 = pair_joint(float(p[i]), float(p[j]), rho)
            lo, hi = max(0.0, float(p[i] + p[j]) - 1.0), float(min(p[i], p[j]))
            if not lo - 1e-12 <= p11 <= hi + 1e-12:
                raise ConfigError(f"correlated pair {pair}: with p_i={float(p[i]):.4g}, p_j={float(p[j]):.4g} the "
                                  f"joint P(both)={p11:.4g} falls outside [{lo:.4g}, {hi:.4g}]; lower |rho|")


def pair_joint(p_i: Any, p_j: Any, rho: Any) -> Any:
    """P(i ∧ j) of two Bernoulli features with marginals p_i, p_j and Pearson correlation ρ (floats or tensors)."""
    return p_i * p_j + rho * (p_i * (1 - p_i) * p_j * (1 - p_j)) ** 0.5


def firing_probabilities(cfg: SuperpositionConfig) -> torch.Tensor:
    """Per-feature firing probability p_i (float64): ``cfg.probabilities``, else the configured profile."""
    if cfg.probabilities is not None:
        return torch.tensor(cfg.probabilities, dtype=torch.float64)
    n = cfg.n_features
    if cfg.profile == "constant" or n == 1:
        return torch.full((n,), cfg.p_max, dtype=torch.float64)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    r = 1.0 / i**cfg.zipf_exponent if cfg.profile == "zipf" else (n - i + 1) / n
    return cfg.p_min + (cfg.p_max - cfg.p_min) * (r - r.min()) / (r.max() - r.min())


def _directions(cfg: SuperpositionConfig) -> torch.Tensor:
    g = make_generator(cfg.seed)
    G = torch.randn(cfg.n_features, cfg.d_model, generator=g, dtype=torch.float64)
    G = G / G.norm(dim=1, keepdim=True)
    if cfg.target_cosine is not None:
        G = G.clone().requires_grad_(True)
        opt = torch.optim.Adam([G], lr=0.01)
        off = ~torch.eye(cfg.n_features, dtype=torch.bool)
        for _ in range(200):
            gram = G @ G.T
            loss = ((gram[off] - cfg.target_cosine) ** 2).sum() + cfg.n_features * ((G.norm(dim=1) ** 2 - 1) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        G = G.detach()
        G = G / G.norm(dim=1, keepdim=True)
    return G.float()


class SuperpositionWorld:
    """Samples x = Σ a_i G_i with the planted directions G and coefficients a as ground truth."""

    def __init__(self, config: SuperpositionConfig | None = None) -> None:
        self.config = config or SuperpositionConfig()
        self.directions = _directions(self.config)
        """Planted unit directions G, ``[n_features, d_model]``."""
        self.probabilities = firing_probabilities(self.config)
        """Marginal firing probability of each feature (before hierarchy constraints)."""
        self.parents = self._parents()
        """Parent index of each feature, -1 for roots."""

    def _parents(self) -> torch.Tensor:
        parents = torch.full((self.config.n_features,), -1, dtype=torch.long)
        if self.config.hierarchy is not None:
            i = 0
            for children in self.config.hierarchy:
                parents[i + 1 : i + 1 + children] = i
                i += 1 + children
        return parents

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        """Draw ``n`` activations with their true coefficients."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        cfg = self.config
        if cfg.hierarchy is not None and cfg.hierarchy_sampling == "one_parent":
            active = self._one_parent(n, generator)
        else:
            u = torch.rand(n, cfg.n_features, generator=generator, dtype=torch.float64)
            active = u < self.probabilities
            if cfg.correlated_pairs:
                active = self._correlate(active, u)
            if cfg.hierarchy is not None:
                active = self._apply_hierarchy(active, generator)
        if cfg.magnitude == "uniform":
            lo, hi = cfg.magnitude_range
            mag = torch.rand(n, cfg.n_features, generator=generator)
            mag = mag if (lo, hi) == (0.0, 1.0) else lo + (hi - lo) * mag
        else:
            mag = (1.5 + 0.25 * torch.randn(n, cfg.n_features, generator=generator)).clamp_min(0.0)
        acts = mag * active
        x = acts @ self.directions
        if cfg.noise_std > 0:
            x = x + cfg.noise_std * torch.randn(x.shape, generator=generator)
        return Batch(inputs=x, labels={"acts": acts, "active": acts != 0})

    def _correlate(self, active: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Redraw each pair's j given i from the exact two-Bernoulli joint (u[:, j] is j's own uniform)."""
        i, j, rho = (list(c) for c in zip(*self.config.correlated_pairs))
        p = self.probabilities
        pi, pj = p[i], p[j]
        p11 = pair_joint(pi, pj, torch.tensor(rho, dtype=torch.float64))
        given_on = p11 / pi.clamp_min(1e-300)
        given_off = (pj - p11) / (1 - pi).clamp_min(1e-300)
        active = active.clone()
        active[:, j] = u[:, j] < torch.where(active[:, i], given_on, given_off)
        return active

    def _one_parent(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """One root per sample (∝ its p), plus one of its children (uniform) with ``child_probability``."""
        cfg = self.config
        roots = torch.nonzero(self.parents < 0).squeeze(1)
        counts = torch.tensor(cfg.hierarchy or (), dtype=torch.long)
        pick = torch.multinomial(self.probabilities[roots], n, replacement=True, generator=generator)
        active = torch.zeros(n, cfg.n_features, dtype=torch.bool)
        rows = torch.arange(n)
        active[rows, roots[pick]] = True
        kids = counts[pick]
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        child = (torch.rand(n, generator=generator, dtype=torch.float64) * kids).long().clamp_max((kids - 1).clamp_min(0))
        with_child = (kids > 0) & (u < cfg.child_probability)
        active[rows[with_child], (roots[pick] + 1 + child)[with_child]] = True
        return active

    def _apply_hierarchy(self, active: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Children fire only with their parent; at most one child of a parent fires."""
        active = active.clone()
        i = 0
        for children in self.config.hierarchy or ():
            if children:
                kids = slice(i + 1, i + 1 + children)
                on = active[:, kids] & active[:, i : i + 1]
                # keep one firing child chosen uniformly among those that fired
                score = torch.rand(on.shape, generator=generator, dtype=torch.float64) * on
                keep = torch.zeros_like(on)
                any_on = on.any(dim=1)
                keep[any_on, score[any_on].argmax(dim=1)] = True
                active[:, kids] = keep
            i += 1 + children
        return active
