"""Writing graphs out: circuit-tracer's graph JSON (for its viewer) and assay artifacts (exact round trip).

The schema is circuit-tracer's frontend format (Hanna, Piotrowski, Lindsey, Ameisen 2025,
``circuit_tracer/frontend/graph_models.py`` at 4bb8c0e; graphs as in Ameisen et al. 2025, "Circuit
Tracing: Revealing Computational Graphs in Language Models"): ``metadata`` (slug, scan,
transcoder_list, prompt_tokens, prompt, node_threshold, schema_version), ``qParams``, ``nodes`` and
``links`` (source, target, weight = A[target, source]) of the pruned graph. Node ids: feature
``"{layer}_{index}_{pos}"``, error ``"0_{layer}_{pos}"``, token ``"E_{token id}_{pos}"``, logit
``"{n_layers + 1}_{token id}_{pos}"``. assay's "layer" of a feature or error node is the index of
its basis in ``Graph.basis_names`` (listed in ``transcoder_list``), so an attention and an MLP basis
of one block do not collide. ``influence`` is circuit-tracer's cumulative share (the fraction of
total node influence held by nodes at least as influential; logits, whose influence is 0, get 1),
not the raw influence.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from assay.artifact import ArtifactError, atomic_write_text, load_artifact, save_artifact
from assay.circuits.graph.attribute import Graph
from assay.circuits.graph.influence import prune

__all__ = ["SCHEMA_VERSION", "GRAPH_KIND", "graph_json", "write_graph_json", "read_graph_json", "save_graph",
           "load_graph"]

GRAPH_KIND = "circuits.graph"
"""Artifact kind of a saved :class:`~assay.circuits.graph.attribute.Graph`."""

_TENSORS = ("tokens", "features", "activations", "logit_tokens", "logit_probs", "adjacency", "values", "constants",
            "unexplored")

SCHEMA_VERSION = 1
"""The circuit-tracer graph-JSON schema version written and read."""

_NODE_KEYS = ("node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
              "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation")


def _node(node_id: str, feature: int, layer: str, pos: int, kind: str, js: str, *, influence: float | None,
          activation: float | None = None, token_prob: float = 0.0, target: bool = False, clerp: str = "") -> dict:
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos, "feature_type": kind,
            "token_prob": token_prob, "is_target_logit": target, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": js,
            "clerp": clerp, "influence": influence, "activation": activation}


def _cumulative_share(scores: torch.Tensor) -> torch.Tensor:
    order = scores.sort(descending=True)
    cum = order.values.cumsum(0) / scores.sum().clamp(min=1e-30)
    out = torch.empty_like(scores)
    out[order.indices] = cum
    return out


def graph_json(
    graph: Graph, *, slug: str, prompt_tokens: Sequence[str], labels: Sequence[Sequence[str]] | None = None,
    scan: str = "assay", node_threshold: float = 0.8, edge_threshold: float = 0.98,
    logit_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The pruned graph as a circuit-tracer graph-JSON document. ``prompt_tokens`` are the decoded
    tokens; ``labels`` (optional, per basis, per feature) become the features' ``clerp`` text; ``logit_names``
    (optional, the decoded logit tokens) label the logit nodes (default: their token ids)."""
    if len(prompt_tokens) != graph.n_tokens:
        raise ValueError(f"{len(prompt_tokens)} prompt_tokens for a graph of {graph.n_tokens} positions")
    if logit_names is not None and len(logit_names) != graph.n_logits:
        raise ValueError(f"{len(logit_names)} logit_names for a graph of {graph.n_logits} logit nodes")
    f_sl, e_sl, t_sl, l_sl = graph.slices()
    n = graph.adjacency.shape[0]
    w = graph.logit_weights()
    always = torch.zeros(n, dtype=torch.bool)
    always[t_sl.start:] = True
    is_feature = torch.zeros(n, dtype=torch.bool)
    is_feature[f_sl] = True
    kept = prune(graph.adjacency, w, always, node_threshold=node_threshold, edge_threshold=edge_threshold,
                 features=is_feature)
    share = _cumulative_share(kept.node_influence)
    n_layers, t_len = len(graph.basis_names), graph.n_tokens
    ids, nodes = {}, []
    for k in kept.node_mask.nonzero()[:, 0].tolist():
        inf = float(share[k])
        if k < f_sl.stop:
            j, p, i = graph.features[k].tolist()
            clerp = labels[j][i] if labels is not None else ""
            node = _node(f"{j}_{i}_{p}", (j + i) * (j + i + 1) // 2 + i, str(j), p, "cross layer transcoder",
                         f"{j}_{i}-0", influence=inf, activation=float(graph.activations[k]), clerp=clerp)
        elif k < e_sl.stop:
            j, p = divmod(k - e_sl.start, t_len)
            node = _node(f"0_{j}_{p}", -1, str(j), p, "mlp reconstruction error", f"{j}_{p}-0", influence=inf)
        elif k < t_sl.stop:
            p = k - t_sl.start
            tok = int(graph.tokens[p])
            node = _node(f"E_{tok}_{p}", p, "E", p, "embedding", f"E_{tok}-{p}", influence=inf)
        else:
            r = k - l_sl.start
            tok, prob = int(graph.logit_tokens[r]), float(graph.logit_probs[r])
            node = _node(f"{n_layers + 1}_{tok}_{t_len - 1}", tok, str(n_layers + 1), t_len - 1, "logit",
                         f"L_{tok}-{t_len - 1}", influence=inf, token_prob=prob, target=r == 0,
                         clerp=f'Output "{logit_names[r] if logit_names is not None else tok}" (p={prob:.3f})')
        ids[k] = node["node_id"]
        nodes.append(node)
    links = [{"source": ids[s], "target": ids[t], "weight": float(graph.adjacency[t, s])}
             for t, s in kept.edge_mask.nonzero().tolist() if s in ids and t in ids]
    metadata = {"slug": slug, "scan": scan, "transcoder_list": list(graph.basis_names),
                "prompt_tokens": list(prompt_tokens), "prompt": "".join(prompt_tokens),
                "node_threshold": node_threshold, "schema_version": SCHEMA_VERSION}
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links}


def write_graph_json(path: str | Path, graph: Graph, **kw: Any) -> Path:
    """Write :func:`graph_json` to ``path`` (atomically); keywords as for :func:`graph_json`."""
    path = Path(path)
    atomic_write_text(path, json.dumps(graph_json(graph, **kw), indent=1))
    return path


def read_graph_json(path: str | Path) -> dict[str, Any]:
    """Read and check a graph JSON (schema version, required fields, links between known nodes)."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    version = doc.get("metadata", {}).get("schema_version") if isinstance(doc, dict) else None
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path} is graph JSON schema_version {version!r}; assay reads version {SCHEMA_VERSION} "
                         "(circuit-tracer's frontend format). Re-export the graph with this version of assay.")
    for key in ("metadata", "qParams", "nodes", "links"):
        if key not in doc:
            raise ValueError(f"{path} lacks the field {key!r}; it is not a circuit-tracer graph JSON")
    known = set()
    for node in doc["nodes"]:
        missing = [k for k in _NODE_KEYS if k not in node]
        if missing:
            raise ValueError(f"{path}: node {node.get('node_id')!r} lacks {missing}")
        known.add(node["node_id"])
    for link in doc["links"]:
        if link.get("source") not in known or link.get("target") not in known or "weight" not in link:
            raise ValueError(f"{path}: link {link} does not join two listed nodes with a weight")
    return doc


def save_graph(path: str | Path, graph: Graph) -> Path:
    """Save a graph as an artifact folder (every tensor, unpruned)."""
    return save_artifact(path, kind=GRAPH_KIND, config={"basis_names": list(graph.basis_names)},
                         tensors={k: getattr(graph, k) for k in _TENSORS})


def load_graph(path: str | Path) -> Graph:
    """Load what :func:`save_graph` wrote."""
    art = load_artifact(path, kind=GRAPH_KIND)
    weights = art.tensors.get("weights", {})
    missing = [k for k in _TENSORS if k not in weights]
    if missing:
        raise ArtifactError(f"{path}: graph tensors {missing} are missing; re-save it with save_graph")
    return Graph(basis_names=tuple(art.config.get("basis_names", ())), **{k: weights[k] for k in _TENSORS})
