"""Constrained interventions: what an attribution graph's edges claim, measured in the replacement model.

circuit-tracer's exactness check (Hanna, Piotrowski, Lindsey, Ameisen 2025, ``feature_intervention`` with
every layer constrained; graphs of Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in
Language Models"): with attention patterns, norm scales and the other sources frozen, doubling a source
(a feature activation or a token embedding) must move every target — each feature's pre-activation and each
demeaned logit — by exactly that source's column of the adjacency (spec circuits.md §3.7, §4.3 A5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from assay.circuits.graph.attribute import Graph
from assay.circuits.graph.basis import FeatureBasis
from assay.circuits.graph.replacement import LocalReplacement

__all__ = ["ConstrainedEffects", "constrained_effects"]


class ConstrainedEffects(NamedTuple):
    """Measured moves of the targets against the graph's columns."""

    measured: torch.Tensor
    """Change of each target (feature rows, then logit rows) when each source (features, then token
    embeddings) is doubled, [n_features + n_logits, n_features + n_tokens]."""
    predicted: torch.Tensor
    """The graph's adjacency on the same rows and columns."""
    replay_error: float
    """max |replacement-model logits − model logits| with the clean sources (0 up to rounding)."""


def constrained_effects(model: nn.Module, graph: Graph, bases: Sequence[FeatureBasis], **replacement_kw) -> ConstrainedEffects:
    """Double every feature activation and token embedding of ``graph`` in its local replacement model."""
    rep = LocalReplacement(model, graph.tokens, bases, **replacement_kw)
    errors = [e[None] for e in rep.errors]
    with torch.no_grad():
        clean = model(graph.tokens[None])[0]
        pres, final = rep.run(rep.emb[None], [a[None] for a in rep.acts], errors)
    replay = float((final[0] @ rep.unembed.T - clean).abs().max())
    u = rep.unembed - rep.unembed.mean(0)
    f, _, t, lg = graph.slices()
    feats = graph.features.tolist()

    def targets(pres, final):
        out = [pres[j][0, p, i] for j, p, i in feats]
        return torch.cat([torch.stack(out) if out else final.new_zeros(0), final[0, -1] @ u[graph.logit_tokens].T])

    base = targets(pres, final)
    columns = []
    with torch.no_grad():
        for j, p, i in feats:
            acts = [a[None].clone() for a in rep.acts]
            acts[j][0, p, i] *= 2
            columns.append(targets(*rep.run(rep.emb[None], acts, errors)) - base)
        for p in range(graph.n_tokens):
            emb = rep.emb[None].clone()
            emb[0, p] *= 2
            columns.append(targets(*rep.run(emb, [a[None] for a in rep.acts], errors)) - base)
    rows = list(range(f.stop)) + list(range(lg.start, lg.stop))
    cols = list(range(f.stop)) + list(range(t.start, t.stop))
    return ConstrainedEffects(torch.stack(columns, 1), graph.adjacency[rows][:, cols], replay)
