"""Graph navigation: emit a path from a start node to a goal node on a random layered DAG.

Khona, Okawa, Hula, Ramesh, Nishi, Dick, Lubana, Tanaka 2024, "Towards an Understanding of Stepwise
Inference in Transformers: A Synthetic Graph Navigation Model" (ICML 2024, arXiv 2402.07757). No
code was released; sizes are this module's choice (spec §5). Graph: ``n_layers`` layers of ``width``
nodes, edge u → v only from layer ℓ to ℓ + 1, each present with probability ``p_edge`` (every
non-final node keeps at least one out-edge). A document is ::

    <bos> g s <sep> s v_1 … g <eos>

for a pair (s, g) with g reachable from s, and a path drawn uniformly among all s → g paths by
counting paths: P(next = u | v) = N(u → g) / N(v → g), N(v → g) = Σ_{u ∈ succ(v)} N(u → g).

Ground truth: ``world.adjacency`` [N, N] bool, ``world.n_paths`` [N, N] (path counts; N(v → v) = 1),
``world.layer`` [N]; per example ``goal``, ``start``, ``hops``; per token ``node`` (−1 for non-node
tokens), ``layer``, and on the path part ``dist_to_goal`` (shortest-path length), ``n_paths_to_goal``,
``on_valid_path`` (1 if the edge from the previous path node exists and g is still reachable) and
``valid_next`` (bool [n, T, V]: successors from which g is reachable, or ``<eos>`` at g).

Task metrics: ``valid_step_acc`` (argmax next token is a valid step, over the path part),
``valid_mass`` and ``path_acc`` (every step of the example valid). Acceptance: ``valid_step_acc``
≥ 0.95 (this module's choice; the issue gives no threshold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from assay.config import ConfigError
from assay.worlds.base import Batch
from assay.worlds.vocab import (
    BOS,
    EOS,
    IGNORE,
    SEP,
    Doc,
    DocWorld,
    argmax_in_set,
    check_logits,
    make_vocab,
    valid_mass,
)

__all__ = ["GraphConfig", "GraphWorld", "layered_dag", "count_paths"]


@dataclass(frozen=True, kw_only=True)
class GraphConfig:
    """A random layered DAG and path-finding prompts on it."""

    n_layers: int = 6
    """Number of layers L."""
    width: int = 8
    """Nodes per layer w (N = L·w nodes)."""
    p_edge: float = 0.3
    """Probability of each edge between consecutive layers."""
    min_hops: int = 1
    """Shortest path length (in edges) of sampled start–goal pairs."""
    max_hops: int | None = None
    """Longest path length of sampled pairs (Δ; None = n_layers − 1); test on longer ones for stitching."""
    seed: int = 0
    """Seed of the static structure (the graph)."""

    def __post_init__(self) -> None:
        if self.n_layers < 2 or self.width < 1:
            raise ConfigError(f"need n_layers >= 2 and width >= 1, got {self.n_layers}, {self.width}")
        if not 0.0 <= self.p_edge <= 1.0:
            raise ConfigError(f"p_edge must be in [0, 1], got {self.p_edge}")
        top = self.n_layers - 1 if self.max_hops is None else self.max_hops
        if not 1 <= self.min_hops <= top <= self.n_layers - 1:
            raise ConfigError(
                f"need 1 <= min_hops <= max_hops <= n_layers - 1 = {self.n_layers - 1}, "
                f"got min_hops={self.min_hops}, max_hops={self.max_hops}"
            )


def layered_dag(n_layers: int, width: int, p_edge: float, rng: np.random.Generator) -> np.ndarray:
    """Adjacency [N, N] (bool) of a layered DAG; node ℓ·w + i is node i of layer ℓ."""
    N = n_layers * width
    adj = np.zeros((N, N), dtype=bool)
    for layer in range(n_layers - 1):
        block = rng.random((width, width)) < p_edge
        lonely = ~block.any(1)
        block[lonely, rng.integers(width, size=int(lonely.sum()))] = True
        adj[layer * width : (layer + 1) * width, (layer + 1) * width : (layer + 2) * width] = block
    return adj


def count_paths(adj: np.ndarray) -> np.ndarray:
    """Number of directed paths u → v for every pair ([N, N] int64; 1 on the diagonal) of a DAG."""
    N = adj.shape[0]
    total = np.eye(N, dtype=np.int64)
    power = np.eye(N, dtype=np.int64)
    A = adj.astype(np.int64)
    for _ in range(N):
        power = power @ A
        if not power.any():
            break
        total += power
    return total


class GraphWorld(DocWorld):
    """Path-finding documents on a fixed random DAG (the graph is the static ground truth)."""

    label_kinds: ClassVar[dict[str, str]] = {
        "node": "int", "layer": "int", "dist_to_goal": "int", "n_paths_to_goal": "int", "on_valid_path": "int",
        "valid_next": "set",
    }
    acceptance: tuple[str, float] = ("valid_step_acc", 0.95)
    """Metric and threshold the reference model must reach (higher is better)."""

    def __init__(self, config: GraphConfig | None = None) -> None:
        self.config = cfg = config or GraphConfig()
        adj = layered_dag(cfg.n_layers, cfg.width, cfg.p_edge, np.random.default_rng(cfg.seed))
        self.adjacency = torch.from_numpy(adj)
        """Edges u → v, ``[N, N]`` bool."""
        self._paths = count_paths(adj)
        self.n_paths = torch.from_numpy(self._paths)
        """Number of paths u → v, ``[N, N]`` (1 on the diagonal, 0 if unreachable)."""
        self.layer = torch.arange(cfg.n_layers).repeat_interleave(cfg.width)
        """Layer of each node ``[N]``."""
        self._succ = [np.flatnonzero(adj[v]) for v in range(adj.shape[0])]
        hops = self.layer[None, :] - self.layer[:, None]
        top = cfg.n_layers - 1 if cfg.max_hops is None else cfg.max_hops
        ok = (self.n_paths > 0) & (hops >= cfg.min_hops) & (hops <= top)
        self.pairs = torch.nonzero(ok)
        """Sampled (start, goal) pairs ``[n_pairs, 2]``."""
        if len(self.pairs) == 0:
            raise ConfigError(f"the graph has no start–goal pairs with {cfg.min_hops}..{top} hops; raise p_edge")
        self.vocab = make_vocab(f"n{v}" for v in range(adj.shape[0]))

    def reference_model(self) -> dict[str, Any]:
        """Tiny-transformer settings (spec §5 CPU default)."""
        return {"n_layers": 2, "n_heads": 2, "d_model": 64, "context": self.config.n_layers + 4, "steps": 3000,
                "batch_size": 64, "lr": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.95), "pack": False}

    def _doc(self, rng: np.random.Generator) -> Doc:
        s, g = (int(v) for v in self.pairs[rng.integers(len(self.pairs))])
        P = self._paths
        path = [s]
        while path[-1] != g:
            succ = [u for u in self._succ[path[-1]] if P[u, g] > 0]
            w = np.array([P[u, g] for u in succ], dtype=np.float64)
            path.append(int(succ[rng.choice(len(succ), p=w / w.sum())]))
        tokens = [BOS, 4 + g, 4 + s, SEP] + [4 + v for v in path] + [EOS]
        n_pre = 4
        lab: dict[str, list[Any]] = {k: [-1] * len(tokens) for k in self.label_kinds if k != "valid_next"}
        valid: list[tuple[int, ...]] = [()] * len(tokens)
        valid[n_pre - 1] = (4 + s,)
        for i, v in enumerate([g, s], start=1):
            lab["node"][i], lab["layer"][i] = v, int(self.layer[v])
        for j, v in enumerate(path):
            t = n_pre + j
            lab["node"][t], lab["layer"][t] = v, int(self.layer[v])
            lab["dist_to_goal"][t] = int(self.layer[g] - self.layer[v])  # layered: every path has this length
            lab["n_paths_to_goal"][t] = int(P[v, g])
            edge = j == 0 or bool(self.adjacency[path[j - 1], v])
            lab["on_valid_path"][t] = int(edge and P[v, g] > 0)
            valid[t] = (EOS,) if v == g else tuple(4 + int(u) for u in self._succ[v] if P[u, g] > 0)
        lab["valid_next"] = valid
        loss = [t >= n_pre - 1 for t in range(len(tokens))]
        return Doc(tokens, lab, loss, {"goal": g, "start": s, "hops": len(path) - 1})

    def evaluate(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Validity of the argmax next step over the path part (module docstring)."""
        check_logits(logits, batch)
        scored = batch.targets != IGNORE
        valid = batch.labels["valid_next"]
        hit = valid.gather(-1, logits.argmax(-1, keepdim=True)).squeeze(-1) | ~scored
        return {"valid_step_acc": argmax_in_set(logits, valid, scored),
                "valid_mass": valid_mass(logits, valid, scored),
                "path_acc": float(hit.all(1).double().mean()) if len(batch) else float("nan")}
