"""Exact features of a compiled transformer, and the check of an attribution graph against its circuit.

A compiled model's variables are its true features (tracr: Lindner et al. 2023, "Tracr: Compiled
Transformers as a Laboratory for Interpretability"). :func:`exact_bases` turns them into
:class:`~assay.circuits.graph.basis.FeatureBasis` objects with zero error: per attention layer, the
projection onto the directions of the variables its heads write (σ = identity); per MLP layer, the
hidden neurons themselves (a transcoder that is the MLP). Each feature is labelled with its variable.
:func:`edge_recovery` scores graphs against the circuit (spec circuits.md §4.3 A3): graph edges with
|A| > ``rel_tol``·max|A|, aggregated to (source variable, target variable) over all positions and
prompts, against the circuit's OV, MLP and readout edges (QK edges are not direct effects; Ameisen et
al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language Models", §3.3 of the spec).
Token-embedding nodes stand for every embedded variable, so they are the node ``embed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from assay.circuits.compile.circuit import LOGITS
from assay.circuits.compile.compiled import CompiledModel
from assay.circuits.graph.attribute import Graph
from assay.circuits.graph.basis import FeatureBasis, identity, relu

__all__ = ["exact_bases", "EdgeRecovery", "edge_recovery", "EMBED", "variable_groups"]

EMBED = "embed"
"""The node the token-embedding (graph) nodes map to."""


def exact_bases(compiled: CompiledModel) -> list[FeatureBasis]:
    """Zero-error feature bases of a compiled model: attention-layer variables and MLP neurons."""
    model, circuit = compiled.model, compiled.circuit
    dtype = model.embed.weight.dtype
    d = model.config.d_model
    owner = {dim: n.variable for n in circuit.nodes for dim in n.dims}
    bases = []
    for layer in range(circuit.n_layers):
        written = [n for n in circuit.nodes if n.site == f"blocks.{layer}.attn"]
        if written:
            dims = [dim for n in written for dim in n.dims]
            directions = torch.eye(d, dtype=dtype)[dims]  # [n, d]
            b_dec = model.blocks[layer].attn.out.bias.detach()
            bases.append(FeatureBasis(
                name=f"blocks.{layer}.attn", input_site=f"blocks.{layer}.attn", output_site=f"blocks.{layer}.attn",
                W_enc=directions.T, b_enc=-(b_dec @ directions.T), W_dec=directions, b_dec=b_dec,
                activation=identity, labels=tuple(owner[dim] for dim in dims)))
        mlp = model.blocks[layer].mlp
        if any(c.kind == "mlp" and c.layer == layer for c in circuit.components):
            w_out = mlp.fc_out.weight.detach()  # [d, d_mlp]
            labels = tuple(next((owner[int(i)] for i in w_out[:, k].nonzero()[:, 0]), "") for k in range(w_out.shape[1]))
            bases.append(FeatureBasis(
                name=f"blocks.{layer}.mlp", input_site=f"blocks.{layer}.ln2", output_site=f"blocks.{layer}.mlp",
                W_enc=mlp.fc_in.weight.detach().T, b_enc=mlp.fc_in.bias.detach(), W_dec=w_out.T,
                b_dec=mlp.fc_out.bias.detach(), activation=relu, labels=labels))
    return bases


class EdgeRecovery(NamedTuple):
    """Graph edges against circuit edges, at the level of variables."""

    precision: float
    """Share of the graph's variable-level edges that are circuit edges."""
    recall: float
    """Share of the circuit's (OV, MLP, readout) edges the graphs contain."""
    found: frozenset
    """(source, target) variable pairs seen in the graphs."""
    expected: frozenset
    """(source, target) pairs of the circuit (embedded variables merged into ``embed``)."""
    chance: float
    """Precision of a graph holding every causally possible edge (into a feature or a logit — error and token
    nodes receive none —, from a site that runs before the target's in the model — tokens first, logits last —,
    at a position ≤ the target's), named by variables: what edges drawn at random score."""


def _node_names(graph: Graph, bases: Sequence[FeatureBasis]) -> list[str]:
    f_sl, e_sl, t_sl, l_sl = graph.slices()
    names = [""] * graph.adjacency.shape[0]
    for k, (j, _, i) in enumerate(graph.features.tolist()):
        names[k] = bases[j].labels[i]
    for k in range(e_sl.start, e_sl.stop):
        names[k] = "error"
    for k in range(t_sl.start, t_sl.stop):
        names[k] = EMBED
    for k in range(l_sl.start, l_sl.stop):
        names[k] = LOGITS
    return names


def variable_groups(graph: Graph, bases: Sequence[FeatureBasis]) -> tuple[torch.Tensor, list[tuple[str, int, int]]]:
    """Group ids of ``graph``'s nodes at the level of spec A3's aggregated nodes (circuits.md §4.3): the feature
    nodes of one basis by (label, position) — a compiled variable at one position, e.g. every neuron of a
    discretising MLP writing ``count`` at position 4 —, the token nodes by position, and every unnamed feature
    (label ``""``), error and logit node alone. Groups never span two bases, so no edge joins two members of one
    group and the grouped graph stays acyclic. Returns the id per node (long [N], for
    :func:`~assay.circuits.graph.aggregate`) and each id's key (name, position, basis index), position and basis
    −1 where they do not apply."""
    names = _node_names(graph, bases)
    f_sl, _, t_sl, _ = graph.slices()
    keys: list[tuple[str, int, int]] = []
    for k, name in enumerate(names):
        if k < f_sl.stop and name:
            keys.append((name, int(graph.features[k, 1]), int(graph.features[k, 0])))
        elif t_sl.start <= k < t_sl.stop:
            keys.append((name, k - t_sl.start, -1))
        else:
            keys.append((name, -1, -1 - k))  # alone
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    ids = torch.tensor([index[key] for key in keys], dtype=torch.long)
    return ids, [(name, pos, max(basis, -1)) for name, pos, basis in index]


def _possible_pairs(graph: Graph, bases: Sequence[FeatureBasis], model: torch.nn.Module) -> set[tuple[str, str]]:
    """Named (source, target) pairs of every causally possible edge: the target is a feature or a logit, the
    source's site runs before the target's in ``model`` and its position is not later. The graph's bases are the
    given ones then the error-only bases
    :class:`~assay.circuits.graph.replacement.LocalReplacement` appended (MLPs without a basis, named by site)."""
    names = _node_names(graph, bases)
    f_sl, e_sl, t_sl, l_sl = graph.slices()
    t_len, n_bases = graph.n_tokens, len(graph.basis_names)
    rank = {name: float(i) for i, (name, _) in enumerate(model.named_modules())}
    site_order = torch.tensor([rank[bases[j].output_site if j < len(bases) else graph.basis_names[j]]
                               for j in range(n_bases)])
    order = torch.empty(len(names), dtype=torch.float64)
    pos = torch.empty(len(names), dtype=torch.long)
    order[f_sl], pos[f_sl] = site_order[graph.features[:, 0]].double(), graph.features[:, 1]
    order[e_sl], pos[e_sl] = site_order.repeat_interleave(t_len).double(), torch.arange(t_len).repeat(n_bases)
    order[t_sl], pos[t_sl] = -1.0, torch.arange(t_len)
    order[l_sl], pos[l_sl] = float(len(rank)), t_len - 1
    can_receive = torch.zeros(len(names), dtype=torch.bool)  # error and token nodes have no incoming edges
    can_receive[f_sl], can_receive[l_sl] = True, True
    ok = (order[:, None] < order[None, :]) & (pos[:, None] <= pos[None, :]) & can_receive[None, :]  # [source, target]
    src, tgt = ok.nonzero(as_tuple=True)
    return {(names[a], names[b]) for a, b in zip(src.tolist(), tgt.tolist(), strict=True) if names[a] != names[b]}


def _graph_pairs(graph: Graph, bases: Sequence[FeatureBasis], rel_tol: float,
                 edge_mask: torch.Tensor | None) -> set[tuple[str, str]]:
    names = _node_names(graph, bases)
    a = graph.adjacency.abs()
    present = a > rel_tol * a.max()
    if edge_mask is not None:
        present &= edge_mask
    tgt, src = present.nonzero(as_tuple=True)
    return {(names[s], names[t]) for t, s in zip(tgt.tolist(), src.tolist(), strict=True)}


def edge_recovery(graphs: Sequence[Graph], bases: Sequence[FeatureBasis], compiled: CompiledModel, *,
                  rel_tol: float = 1e-6, edge_masks: Sequence[torch.Tensor] | None = None) -> EdgeRecovery:
    """Precision and recall of the union of ``graphs``' edges against ``compiled``'s circuit; with
    ``edge_masks`` (one bool [N, N] per graph, e.g. from pruning) only the kept edges count."""
    found: set[tuple[str, str]] = set()
    possible: set[tuple[str, str]] = set()
    for k, g in enumerate(graphs):
        found |= _graph_pairs(g, bases, rel_tol, None if edge_masks is None else edge_masks[k])
        possible |= _possible_pairs(g, bases, compiled.model)
    embedded = {n.variable for n in compiled.circuit.nodes if n.site == "embed"}
    expected = {(EMBED if e.source in embedded else e.source, e.target)
                for e in compiled.circuit.edges if e.kind != "qk"}
    hit = len(found & expected)
    return EdgeRecovery(hit / len(found) if found else 1.0, hit / len(expected) if expected else 1.0,
                        frozenset(found), frozenset(expected),
                        len(possible & expected) / len(possible) if possible else float("nan"))
