"""Concept manifolds and manifold steering paths (straight line vs. along the fitted manifold).

Wurgaft, Rager, Kowal, …, Goodman, …, Lubana et al. 2026, "Manifold Steering Reveals the Shared
Geometry of Neural Network Representation and Behavior" (arXiv 2605.05115), spec §6:

    M_h: PCA of the site's activations to k dims; centroid per concept value; a cubic spline s(u)
         through the centroids (periodic for cyclic concepts), u ∈ [0, 1)
    linear path    π(t) = (1 − t) h₀ + t h₁
    manifold path  π(t) = s((1 − t) s⁻¹(h₀) + t s⁻¹(h₁))   (periodic: along the shorter arc)

s⁻¹(h) is the parameter of the nearest point of the spline (on a dense grid) to h's PCA projection.
:func:`steer_along` sets h ← π(t) at a site of a model, point by point (``Set(value=π(t))`` on the
activations through :func:`assay.lenses.intervene.intervene`), and collects the outputs (scored against
the behaviour manifold with :func:`assay.evaluate.intervention.naturalness`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from assay.lens import Set
from assay.lenses.intervene import Selector, intervene

__all__ = ["ConceptManifold", "fit_concept_manifold", "linear_path", "manifold_path", "steer_along"]


class ConceptManifold:
    """A spline through concept centroids in a PCA subspace of the activations."""

    def __init__(self, mean: Tensor, components: Tensor, centroids: Tensor, periodic: bool, grid: int = 2048):
        from scipy.interpolate import CubicSpline

        self.mean, self.components, self.centroids, self.periodic = mean, components, centroids, periodic
        n = centroids.shape[0]
        c = centroids.double().numpy()
        if periodic:
            u = [i / n for i in range(n + 1)]
            self._spline = CubicSpline(u, list(c) + [c[0]], bc_type="periodic")
        else:
            u = [i / (n - 1) for i in range(n)]
            self._spline = CubicSpline(u, c, bc_type="natural")
        self.grid_u = torch.linspace(0, 1, grid + 1, dtype=torch.float64)[:-1 if periodic else None]
        self.grid = self.coords(self.grid_u)

    def concept_u(self, i: int) -> float:
        """The spline parameter of concept ``i``'s centroid."""
        n = self.centroids.shape[0]
        return i / n if self.periodic else i / (n - 1)

    def coords(self, u: Tensor) -> Tensor:
        """Spline points in PCA coordinates ``[..., k]`` at parameters ``u``."""
        u = torch.as_tensor(u, dtype=torch.float64)
        if self.periodic:
            u = torch.remainder(u, 1.0)
        return torch.from_numpy(self._spline(u.numpy())).to(self.centroids.dtype)

    def point(self, u: Tensor) -> Tensor:
        """Spline points in activation space ``[..., d]``."""
        return self.mean + self.coords(u) @ self.components

    def project(self, h: Tensor) -> Tensor:
        """PCA coordinates of activations ``[..., d]``."""
        return (h - self.mean) @ self.components.T

    def inverse(self, h: Tensor) -> Tensor:
        """s⁻¹(h): parameter of the nearest spline grid point ``[...]``."""
        dist = torch.cdist(self.project(h).reshape(-1, self.components.shape[0]).double(), self.grid.double())
        return self.grid_u[dist.argmin(-1)].reshape(h.shape[:-1])


def fit_concept_manifold(h: Tensor, concept: Tensor, n_concepts: int, *, n_components: int = 64,
                         periodic: bool = True) -> ConceptManifold:
    """Fit the manifold from activations ``h [N, d]`` labelled with concept ids ``[N]`` in 0..n_concepts−1."""
    if h.dim() != 2 or concept.shape != h.shape[:1]:
        raise ValueError(f"need activations [N, d] and concept ids [N], got {tuple(h.shape)} and {tuple(concept.shape)}")
    if not torch.isfinite(h).all():
        raise ValueError("activations contain NaN or inf")
    present = torch.unique(concept)
    if present.numel() != n_concepts or int(present.min()) < 0 or int(present.max()) >= n_concepts:
        raise ValueError(f"every concept 0..{n_concepts - 1} needs at least one example; got {present.tolist()}")
    if n_concepts < 3:
        raise ValueError("a concept manifold needs at least 3 concept values")
    mean = h.mean(0)
    k = min(n_components, h.shape[1], h.shape[0])
    comps = torch.linalg.svd(h - mean, full_matrices=False).Vh[:k]
    z = (h - mean) @ comps.T
    cents = torch.stack([z[concept == c].mean(0) for c in range(n_concepts)])
    return ConceptManifold(mean, comps, cents, periodic)


def linear_path(h0: Tensor, h1: Tensor, n_points: int = 50) -> Tensor:
    """Straight line (1 − t) h₀ + t h₁ at ``n_points`` evenly spaced t ∈ [0, 1] ``[n_points, d]``."""
    t = torch.linspace(0, 1, n_points, dtype=h0.dtype)[:, None]
    return (1 - t) * h0 + t * h1


def manifold_path(m: ConceptManifold, h0: Tensor, h1: Tensor, n_points: int = 50) -> Tensor:
    """s((1 − t) s⁻¹(h₀) + t s⁻¹(h₁)) at ``n_points`` t ∈ [0, 1] ``[n_points, d]`` (the shorter arc if periodic)."""
    u0, u1 = float(m.inverse(h0)), float(m.inverse(h1))
    if m.periodic and abs(u1 - u0) > 0.5:
        u1 = u1 - 1.0 if u1 > u0 else u1 + 1.0
    t = torch.linspace(0, 1, n_points, dtype=torch.float64)
    return m.point((1 - t) * u0 + t * u1)


def steer_along(model: nn.Module, site: str, path: Tensor, run: Callable[[nn.Module], Tensor], *,
                positions: Selector | None = None) -> Tensor:
    """For each point π(t) of ``path [K, d]``: patch the site's activation to π(t) at ``positions``
    (default all real positions) and call ``run(model)``; returns the outputs stacked ``[K, ...]``."""
    if path.dim() != 2 or path.shape[0] < 1:
        raise ValueError(f"a steering path must be [n_points, d] with n_points >= 1, got {tuple(path.shape)}")
    if not torch.isfinite(path).all():
        raise ValueError("the steering path contains NaN or inf")
    outs = []
    for point in path:
        with intervene(model, site, None, Set(value=point), positions=positions, record=False):
            outs.append(run(model))
    return torch.stack(outs)
