"""Influence, pruning and the replacement/completeness scores of an attribution graph.

Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language Models" (§ "Graph
pruning"); definitions as in circuit-tracer (``graph.py``: ``normalize_matrix``, ``compute_influence``,
``prune_graph``, ``compute_graph_scores``). With Ā = |A| row-normalised and w the logit
probabilities, the influence is I = w(Ā + Ā² + …) (a finite sum: the graph is a DAG). Nodes are kept
by influence until a share ``node_threshold`` of the total is covered (tokens and logits always),
edges by the score Ā' ⊙ (I' + w)[:, None] on the node-pruned graph until ``edge_threshold``; then
nodes without the edges they need are dropped until nothing changes.

Thresholds are found without sorting all N² edge scores (what runs out of memory in circuit-tracer
on long prompts): :func:`share_threshold` bisects on the score value, counting and summing scores
at or above a candidate, until few enough remain in the undecided band to sort exactly. It returns
the same value as the sort-based rule (smallest prefix of the descending scores whose sum reaches
the share; every score ≥ that value kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["normalize_matrix", "influence", "share_threshold", "Pruned", "prune", "influential_edge_recall", "aggregate",
           "grouped_influential_recall",
           "influence_through", "influence_through_chain", "GraphScores", "graph_scores"]


def normalize_matrix(adjacency: torch.Tensor) -> torch.Tensor:
    """|A| with each row divided by its sum (rows summing to 0 stay 0)."""
    a = adjacency.abs()
    return a.div_(a.sum(1, keepdim=True).clamp(min=1e-10))  # in place: one [N, N] buffer, not two


def influence(normalized: torch.Tensor, weights: torch.Tensor, *, max_iter: int = 1000) -> torch.Tensor:
    """I = w(Ā + Ā² + …), iterated until the product vanishes; raises if the graph is not a DAG."""
    current = weights @ normalized
    total = torch.zeros_like(weights)
    for _ in range(max_iter):
        if not current.any():
            return total
        total = total + current
        current = current @ normalized
    raise RuntimeError(f"influence did not converge in {max_iter} steps: the adjacency is not a DAG")


def share_threshold(scores: torch.Tensor, share: float, *, exact_band: int = 1 << 16) -> float:
    """The smallest value τ such that the scores ≥ τ sum to at least ``share`` of all scores.

    Equals ``sorted_desc[searchsorted(cumsum(sorted_desc)/total, share)]`` without sorting ``scores``:
    bisection on τ until at most ``exact_band`` scores lie in the undecided band, which is then sorted.
    """
    flat = scores.reshape(-1)
    total = flat.sum()
    target = share * total
    lo, hi = torch.zeros((), dtype=flat.dtype), flat.max() * 2 + 1
    while True:
        band = (flat >= lo) & (flat < hi)
        mid = (lo + hi) / 2
        if int(band.sum()) <= exact_band or mid <= lo or mid >= hi:
            break
        if flat[flat >= mid].sum() >= target:
            lo = mid
        else:
            hi = mid
    above = flat[flat >= hi].sum()
    vals = flat[band].sort(descending=True).values
    if len(vals) == 0:
        return float(lo)
    cum = above + vals.cumsum(0)
    idx = int(torch.searchsorted(cum, target.reshape(1) * (1 - 1e-12)).clamp(max=len(vals) - 1))
    return float(vals[idx])


class Pruned(NamedTuple):
    """What :func:`prune` keeps."""

    node_mask: torch.Tensor
    """Kept nodes, bool [N]."""
    edge_mask: torch.Tensor
    """Kept edges, bool [N, N]."""
    node_influence: torch.Tensor
    """Influence of each node in the full graph, [N]."""
    edge_scores: torch.Tensor
    """Edge scores on the node-pruned graph, [N, N]."""


def prune(
    adjacency: torch.Tensor, weights: torch.Tensor, always: torch.Tensor, *, node_threshold: float = 0.8,
    edge_threshold: float = 0.98, features: torch.Tensor | None = None,
) -> Pruned:
    """Prune a graph by influence. ``weights``: logit probabilities on logit nodes (0 elsewhere);
    ``always``: nodes never pruned (tokens and logits); ``features``: nodes that need an incoming
    kept edge (default: none). Feature and error nodes (all not in ``always``) need an outgoing one."""
    # no [N, N] intermediate outlives its use: the normalized and the node-pruned matrices are not kept
    node_inf = influence(normalize_matrix(adjacency), weights)
    node_mask = (node_inf >= share_threshold(node_inf, node_threshold)) | always
    norm_p = normalize_matrix(adjacency * (node_mask[:, None] & node_mask[None, :]))
    inf_p = influence(norm_p, weights)
    scores = norm_p.mul_((inf_p + weights)[:, None])  # in place (norm_p is not used again)
    edge_mask = scores >= share_threshold(scores, edge_threshold)
    edge_mask &= scores > 0
    needs_in = features if features is not None else torch.zeros_like(always)
    while True:
        has_out = edge_mask.any(0)
        has_in = edge_mask.any(1)
        keep = node_mask & (always | has_out) & (~needs_in | has_in)
        new_edges = edge_mask & keep[:, None] & keep[None, :]
        if torch.equal(keep, node_mask) and torch.equal(new_edges, edge_mask):
            return Pruned(node_mask, edge_mask, node_inf, scores)
        node_mask, edge_mask = keep, new_edges


def influential_edge_recall(
    adjacency: torch.Tensor, weights: torch.Tensor, edge_mask: torch.Tensor, *, min_share: float = 0.01,
) -> float:
    """Share of the edges carrying at least ``min_share`` of the logit influence that ``edge_mask`` keeps.

    The influence through edge s → t is Ā[t, s]·(I_t + w_t) on the full graph, as a share of Σ w (the spec's
    "edges on paths carrying ≥ 1% of the target logit's influence", circuits.md §4.3 A3)."""
    normalized = normalize_matrix(adjacency)
    flow = normalized * (influence(normalized, weights) + weights)[:, None] / weights.sum()
    heavy = flow >= min_share
    return int((heavy & edge_mask).sum()) / int(heavy.sum()) if heavy.any() else 1.0  # exact counts: 9/10 is 0.9


def aggregate(adjacency: torch.Tensor, groups: torch.Tensor, n_groups: int | None = None) -> torch.Tensor:
    """The graph on groups of nodes (supernodes): ``out[G, H] = Σ_{t ∈ G, s ∈ H} A[t, s]`` for G ≠ H (signed
    sums, so a group's edge is the summed effect of its members; edges inside a group are dropped, so the
    result has no self-loops), ``groups`` the group id of each node, long [N]; groups ``0 … n_groups − 1``
    (default ``groups.max() + 1``). With one node per group it is ``A`` reordered."""
    n = int(groups.max()) + 1 if n_groups is None else n_groups
    member = torch.zeros(n, len(groups), dtype=adjacency.dtype)
    member[groups, torch.arange(len(groups))] = 1.0
    return (member @ adjacency @ member.T).fill_diagonal_(0.0)


def grouped_influential_recall(
    adjacency: torch.Tensor, weights: torch.Tensor, always: torch.Tensor, groups: torch.Tensor, *,
    features: torch.Tensor | None = None, min_share: float = 0.01,
) -> float:
    """:func:`influential_edge_recall` on the graph of node groups (:func:`aggregate`; e.g. a compiled variable at
    one position), pruned there by :func:`prune`: a group's logit weight is its members' sum, and it is always
    kept (needs an incoming edge) when one of its members is. The reading of spec circuits.md §4.3 A3's pruned
    clause on its aggregated (component, position) nodes."""
    n = int(groups.max()) + 1
    grouped = aggregate(adjacency, groups, n)

    def summed(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=grouped.dtype).index_add_(0, groups, values.to(grouped.dtype))

    w = summed(weights)
    pr = prune(grouped, w, summed(always) > 0, features=None if features is None else summed(features) > 0)
    return influential_edge_recall(grouped, w, pr.edge_mask, min_share=min_share)


def influence_through(adjacency: torch.Tensor, weights: torch.Tensor, through: torch.Tensor) -> float:
    """Share of the logit influence Σ w that flows through at least one node of the bool mask ``through`` [N]
    (spec circuits.md §4.3 A6: the multi-hop check). Flow stops at the first such node met going down from
    the logits (their rows are zeroed in Ā), so each path is counted once: the result is Σ_{s ∈ through} I'_s / Σ w
    with I' the influence on that cut graph."""
    return influence_through_chain(adjacency, weights, [through])


def influence_through_chain(adjacency: torch.Tensor, weights: torch.Tensor, chain: Sequence[torch.Tensor]) -> float:
    """Share of the logit influence Σ w on paths that meet a node of *every* bool mask [N] in ``chain``, given in
    forward order (a path up from the tokens meets ``chain[0]`` first — the hops of a multi-hop circuit, e.g.
    the features of the MLP computing B = f(A), then those computing C = g(B)). Going down from the logits the
    flow is stopped at the first node of ``chain[-1]`` met (as :func:`influence_through`), restarted from there
    and stopped at ``chain[-2]``, and so on; what reaches ``chain[0]`` is the share. A graph that rewrites A → B
    → C as a direct A → C edge (a cross-layer transcoder's shortcut) keeps the share through ``chain[0]`` but
    loses the chain's."""
    cut = normalize_matrix(adjacency)
    flow = weights
    for through in reversed(chain):
        hop = cut.clone()
        hop[through] = 0
        flow = influence(hop, flow) * through
    return float(flow.sum() / weights.sum())


class GraphScores(NamedTuple):
    """How much of the graph the features explain."""

    replacement: float
    """Σ token influence / (Σ token influence + Σ error influence)."""
    completeness: float
    """Σ_n (1 − error share of row n)(I_n + w_n) / Σ_n (I_n + w_n) (input-less rows count as complete)."""
    completeness_features: float
    """The same sum over feature and logit rows only."""


def graph_scores(adjacency: torch.Tensor, weights: torch.Tensor, errors: torch.Tensor, tokens: torch.Tensor) -> GraphScores:
    """Replacement and completeness scores (circuit-tracer's ``compute_graph_scores``); ``errors`` and
    ``tokens`` are bool masks of the error and token nodes."""
    normalized = normalize_matrix(adjacency)
    inf = influence(normalized, weights)
    tok, err = inf[tokens].sum(), inf[errors].sum()
    replacement = float(tok / (tok + err)) if float(tok + err) > 0 else 1.0
    explained = 1 - normalized[:, errors].sum(1)
    out = inf + weights
    rows = ~(errors | tokens)
    return GraphScores(replacement, float((explained * out).sum() / out.sum()),
                       float((explained * out)[rows].sum() / out[rows].sum()))
