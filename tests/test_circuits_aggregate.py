"""Graphs on groups of nodes (supernodes) and spec A3's pruned clause read on its aggregated nodes
(circuits.md §4.3): hand values, the ungrouped pipeline as the reference, and a compiled histogram graph
whose count variable is spread over many neurons."""

import torch

from assay.circuits.compile import PROGRAMS, compile_program
from assay.circuits.compile.features import exact_bases, variable_groups
from assay.circuits.graph import (
    GraphConfig,
    aggregate,
    attribute,
    grouped_influential_recall,
    influential_edge_recall,
    prune,
)
from tests.test_circuits_graph import masks, small_graph


def test_aggregate_sums_signed_edges_by_hand():
    a = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [3.0, -1.0, 0.0]], dtype=torch.float64)
    out = aggregate(a, torch.tensor([0, 1, 1]))
    # group 1 = nodes {1, 2}: edges 1←0 (2) and 2←0 (3) sum to 5; the inner edge 2←1 (−1) is dropped.
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0], [5.0, 0.0]], dtype=torch.float64))


def test_singleton_groups_give_the_ungrouped_recall():
    a, w = small_graph()
    always, feats = masks(range(9, 12)), masks(range(5))
    pr = prune(a, w, always, features=feats)
    raw = influential_edge_recall(a, w, pr.edge_mask)
    # by hand: all 10 edges carry ≥ 1% (11←· 1/4, 3←· 1/12, 1←· 1/6, 0←9 1/12); pruning keeps 8 (spec §3.5)
    assert abs(raw - 0.8) < 1e-6
    order = torch.tensor([5, 0, 7, 1, 2, 3, 4, 6, 8, 9, 11, 10])  # a permutation: one node per group
    assert grouped_influential_recall(a, w, always, order, features=feats) == raw


def test_histogram_count_neurons_form_one_node_and_the_aggregated_clause_holds():
    compiled = compile_program(PROGRAMS["histogram"]())
    model = compiled.model.double()
    bases = exact_bases(compiled)
    graph = attribute(model, torch.tensor([1, 5]), bases, GraphConfig(batch_size=64))
    ids, keys = variable_groups(graph, bases)
    f, e, t, lo = graph.slices()
    count_at_1 = [k for k in range(graph.n_features) if keys[ids[k]][:2] == ("count", 1)]
    assert len(count_at_1) > 1  # the discretising MLP writes count through several active neurons
    assert keys[ids[t.start + 1]] == ("embed", 1, -1)
    n_groups = len(keys)
    grouped = aggregate(graph.adjacency, ids, n_groups)
    torch.testing.assert_close(grouped[ids[lo.start]].sum(), graph.adjacency[lo.start].sum())  # rows conserved
    always = torch.zeros(graph.adjacency.shape[0], dtype=torch.bool)
    always[t.start:] = True
    feats = torch.zeros_like(always)
    feats[f] = True
    w = graph.logit_weights()
    raw = influential_edge_recall(graph.adjacency, w, prune(graph.adjacency, w, always, features=feats).edge_mask)
    # measured: circuit-tracer's node share drops the count neuron carrying 47% of the logit's flow (raw 0.6);
    # with the count neurons as one node, every edge carrying ≥ 1% of the influence is kept.
    assert raw < 0.9
    assert grouped_influential_recall(graph.adjacency, w, always, ids, features=feats) == 1.0
