"""Attribution graphs: direct effects between features, errors, token embeddings and logits.

Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language Models"; the
node order and edge definition are circuit-tracer's (Hanna, Piotrowski, Lindsey, Ameisen 2025):
nodes are the active features (basis, position, index) | error nodes (basis-major, one per basis and
position) | token embeddings (one per position) | logit targets. In the local replacement model
(:class:`~assay.circuits.graph.replacement.LocalReplacement`, frozen attention patterns) every
target is linear in the sources, and the edge

    A[t, s] = value_s · ∂target_t/∂value_s

is the source's direct effect on the target: a feature's activation times the gradient of the
target with respect to it, an error or embedding vector dotted with the gradient at its position.
A feature target is its pre-activation; a logit target is ``final · (W_U[v] − mean_v' W_U[v'])`` at
the last position (the logit minus the mean logit). Rows come from batched backward passes: the
linearised model runs once on ``batch_size`` copies of the prompt and its autograd graph is kept;
each batch of rows is then one backward pass through it, copy b seeded by target b (circuit-tracer's
scheme: no forward pass per batch, and a target at layer ℓ only back-propagates through the layers
below it), so one backward yields ``batch_size`` rows and memory is bounded by ``batch_size``. What no source
explains (biases, position embeddings) is kept per row in ``constants``, so that
``Σ_s A[t, s] + constants[t] + unexplored[t] = values[t]`` holds exactly.

Logit rows come first. With ``max_feature_nodes`` below the number of active features, features are
visited most influential first (influence estimated from the rows gathered so far, re-ranked every
``update_interval`` batches, as circuit-tracer); the unvisited ones lose their columns and their summed
effect on each row is kept in ``unexplored``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from assay.circuits.graph.basis import FeatureBasis, cross_writes
from assay.circuits.graph.influence import influence, normalize_matrix
from assay.circuits.graph.replacement import LocalReplacement
from assay.config import ConfigError, check_int_fields

__all__ = ["GraphConfig", "Graph", "attribute", "select_logits"]


@dataclass(frozen=True, kw_only=True)
class GraphConfig:
    """How an attribution graph is computed (circuit-tracer's API defaults, smaller batches for CPU)."""

    batch_size: int = 64
    """Rows (targets) per backward pass: the memory knob (activations of batch_size copies of the prompt)."""
    max_n_logits: int = 10
    """At most this many logit targets."""
    desired_logit_prob: float = 0.95
    """Logit targets: top tokens until their probability reaches this."""
    max_feature_nodes: int | None = None
    """Visit (compute rows for) at most this many active features, the most influential first; None: all."""
    update_interval: int = 4
    """With ``max_feature_nodes``: re-rank the unvisited features by influence every this many batches."""

    def __post_init__(self) -> None:
        check_int_fields(self)
        for name in ("batch_size", "max_n_logits", "update_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"GraphConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_feature_nodes is not None and self.max_feature_nodes < 0:
            raise ConfigError(f"GraphConfig.max_feature_nodes must be >= 0 or None, got {self.max_feature_nodes}")
        if not 0.0 < self.desired_logit_prob <= 1.0:
            raise ConfigError(f"GraphConfig.desired_logit_prob must lie in (0, 1], got {self.desired_logit_prob}")


@dataclass(frozen=True, kw_only=True, eq=False)
class Graph:
    """An attribution graph of one prompt (rows of ``adjacency`` are targets, columns sources)."""

    tokens: torch.Tensor
    """The prompt, [T]."""
    basis_names: tuple[str, ...]
    """The bases, in error-node order."""
    features: torch.Tensor
    """Active features as (basis index, position, feature index), [n_features, 3]."""
    activations: torch.Tensor
    """Their activations, [n_features]."""
    logit_tokens: torch.Tensor
    """Token id of each logit node, [n_logits]."""
    logit_probs: torch.Tensor
    """Their probabilities at the last position, [n_logits]."""
    adjacency: torch.Tensor
    """Direct effects, [N, N], N = n_features + n_bases·T + T + n_logits."""
    values: torch.Tensor
    """Each row's target value (feature pre-activation, demeaned logit; 0 for source-only rows), [N]."""
    constants: torch.Tensor
    """Each row's value when every source is zero (biases, position embeddings), [N]."""
    unexplored: torch.Tensor
    """Each row's summed direct effect of active features that were not visited (``max_feature_nodes``) and
    whose columns were dropped, [N]; 0 when every feature is visited."""

    @property
    def n_features(self) -> int:
        """Number of feature nodes."""
        return self.features.shape[0]

    @property
    def n_errors(self) -> int:
        """Number of error nodes (bases × positions)."""
        return len(self.basis_names) * self.tokens.shape[0]

    @property
    def n_tokens(self) -> int:
        """Number of token (embedding) nodes."""
        return self.tokens.shape[0]

    @property
    def n_logits(self) -> int:
        """Number of logit nodes."""
        return self.logit_tokens.shape[0]

    def slices(self) -> tuple[slice, slice, slice, slice]:
        """Index ranges of the feature, error, token and logit nodes."""
        f, e, t = self.n_features, self.n_errors, self.n_tokens
        return slice(0, f), slice(f, f + e), slice(f + e, f + e + t), slice(f + e + t, f + e + t + self.n_logits)

    def logit_weights(self) -> torch.Tensor:
        """Probabilities on the logit nodes, 0 elsewhere, [N] (the influence seed)."""
        w = torch.zeros(self.adjacency.shape[0], dtype=self.adjacency.dtype)
        w[self.slices()[3]] = self.logit_probs.to(w.dtype)
        return w


def select_logits(logits: torch.Tensor, *, max_n_logits: int = 10, desired_logit_prob: float = 0.95) -> torch.Tensor:
    """Top tokens of ``logits`` [vocab] until their probability reaches ``desired_logit_prob``, at most
    ``max_n_logits`` (circuit-tracer's defaults)."""
    probs = logits.softmax(-1)
    top = probs.sort(descending=True)
    k = int((top.values.cumsum(0) < desired_logit_prob).sum().item()) + 1
    return top.indices[: min(k, max_n_logits, probs.shape[0])]


def attribute(
    model: nn.Module, tokens: torch.Tensor, bases: Sequence[FeatureBasis], config: GraphConfig | None = None, *,
    logit_tokens: Sequence[int] | None = None, **replacement_kw,
) -> Graph:
    """The attribution graph of ``tokens`` [T] over ``bases`` (see the module docstring).

    ``logit_tokens`` picks the logit targets (default: :func:`select_logits` at the last position with
    the config's limits). Further keywords go to :class:`~assay.circuits.graph.replacement.LocalReplacement`.
    """
    cfg = config or GraphConfig()
    rep = LocalReplacement(model, tokens, bases, **replacement_kw)
    logits = rep.logits[-1]
    chosen = (torch.as_tensor(list(logit_tokens), dtype=torch.long) if logit_tokens is not None
              else select_logits(logits, max_n_logits=cfg.max_n_logits, desired_logit_prob=cfg.desired_logit_prob))
    if chosen.numel() == 0 or not bool(((chosen >= 0) & (chosen < rep.unembed.shape[0])).all()):
        raise ValueError(f"logit_tokens must be 1+ token ids in [0, {rep.unembed.shape[0]}), got {chosen.tolist()}")
    rows = _Rows(rep, chosen, cfg.batch_size)
    probs = logits.softmax(-1)[chosen]
    n_feat, n_logit0 = rows.n_feat, rows.n - len(chosen)
    weights = torch.zeros(rows.n, dtype=rows.adjacency.dtype)
    weights[n_logit0:] = probs.to(weights.dtype)
    for start in range(0, len(chosen), cfg.batch_size):  # logit rows first
        rows.compute([("logit", int(v)) for v in chosen[start:start + cfg.batch_size]],
                     list(range(n_logit0 + start, n_logit0 + min(start + cfg.batch_size, len(chosen)))))
    limit = n_feat if cfg.max_feature_nodes is None else min(n_feat, cfg.max_feature_nodes)
    remaining, visited = list(range(n_feat)), []
    for batch in itertools.count():
        if len(visited) == limit:
            break
        if limit < n_feat and batch % cfg.update_interval == 0:  # re-rank by influence on the rows so far
            est = influence(normalize_matrix(rows.adjacency), weights)
            remaining.sort(key=lambda k: -float(est[k]))
        k = min(cfg.batch_size, limit - len(visited))
        take, remaining = remaining[:k], remaining[k:]
        rows.compute([("feature", tuple(map(int, rows.feats[k]))) for k in take], take)
        visited += take
    keep = torch.tensor(sorted(visited) + list(range(n_feat, rows.n)), dtype=torch.long)
    dropped = sorted(set(range(n_feat)) - set(visited))
    unexplored = rows.adjacency[:, dropped].sum(1)[keep]
    # every feature visited: the adjacency as built, else one gather (no [N, N] copy beside it)
    adjacency = rows.adjacency[keep[:, None], keep] if dropped else rows.adjacency
    feats = rows.feats[sorted(visited)]
    activations = torch.stack([rep.acts[j][p, i] for j, p, i in feats.tolist()]) if len(feats) else torch.zeros(0)
    return Graph(tokens=tokens, basis_names=tuple(b.name for b in rep.bases), features=feats, activations=activations,
                 logit_tokens=chosen, logit_probs=probs, adjacency=adjacency,
                 values=rows.values[keep], constants=rows.constants[keep], unexplored=unexplored)


class _Rows:
    """The adjacency of every active feature under construction, filled a batch of rows at a time."""

    def __init__(self, rep: LocalReplacement, chosen: torch.Tensor, batch_size: int) -> None:
        self.rep = rep
        self.outputs: tuple | None = None  # the batched run, made at the first batch (see _forward)
        self.t_len = rep.tokens.shape[0]
        self.mean_u = rep.unembed.mean(0)  # the mean unembedding row, [d] (rows demeaned per target, not copied)
        self.active = [a.nonzero() for a in rep.acts]  # per basis: (position, feature index) of active features
        self.active_pos_idx = [(a[:, 0], a[:, 1]) for a in self.active]
        self.active_values = [a[p, i] for a, (p, i) in zip(rep.acts, self.active_pos_idx, strict=True)]  # [n_active_j]
        self.feats = torch.cat([torch.cat([torch.full((len(i), 1), j), i], 1) for j, i in enumerate(self.active)]) \
            if self.active else torch.zeros(0, 3, dtype=torch.long)
        self.first = [0, *torch.tensor([len(i) for i in self.active]).cumsum(0).tolist()]  # basis j: first[j]:first[j+1]
        self.n_feat, self.n_err = self.feats.shape[0], len(rep.bases) * self.t_len
        self.n = self.n_feat + self.n_err + self.t_len + len(chosen)
        self.batch_size = max(1, min(batch_size, max(len(chosen), self.n_feat)))  # copies: no more than any batch needs
        dtype = rep.emb.dtype
        self.adjacency = torch.zeros(self.n, self.n, dtype=dtype)
        self.values = torch.zeros(self.n, dtype=dtype)
        self.constants = torch.zeros(self.n, dtype=dtype)

    def _targets(self, chunk, inputs, final) -> torch.Tensor:
        """Target b of ``chunk`` read from copy b of a batched run (copy 0 when the run has one copy): a feature's
        pre-activation from what its basis reads, a logit from the final residual."""
        out = []
        for b, (kind, what) in enumerate(chunk):
            c = b if final.shape[0] > 1 else 0
            if kind == "logit":
                out.append(final[c, -1] @ (self.rep.unembed[what] - self.mean_u))
            else:
                j, p, i = what
                basis = self.rep.bases[j]
                out.append(inputs[j][c, p] @ basis.W_enc[:, i] + basis.b_enc[i])
        return torch.stack(out)

    def _outputs(self, values, errors) -> list[torch.Tensor]:
        """Each basis's output from the active features' values [B, n_active_j] (decoded only for those; its own and
        any earlier basis's cross-layer writes) + its error [B, T, d_out]."""
        def decoded(src: int, w: torch.Tensor) -> torch.Tensor:
            # one small matmul per position: autograd then keeps only w's active rows, not a [B, n_active, d] product
            (pos, idx), v = self.active_pos_idx[src], values[src]
            return torch.stack([v[:, pos == t] @ w[idx[pos == t]] for t in range(self.t_len)], 1)

        out = []
        for j, (basis, e, writers) in enumerate(zip(self.rep.bases, errors, cross_writes(self.rep.bases), strict=True)):
            total = decoded(j, basis.W_dec) + basis.b_dec + e
            for src, w in writers:  # a cross-layer transcoder's earlier layers writing this output site
                total = total + decoded(src, w)
            out.append(total)
        return out

    def _forward(self) -> None:
        """The linearised model on ``batch_size`` copies of the prompt with every source a leaf (each active
        feature's value, each error, the embeddings); its graph is kept for all batches. Also the run with every
        source at zero, whose targets are the constants."""
        rep, bsz = self.rep, self.batch_size
        emb = rep.emb.expand(bsz, -1, -1).clone().requires_grad_()
        values = [v.expand(bsz, -1).clone().requires_grad_() for v in self.active_values]
        errs = [e.expand(bsz, -1, -1).clone().requires_grad_() for e in rep.errors]
        self.sources = [emb, *values, *errs]
        self.outputs = rep.run_outputs(emb, self._outputs(values, errs))
        with torch.no_grad():
            self.zero = rep.run_outputs(torch.zeros_like(emb[:1]), self._outputs(
                [torch.zeros_like(v[:1]) for v in values], [torch.zeros_like(e[:1]) for e in errs]))

    def compute(self, chunk: list, r: list[int]) -> None:
        """Fill rows ``r`` with the direct effects on the targets ``chunk`` (one backward pass)."""
        if len(chunk) > self.batch_size:
            raise ValueError(f"{len(chunk)} targets in one batch of {self.batch_size} copies")
        if self.outputs is None:
            self._forward()
        rep, n, t_len, n_feat, n_err = self.rep, len(chunk), self.t_len, self.n_feat, self.n_err
        vals = self._targets(chunk, *self.outputs)
        grads = torch.autograd.grad(vals.sum(), self.sources, allow_unused=True, retain_graph=True)
        n_b = len(rep.bases)
        g_emb, g_vals, g_errs = grads[0], grads[1:1 + n_b], grads[1 + n_b:]
        if g_emb is not None:
            self.adjacency[r, n_feat + n_err:n_feat + n_err + t_len] = (g_emb[:n] * rep.emb).sum(-1)
        for j, (g, e) in enumerate(zip(g_errs, rep.errors, strict=True)):
            if g is not None:
                self.adjacency[r, n_feat + j * t_len:n_feat + (j + 1) * t_len] = (g[:n] * e).sum(-1)
        for j, (g, v) in enumerate(zip(g_vals, self.active_values, strict=True)):
            if g is not None and v.numel():
                self.adjacency[r, self.first[j]:self.first[j + 1]] = g[:n] * v
        self.values[r] = vals.detach()
        with torch.no_grad():  # the part of each target no source explains
            self.constants[r] = self._targets(chunk, *self.zero)
