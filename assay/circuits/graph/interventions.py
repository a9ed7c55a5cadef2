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
    """Change of each target (feature rows, then logit rows) when each source (the chosen features, then every
    token embedding) is doubled, [n_features + n_logits, n_sources]."""
    predicted: torch.Tensor
    """The graph's adjacency on the same rows and columns."""
    replay_error: float
    """max |replacement-model logits − model logits| with the clean sources (0 up to rounding)."""
    columns: tuple[int, ...]
    """The graph node (adjacency column) of each source."""


def constrained_effects(model: nn.Module, graph: Graph, bases: Sequence[FeatureBasis], *,
                        features: Sequence[int] | None = None, batch_size: int = 16,
                        **replacement_kw) -> ConstrainedEffects:
    """Double each feature activation of ``graph`` (every one, or the graph feature indices ``features``: on a
    large graph, a sample as circuit-tracer's own check takes) and every token embedding in its local replacement
    model, ``batch_size`` sources per linearised forward pass. ``replacement_kw`` go to
    :class:`~assay.circuits.graph.replacement.LocalReplacement` (the sites, the unembedding, ``norms=``,
    ``attention=``: the same the graph was attributed with)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    feats = graph.features.tolist()
    chosen = list(range(len(feats))) if features is None else [int(k) for k in features]
    if any(not 0 <= k < len(feats) for k in chosen):
        raise ValueError(f"features must index the graph's {len(feats)} features, got {chosen}")
    rep = LocalReplacement(model, graph.tokens, bases, **replacement_kw)
    errors = [e[None] for e in rep.errors]
    with torch.no_grad():
        clean = model(graph.tokens[None])[0]
        pres, final = rep.run(rep.emb[None], [a[None] for a in rep.acts], errors)
    replay = float((final[0] @ rep.unembed.T - clean).abs().max())
    u = rep.unembed - rep.unembed.mean(0)
    f, _, t, lg = graph.slices()

    def targets(pres, final):
        """[B, n_features + n_logits]: every feature's pre-activation, then the demeaned logits."""
        out = [pres[j][:, p, i] for j, p, i in feats]
        logit = final[:, -1] @ u[graph.logit_tokens].T
        return torch.cat([torch.stack(out, 1), logit], 1) if out else logit

    base = targets(pres, final)
    sources = [("feature", k) for k in chosen] + [("token", p) for p in range(graph.n_tokens)]
    columns = []
    with torch.no_grad():
        for start in range(0, len(sources), batch_size):
            chunk = sources[start:start + batch_size]
            b = len(chunk)
            acts = [a[None].repeat(b, 1, 1) for a in rep.acts]
            emb = rep.emb[None].repeat(b, 1, 1)
            for r, (kind, k) in enumerate(chunk):
                if kind == "feature":
                    j, p, i = feats[k]
                    acts[j][r, p, i] *= 2
                else:
                    emb[r, k] *= 2
            columns.append(targets(*rep.run(emb, acts, [e.expand(b, -1, -1) for e in errors])) - base)
    rows = list(range(f.stop)) + list(range(lg.start, lg.stop))
    cols = chosen + list(range(t.start, t.stop))
    return ConstrainedEffects(torch.cat(columns, 0).T, graph.adjacency[rows][:, cols], replay, tuple(cols))
