"""Attribution graphs over feature bases (Ameisen et al. 2025, "Circuit Tracing: Revealing Computational
Graphs in Language Models"): the local replacement model, batched edge computation, influence
pruning and graph scores."""

from assay.circuits.graph.attribute import Graph, GraphConfig, attribute, select_logits
from assay.circuits.graph.basis import FeatureBasis, identity, jump_relu, relu
from assay.circuits.graph.export import (
    GRAPH_KIND,
    SCHEMA_VERSION,
    graph_json,
    load_graph,
    read_graph_json,
    save_graph,
    write_graph_json,
)
from assay.circuits.graph.influence import (
    GraphScores,
    Pruned,
    aggregate,
    graph_scores,
    grouped_influential_recall,
    influence,
    influence_through,
    influence_through_chain,
    influential_edge_recall,
    normalize_matrix,
    prune,
    share_threshold,
)
from assay.circuits.graph.interventions import ConstrainedEffects, constrained_effects
from assay.circuits.graph.replacement import LocalReplacement, transformer_norm_inputs
from assay.circuits.graph.subgraph import subgraph_values

__all__ = ["Graph", "GraphConfig", "attribute", "select_logits", "FeatureBasis", "identity", "relu", "jump_relu", "GraphScores", "Pruned",
           "graph_scores", "aggregate", "grouped_influential_recall", "influence", "influence_through", "influence_through_chain", "influential_edge_recall", "normalize_matrix", "prune", "share_threshold", "LocalReplacement", "transformer_norm_inputs", "SCHEMA_VERSION", "graph_json", "read_graph_json",
           "write_graph_json", "GRAPH_KIND", "save_graph", "load_graph", "ConstrainedEffects", "constrained_effects",
           "subgraph_values"]
