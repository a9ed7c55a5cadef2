"""Manifold steering on the trained cyclic-world model: recover the weekday circle, steer along it, and check
that the model's answer moves by the world's arithmetic, against a straight-line control.

Wurgaft, Rager, Kowal, …, Goodman, …, Lubana et al. 2026, "Manifold Steering Reveals the Shared Geometry of
Neural Network Representation and Behavior" (arXiv 2605.05115); the world after Engels et al. 2024 ("Not All
Language Model Features Are Linear"): prompts ``<bos> c_z + k =`` answered c_{(z+k) mod 7}
(:mod:`assay.bench.lenses.cyclic` trains the zoo's tiny transformer on all 42).

1. **The circle.** Activations at ``=`` of the 42 prompts, grouped by the answer, give 7 centroids; in the
   plane of their top two principal components a least-squares circle (Kåsa's algebraic fit) is fitted.
   ``circle_r2`` = 1 − Σᵢ(‖pᵢ − c‖ − r)² / Σᵢ‖pᵢ − p̄‖² (1: the centroids lie on a circle), and
   ``circle_frequency`` is the k for which they run around it in the order of k·a mod 7 (:func:`circle_frequency`).
2. **Steering.** For every prompt with answer a and every shift j ∈ {1, 2, 3} (the shorter arc), the activation
   at ``=`` is set to the points of a path from a's centroid to (a + j)'s — along the fitted periodic spline
   (:func:`assay.lenses.manifold.manifold_path`) or along the straight line (:func:`linear_path`), both in the
   model's full activation space through :func:`assay.lenses.manifold.steer_along`. The world's arithmetic
   says that at path fraction t the answer is a + round(t·j): ``arithmetic`` is the share of path points where
   the model's answer equals it; ``endpoint`` the share of paths that end on a + j; ``monotone`` the share
   whose answers pass a, a+1, …, a+j in order without any other weekday.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay.config import ConfigError

__all__ = ["ManifoldSteeringConfig", "fit_circle", "circle_holdout", "circle_frequency", "run_manifold_steering"]


@dataclass(frozen=True, kw_only=True)
class ManifoldSteeringConfig:
    """Manifold vs straight-line steering on the trained cyclic-world model."""

    site: str = "blocks.1"
    """Where the activations are read and set (``embed`` or ``blocks.i``; the last block by default: setting ``=``'s
    residual before the last block leaves its attention free to rewrite the answer from the other positions)."""
    seed: int = 0
    """Seed of the world model (trained once per seed and cached by the zoo)."""
    n_components: int = 8
    """PCA dimensions of the concept manifold's spline."""
    n_points: int = 24
    """Points per steering path."""
    model_steps: int = 300
    """Training steps of the world model (as the lenses family)."""
    d_model: int = 32
    """Width of the world model."""
    n_layers: int = 2
    """Blocks of the world model."""
    out_dir: Path | None = None
    """If given: results.json and the report section go there."""

    def __post_init__(self) -> None:
        if self.n_components < 2 or self.n_points < 2:
            raise ConfigError(f"n_components and n_points must be >= 2, got {self.n_components}, {self.n_points}")


def fit_circle(points: Any) -> tuple[Any, float, float]:
    """Least-squares circle through 2-D ``points [n, 2]`` (Kåsa 1976): centre, radius and R² = 1 − radial
    residual / total scatter."""
    import torch

    p = torch.as_tensor(points, dtype=torch.float64)
    A = torch.cat([2 * p, torch.ones(len(p), 1, dtype=p.dtype)], 1)
    sol = torch.linalg.lstsq(A, (p ** 2).sum(1, keepdim=True)).solution.flatten()
    centre = sol[:2]
    radius = math.sqrt(float(sol[2] + centre @ centre))
    resid = ((p - centre).norm(dim=1) - radius).pow(2).sum()
    total = (p - p.mean(0)).pow(2).sum()
    return centre, radius, float(1 - resid / total)


def circle_holdout(points: Any) -> tuple[int, float, float]:
    """Leave-one-concept-out test that 2-D points ``[n, 2]`` (concept a's centroid at row a) lie on a circle in
    the order of a Fourier frequency k: for each k ∈ 1..⌊n/2⌋, fit an affine map from the other n − 1 points to
    (cos 2πka/n, sin 2πka/n) and predict the held-out point's angle. Returns the best k, its mean angular error
    in units of one step 2π/n, and the share of held-out concepts whose predicted angle is nearest their own.
    (A circle fit's R² is no test with 7 points: random Gaussian points reach a median R² of 0.895.)"""
    import torch

    p = torch.as_tensor(points, dtype=torch.float64)
    n = len(p)
    X = torch.cat([p, torch.ones(n, 1, dtype=p.dtype)], 1)
    best: tuple[int, float, float] | None = None
    for k in range(1, n // 2 + 1):
        theta = 2 * math.pi * k * torch.arange(n, dtype=p.dtype) / n
        Y = torch.stack([theta.cos(), theta.sin()], 1)
        errs, hits = [], 0
        for c in range(n):
            keep = torch.arange(n) != c
            W = torch.linalg.lstsq(X[keep], Y[keep]).solution
            y = X[c] @ W
            pred = math.atan2(float(y[1]), float(y[0]))
            err = abs((pred - float(theta[c]) + math.pi) % (2 * math.pi) - math.pi)
            errs.append(err / (2 * math.pi * k / n) if k else err)
            hits += int(err < math.pi * k / n)  # nearer its own angle than the neighbours' (k steps of 2π/n apart)
        mean = sum(errs) / n
        if best is None or mean < best[1]:
            best = (k, mean, hits / n)
    assert best is not None
    return best


def circle_frequency(angles: Any) -> int | None:
    """The k ∈ 1..⌊n/2⌋ for which the points sit around the circle in the order of k·a mod n (either direction):
    k = 1 is the world's own order; modular-arithmetic models often use another Fourier frequency (Nanda et al.
    2023). None: no such order."""
    import torch

    n = len(angles)
    order = torch.argsort(torch.as_tensor(angles)).tolist()
    start = order.index(0)
    seq = order[start:] + order[:start]
    for k in range(1, n // 2 + 1):
        if math.gcd(k, n) != 1:
            continue
        inv = pow(k, -1, n)
        walk = [(i * inv) % n for i in range(n)]
        if seq == walk or seq == [0] + walk[:0:-1]:
            return k
    return None


def run_manifold_steering(cfg: ManifoldSteeringConfig, world: Any = None) -> dict[str, Any]:
    """Run the experiment (``world``: an already prepared :class:`~assay.bench.lenses.cyclic.CyclicModelWorld`)."""
    import types

    import torch

    from assay.bench.lenses.cyclic import EQ, prepare_cyclic
    from assay.lenses.intervene import At
    from assay.lenses.manifold import fit_concept_manifold, linear_path, manifold_path, steer_along

    world = world or prepare_cyclic(cfg.site, cfg.seed, types.SimpleNamespace(
        n_layers=cfg.n_layers, d_model=cfg.d_model, model_steps=cfg.model_steps))
    n = world.n_concepts
    h = world.h[:, EQ].float()
    m = fit_concept_manifold(h, world.answer, n, n_components=cfg.n_components)
    plane = torch.linalg.svd(m.centroids - m.centroids.mean(0), full_matrices=False).Vh[:2]
    p2 = (m.centroids - m.centroids.mean(0)) @ plane.T
    centre, radius, r2 = fit_circle(p2)
    k_best, holdout_err, holdout_hit = circle_holdout(p2)
    angles = torch.atan2(p2[:, 1] - centre[1], p2[:, 0] - centre[0])
    centroids = torch.stack([h[world.answer == a].mean(0) for a in range(n)])

    def run(model: Any) -> Any:
        with torch.no_grad():
            return model(world.ids[rows])[:, EQ].argmax(-1) - world.first_concept

    scores: dict[str, dict[int, list[float]]] = {"manifold": {}, "linear": {}}
    for kind in scores:
        for j in (1, 2, 3):
            arith, ends, mono = [], [], []
            for a in range(n):
                rows = (world.answer == a).nonzero()[:, 0]
                h0, h1 = centroids[a], centroids[(a + j) % n]
                path = manifold_path(m, h0, h1, cfg.n_points) if kind == "manifold" else linear_path(h0, h1, cfg.n_points)
                answers = steer_along(world.model, cfg.site, path.to(h.dtype), run, positions=At(EQ))  # [K, rows]
                t = torch.linspace(0, 1, cfg.n_points)
                expected = (a + torch.round(t * j).long()) % n
                arith.append(float((answers == expected[:, None]).double().mean()))
                ends.append(float((answers[-1] == (a + j) % n).double().mean()))
                for r in range(answers.shape[1]):
                    seq = torch.unique_consecutive(answers[:, r]).tolist()
                    mono.append(float(seq == [(a + i) % n for i in range(j + 1)]))
            scores[kind][j] = [sum(arith) / n, sum(ends) / n, sum(mono) / len(mono)]
    result = {"site": cfg.site, "seed": cfg.seed, "model_accuracy": world.model_acc, "circle_r2": r2,
              "circle_frequency": circle_frequency(angles.tolist()), "radius": radius,
              "holdout_frequency": k_best, "holdout_error_steps": holdout_err, "holdout_hit": holdout_hit,
              "rows": [{"path": kind, "shift": j, "arithmetic": v[0], "endpoint": v[1], "monotone": v[2]}
                       for kind, per in scores.items() for j, v in per.items()]}
    if cfg.out_dir is not None:
        _write(Path(cfg.out_dir), result)
    return result


def _write(out: Path, r: dict[str, Any]) -> None:
    import json

    from assay.report import Section, Table, write_section

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(r, indent=2))
    table = Table("Steering the answer along the weekday circle vs along a straight line",
                  ["path", "shift j", "arithmetic (share of path points)", "endpoint", "monotone"],
                  [[x["path"], x["shift"], round(x["arithmetic"], 3), round(x["endpoint"], 3), round(x["monotone"], 3)]
                   for x in r["rows"]])
    notes = [f"Cyclic-world model (seed {r['seed']}, answer accuracy {r['model_accuracy']:.3f}); site {r['site']} at '='. "
             f"The 7 answer centroids lie on a circle with R² {r['circle_r2']:.3f} in their top-2 PC plane "
             f"(around it in the order of k·a mod 7 with k = {r['circle_frequency']}; k = 1 is the world's own order).",
             "arithmetic: share of path points where the model answers a + round(t·j); endpoint: share of paths "
             "ending on a + j; monotone: share of prompts whose answers pass a, a+1, …, a+j in order."]
    write_section(out, Section("Manifold steering on the cyclic world", [table], [], notes))
