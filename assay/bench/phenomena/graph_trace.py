"""In-context graph tracing on the bench: does the default tiny model's representation of the walk's tokens
reorganise towards the graph as context grows (its Dirichlet energy falling)?

Park, Lee, Lubana, Yang, Okawa, Nishi, Wattenberg, Tanaka 2025, "ICLR: In-Context Learning of
Representations" (ICLR 2025). The world is :class:`assay.worlds.graph_trace.GraphTraceWorld` (random walks
with a fresh node → token map per sequence). After training, on fresh walks, per window of positions
[t − W, t) (:func:`energy_by_window`): the softmax mass on the valid next tokens, and the normalised
Dirichlet energy Ê (:func:`assay.evaluate.graph_energy.normalized_dirichlet_energy`) of each block's
per-node class means (:meth:`GraphTraceWorld.class_means`), averaged over the walks that visit every node
in the window. Random vectors give Ê ≈ tr L/(N − 1); the graph's λ₂ is the minimum; a model that codes each
node by its neighbours' (per-sequence random) tokens — what predicting the next token needs — sits at
``successor_level`` = Ê of A·U (:func:`assay.evaluate.graph_energy.mixed_random_energy`), above the random
level on a ring or grid (adjacent nodes share no neighbour). Metrics:
``energy_early`` / ``energy_late`` (first and last window, after the last block), ``energy_drop`` = early −
late (> 0: the representations become smoother on the graph with context), ``energy_drop_block0`` (the same
after the first block; the paper finds the reorganisation in middle layers), ``random_level``,
``successor_level``, ``valid_mass_late``.

``benchmarks/graph_trace_energy.py`` runs the same measurement at any budget and graph, at every site, raw and
with the position component removed, and on the readout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch

from assay.bench.phenomena.base import Curve, Measurement

__all__ = ["GraphTraceBudget", "FULL", "QUICK", "WindowEnergy", "energy_by_window", "PHENOMENON"]


@dataclass(frozen=True, kw_only=True)
class GraphTraceBudget:
    """The graph, how long the model trains and how it is measured."""

    graph: Literal["grid", "ring"]
    """The world's graph."""
    ring_size: int
    """Nodes of the ring (when ``graph="ring"``)."""
    seq_len: int
    """Walk length (the model's context)."""
    steps: int
    """Training updates of the world's reference model (its own default: 10,000)."""
    window: int
    """Positions per measurement window."""
    n_eval: int
    """Fresh walks measured."""


FULL = GraphTraceBudget(graph="ring", ring_size=8, seq_len=64, steps=2000, window=16, n_eval=256)
"""The documented budget (a CPU-sized fraction of the spec's ≥ 10,000 steps on a 4×4 grid)."""
QUICK = GraphTraceBudget(graph="ring", ring_size=8, seq_len=32, steps=10, window=16, n_eval=64)
"""A seconds-long budget for tests."""


class WindowEnergy(NamedTuple):
    """The measurement in one window of positions."""

    start: int
    """First position of the window."""
    stop: int
    """One past its last position."""
    valid_mass: float
    """Mean softmax mass on the valid next tokens at the window's scored positions."""
    energy: float
    """Mean Ê of the per-node class means over the walks that visit every node in the window (NaN if none)."""
    n_walks: int
    """How many walks visit every node in the window."""


def energy_by_window(world, h: torch.Tensor, logits: torch.Tensor, batch, window: int) -> list[WindowEnergy]:
    """:class:`WindowEnergy` of consecutive windows [0, W), [W, 2W), … of representations ``h`` [n, L, d] and
    ``logits`` [n, L, V] on ``batch``."""
    from assay.evaluate.graph_energy import normalized_dirichlet_energy
    from assay.worlds.vocab import IGNORE, valid_mass

    out = []
    for stop in range(window, world.config.seq_len + 1, window):
        lo = stop - window
        means, present = world.class_means(h, batch, lo, stop)
        full = torch.nonzero(present.all(1))[:, 0].tolist()
        energy = [normalized_dirichlet_energy(means[i], world.adjacency) for i in full]
        scored = batch.targets != IGNORE
        scored[:, :lo] = False
        scored[:, stop:] = False
        out.append(WindowEnergy(lo, stop, valid_mass(logits, batch.labels["valid_next"], scored),
                                sum(energy) / len(energy) if energy else float("nan"), len(energy)))
    return out


class GraphTracePhenomenon:
    """Dirichlet energy of the token representations over context on ``graph_trace`` (module docstring)."""

    name = "graph_trace"
    title = "In-context graph tracing: representations reorganise to the graph? (Park et al. 2025)"
    claim = ("Park et al. 2025: given a random walk on a graph whose nodes are arbitrary tokens, a model's "
             "representations of those tokens reorganise, as context grows, to mirror the graph — their Dirichlet "
             "energy on the graph falls from the random level towards λ₂. Shown by energy_drop = energy_early − "
             "energy_late > 0 with energy_late below random_level; valid_mass_late says whether the walk itself "
             "was learned.")
    metrics = ("energy_early", "energy_late", "energy_drop", "energy_drop_block0", "random_level", "successor_level",
               "valid_mass_late")

    def measure(self, seed: int, *, quick: bool, run_dir: Path) -> Measurement:
        from assay.bench.phenomena.training import train_reference
        from assay.evaluate.graph_energy import laplacian, mixed_random_energy
        from assay.hooks import capture
        from assay.worlds.base import make_generator
        from assay.worlds.graph_trace import GraphTraceConfig, GraphTraceWorld

        b = QUICK if quick else FULL
        world = GraphTraceWorld(GraphTraceConfig(graph=b.graph, ring_size=b.ring_size, seq_len=b.seq_len))
        res = train_reference(world, steps=b.steps, seed=seed, eval_size=b.n_eval)
        batch = world.sample(b.n_eval, generator=make_generator(10_000 + seed))
        sites = [f"blocks.{i}" for i in range(len(res.model.blocks))]
        with torch.no_grad(), capture(res.model, sites) as acts:
            logits = res.model(batch.inputs)
        by_site = {site: energy_by_window(world, acts[site], logits, batch, b.window) for site in sites}
        rows, first = by_site[sites[-1]], by_site[sites[0]]
        lap = laplacian(world.adjacency)
        random_level = float(torch.trace(lap)) / (world.config.n_nodes - 1)
        lambda_2 = float(torch.linalg.eigvalsh(lap)[1])
        successor_level = mixed_random_energy(world.adjacency.double(), world.adjacency)
        metrics = {"energy_early": rows[0].energy, "energy_late": rows[-1].energy,
                   "energy_drop": rows[0].energy - rows[-1].energy,
                   "energy_drop_block0": first[0].energy - first[-1].energy, "random_level": random_level,
                   "successor_level": successor_level, "valid_mass_late": rows[-1].valid_mass}
        x = tuple(float(r.stop) for r in rows)
        energy_label = "normalised Dirichlet energy"
        curves = (*(Curve(f"Ê of the class means after {site}", "end of window (position)", energy_label, x,
                          tuple(r.energy for r in by_site[site])) for site in sites),
                  Curve("random vectors tr L/(N − 1)", "end of window (position)", energy_label, x,
                        (random_level,) * len(x)),
                  Curve("neighbour-token code A·U", "end of window (position)", energy_label, x,
                        (successor_level,) * len(x)),
                  Curve("λ₂ (minimum)", "end of window (position)", energy_label, x, (lambda_2,) * len(x)),
                  Curve("valid-next mass", "end of window (position)", "valid-next softmax mass", x,
                        tuple(r.valid_mass for r in rows)))
        return Measurement(metrics, curves)


PHENOMENON = GraphTracePhenomenon()
"""The ``graph_trace`` phenomenon of the ``dynamics`` family."""
