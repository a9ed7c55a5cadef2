"""In-context graph tracing: random walks on a small graph whose nodes get fresh random tokens per sequence.

Park, Lee, Lubana, Yang, Okawa, Nishi, Wattenberg, Tanaka 2025, "ICLR: In-Context Learning of
Representations" (ICLR 2025, arXiv 2501.00070); the world is its graph-tracing task in
assay's form. A graph (``grid`` rows × cols with 4-neighbour moves, or a ``ring`` of
n nodes); each sequence draws an injective map node → token from V concept tokens (a fixed map would
make it an in-weights task) and a walk of L steps from a uniform start node, each step to a uniform
neighbour. The next token is predictable only from context: the valid next tokens are the current
node's neighbours' tokens, known once they have appeared next to it.

Rows are ``<bos> w₁ … w_L``; inputs are the first L tokens, targets w₁ … w_L (the first, unpredictable
one ignored). Per-token labels [n, L]: ``node`` (node of the input token, −1 at ``<bos>``), ``degree``,
``valid_next`` (bool [n, L, V_total]: tokens of the current node's neighbours). Per sequence:
``token_of_node`` [n, N] (token ids). Static: ``world.adjacency`` [N, N], ``world.coords`` [N, 2] (grid
cell or point on the unit circle).

The phenomenon's measure: :meth:`GraphTraceWorld.class_means` gives each node's mean representation in
a window of positions, and :func:`assay.evaluate.graph_energy.normalized_dirichlet_energy` of those
means should fall (towards λ₂ of the graph) as context grows; random vectors give ≈ tr L/(N − 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from assay.config import ConfigError, check_choice
from assay.worlds.base import Batch
from assay.worlds.vocab import BOS, IGNORE, PAD, check_logits, make_vocab, valid_mass

__all__ = ["GraphTraceConfig", "GraphTraceWorld", "graph_adjacency"]


@dataclass(frozen=True, kw_only=True)
class GraphTraceConfig:
    """Random walks on a grid or ring with a fresh node → token map per sequence."""

    graph: Literal["grid", "ring"] = "grid"
    """The graph: a rows × cols grid (4-neighbour moves) or a ring."""
    rows: int = 4
    """Grid rows."""
    cols: int = 4
    """Grid columns."""
    ring_size: int = 10
    """Nodes of the ring."""
    n_tokens: int = 64
    """Concept tokens V the nodes are mapped to (V ≥ number of nodes; the spec uses V ≥ 4N)."""
    seq_len: int = 128
    """Walk length L (tokens after ``<bos>``)."""

    def __post_init__(self) -> None:
        check_choice("graph", self.graph, ("grid", "ring"))
        if self.graph == "grid" and (self.rows < 1 or self.cols < 1 or self.rows * self.cols < 2):
            raise ConfigError(f"a grid needs rows, cols >= 1 and at least 2 cells (else a walk cannot move), got "
                              f"{self.rows} × {self.cols}")
        if self.graph == "ring" and self.ring_size < 3:
            raise ConfigError(f"a ring needs ring_size >= 3, got {self.ring_size}")
        if self.n_tokens < self.n_nodes:
            raise ConfigError(f"n_tokens={self.n_tokens} < {self.n_nodes} nodes: the nodes cannot get distinct tokens; "
                              f"raise n_tokens (the spec uses >= 4 × nodes)")
        if self.seq_len < 2:
            raise ConfigError(f"seq_len must be >= 2, got {self.seq_len}")

    @property
    def n_nodes(self) -> int:
        """Number of graph nodes N."""
        return self.rows * self.cols if self.graph == "grid" else self.ring_size


def graph_adjacency(cfg: GraphTraceConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The graph's adjacency [N, N] (bool, symmetric) and node coordinates [N, 2] (float64)."""
    N = cfg.n_nodes
    A = torch.zeros(N, N, dtype=torch.bool)
    if cfg.graph == "grid":
        coords = torch.tensor([(r, c) for r in range(cfg.rows) for c in range(cfg.cols)], dtype=torch.float64)
        for i in range(N):
            r, c = divmod(i, cfg.cols)
            if c + 1 < cfg.cols:
                A[i, i + 1] = A[i + 1, i] = True
            if r + 1 < cfg.rows:
                A[i, i + cfg.cols] = A[i + cfg.cols, i] = True
    else:
        angle = torch.arange(N, dtype=torch.float64) * 2 * math.pi / N
        coords = torch.stack([angle.cos(), angle.sin()], 1)
        idx = torch.arange(N)
        A[idx, (idx + 1) % N] = A[(idx + 1) % N, idx] = True
    return A, coords


class GraphTraceWorld:
    """Random walks whose node tokens are re-drawn per sequence; the graph is the static ground truth."""

    pad_id: int = PAD
    bos_id: int = BOS

    def __init__(self, config: GraphTraceConfig | None = None) -> None:
        self.config = cfg = config or GraphTraceConfig()
        self.adjacency, self.coords = graph_adjacency(cfg)
        self.vocab = make_vocab(f"w{i}" for i in range(cfg.n_tokens))

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids ``[T]`` → token strings (padding dropped)."""
        return [self.vocab[i] for i in ids.tolist() if i != self.pad_id]

    def reference_model(self) -> dict[str, Any]:
        """Tiny-transformer settings (spec §2.2 CPU default: 2 layers, 4 heads, d = 64, batch 32, AdamW 1e-3)."""
        return {"n_layers": 2, "n_heads": 4, "d_model": 64, "context": self.config.seq_len, "steps": 10_000,
                "batch_size": 32, "lr": 1e-3, "weight_decay": 0.01}

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        """``n`` walks with their nodes, the per-sequence token map and the valid next tokens."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        cfg = self.config
        N, L = cfg.n_nodes, cfg.seq_len
        token_of_node = torch.rand(n, cfg.n_tokens, generator=generator).argsort(1)[:, :N] + 4
        nodes = torch.zeros(n, L, dtype=torch.long)
        if n:
            nodes[:, 0] = torch.randint(N, (n,), generator=generator)
            for t in range(1, L):
                nodes[:, t] = torch.multinomial(self.adjacency[nodes[:, t - 1]].double(), 1, generator=generator)[:, 0]
        walk = token_of_node.gather(1, nodes)
        inputs = torch.cat([torch.full((n, 1), BOS, dtype=torch.long), walk[:, :-1]], 1)
        targets = walk.clone()
        targets[:, 0] = IGNORE
        node = torch.cat([torch.full((n, 1), -1, dtype=torch.long), nodes[:, :-1]], 1)
        valid = torch.zeros(n, L, len(self.vocab), dtype=torch.bool)
        neigh = self.adjacency[node[:, 1:]]  # [n, L-1, N]
        valid[:, 1:].scatter_(2, token_of_node[:, None, :].expand(n, L - 1, N), neigh)
        degree = torch.where(node >= 0, self.adjacency.sum(1)[node.clamp_min(0)], -1)
        labels = {"node": node, "degree": degree, "valid_next": valid, "token_of_node": token_of_node}
        return Batch(inputs=inputs, targets=targets, labels=labels)

    def evaluate(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """``valid_mass``: softmax mass on the valid next tokens, over all scored positions and over the last half."""
        check_logits(logits, batch)
        valid = batch.labels["valid_next"]
        scored = batch.targets != IGNORE
        late = scored.clone()
        late[:, : self.config.seq_len // 2] = False
        return {"valid_mass": valid_mass(logits, valid, scored), "valid_mass_late": valid_mass(logits, valid, late)}

    def class_means(self, h: torch.Tensor, batch: Batch, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of representations ``h`` [n, L, d] per node over positions [start, stop) → means [n, N, d] and
        ``present`` [n, N] (the node occurs in the window; its mean is 0 where it does not)."""
        node = batch.labels["node"][:, start:stop]
        onehot = torch.nn.functional.one_hot(node.clamp_min(0), self.config.n_nodes).double() * (node >= 0)[..., None]
        counts = onehot.sum(1)  # [n, N]
        sums = onehot.transpose(1, 2) @ h[:, start:stop].double()  # [n, N, d]
        return sums / counts.clamp_min(1)[..., None], counts > 0
