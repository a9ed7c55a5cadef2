"""The values of an attribution graph's targets when only some of its edges carry signal.

A circuit in the sense of edge-level circuit discovery (Mueller et al. 2025, "MIB: A Mechanistic
Interpretability Benchmark"), evaluated inside the graph's local replacement model (Ameisen et al. 2025,
"Circuit Tracing: Revealing Computational Graphs in Language Models"): every target's value is its constant
(what no source explains, plus any unexplored remainder) plus its kept incoming edges, each scaled by how
much its source changed — a token embedding or error node is fixed (scale 1); a feature's activation is
recomputed from its own new pre-activation through its basis's σ, applied to its position's row of the basis's
features (the features that are not nodes at 0, so a TopK ranks within the row; scale σ(pre′)/a). With every edge kept
this returns the clean values exactly (rows are conserved); with none, the constants.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from assay.circuits.graph.attribute import Graph
from assay.circuits.graph.basis import FeatureBasis

__all__ = ["subgraph_values"]


def subgraph_values(graph: Graph, bases: Sequence[FeatureBasis], edge_mask: torch.Tensor) -> torch.Tensor:
    """Every row's value [N] when only the edges in ``edge_mask`` (bool [N, N], rows targets) carry signal."""
    n = graph.adjacency.shape[0]
    if edge_mask.shape != (n, n):
        raise ValueError(f"edge_mask must be [{n}, {n}] like the adjacency, got {tuple(edge_mask.shape)}")
    a = graph.adjacency * edge_mask
    base = graph.constants + graph.unexplored
    scale = torch.ones(n, dtype=a.dtype)
    f = graph.slices()[0]
    which = graph.features[:, 0]
    pos, idx = graph.features[:, 1], graph.features[:, 2]
    for _ in range(len(bases) + 1):  # a DAG over the bases: each pass settles one more basis
        pre = (base + a @ scale)[f]
        act = torch.empty_like(pre)
        for j, basis in enumerate(bases):
            sel = which == j
            if not bool(sel.any()):
                continue
            # σ sees each position's row (a TopK ranks within a row); features that are not nodes stay at 0
            rows = pre.new_zeros(graph.n_tokens, basis.n_features)
            rows[pos[sel], idx[sel]] = pre[sel]
            act[sel] = basis.activation(rows)[pos[sel], idx[sel]]
        scale[f] = act / graph.activations.to(a.dtype)
    return base + a @ scale
