"""Peak memory of an attribution graph and its pruning, modelled on assay's implementation; the up-front budget check.

Graphs as in Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language Models". What
:func:`~assay.circuits.graph.attribute.attribute` and :func:`~assay.circuits.graph.influence.prune` hold at once, in
elements of the model's dtype (T tokens, B = rows per backward pass, n_b bases, one per MLP, and n_L layers of width d
with H attention heads, V the vocabulary, F active features, N = F + n_b·T + T + n_logits nodes):

* the clean run (:class:`~assay.circuits.graph.replacement.LocalReplacement`): ``2·T·V`` (the logits of every
  position, twice), ``6·n_L·T·d`` (captured sites and errors), ``2·T·Σ n_features`` (codes), ``n_L·H·T²``
  (attention patterns);
* the batched linearised run, kept for every backward pass: ``(PER_BASIS·n_b + PER_PASS)·B·T·d`` (each basis's
  error leaf, output and gradient in one backward pass; a layer's transients), ``n_L·B·H·T²`` (each frozen
  pattern, broadcast to the batch for its backward), ``F·d`` (the decoder rows of the active features);
* the dense adjacency ``N²``, and while pruning (graph JSON) ``PRUNE·N²`` (adjacency, normalized, scores, masks);
* with linearised attention (``LocalReplacement(attention="linearised")``) ``LINEARISED_PATTERNS·n_L·B·H·T²`` more
  (the scores' change and the softmax Jacobian's products, kept for the backward), and with linearised norms
  ``LINEARISED_PER_NORM·(2·n_L + 1)·B·T·d`` more.

``live`` is the larger of the attribution's peak (clean + batched + N²) and pruning's: the tensors alive at once.
The process grows by more than that (the C allocator keeps freed blocks below 32 MiB mapped), so ``resident``
scales ``live`` by ``HEAP``. ``PER_PASS``, ``PRUNE`` and ``HEAP`` were fitted so that the model bounds the peaks
measured on SmolLM2-135M (``benchmarks/circuit_memory.py``; docs/circuits.md, "Memory budget") and on a tiny Llama
(tests/test_circuit_memory.py).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["PER_BASIS", "PER_PASS", "PRUNE", "HEAP", "LINEARISED_PATTERNS", "LINEARISED_PER_NORM", "GraphMemory",
           "graph_memory", "max_tokens"]

PER_BASIS = 3
"""[B, T, d] tensors per basis at the batched run's peak: its error leaf, its output, its error's gradient."""
PER_PASS = 8
"""Further [B, T, d] tensors at that peak, whatever the number of bases (one layer's transients)."""
PRUNE = 4.5
"""Dense [N, N] matrices (float-sized) alive at pruning's peak, the adjacency included."""
HEAP = 3.0
"""Resident growth of the process per live byte (allocator retention; measured on SmolLM2 up to 2.5)."""
LINEARISED_PATTERNS = 4
"""Further [B, H, T, T] tensors per layer with linearised attention (measured on a tiny Llama: 1.7–2.4 at 24–48
tokens; more in the fixed part at 8, covered with the norms' term)."""
LINEARISED_PER_NORM = 2
"""Further [B, T, d] tensors per RMSNorm with linearised norms."""


class GraphMemory(NamedTuple):
    """Modelled peak of one graph and its pruning, in bytes."""

    live: float
    """Tensors alive at once (attribution or pruning, whichever is larger)."""
    resident: float
    """Growth of the process's resident memory (``HEAP · live``): what a budget is checked against."""


def graph_memory(*, n_tokens: int, n_features: int, n_bases: int, n_layers: int, d_model: int, n_heads: int,
                 vocab: int, dict_features: int, batch: int, n_logits: int, element_size: int,
                 linearised_attention: bool = False, linearised_norms: bool = False) -> GraphMemory:
    """The model of the module docstring for a prompt of ``n_tokens`` with ``n_features`` active features (an upper
    bound is fine: a TopK transcoder has at most k per token), ``dict_features`` the summed width of the feature
    bases, ``batch`` the configured rows per backward pass and ``n_logits`` the most logit targets; the two flags
    for a graph with linearised attention or norms."""
    t = n_tokens
    n = n_features + n_bases * t + t + n_logits
    b = max(1, min(batch, max(n_logits, n_features)))  # attribute never runs more copies than any batch needs
    clean = 2 * t * vocab + 6 * n_layers * t * d_model + 2 * t * dict_features + n_layers * n_heads * t * t
    batched = (PER_BASIS * n_bases + PER_PASS) * b * t * d_model + n_layers * b * n_heads * t * t + n_features * d_model
    batched += linearised_attention * LINEARISED_PATTERNS * n_layers * b * n_heads * t * t
    batched += linearised_norms * LINEARISED_PER_NORM * (2 * n_layers + 1) * b * t * d_model
    live = element_size * max(clean + batched + n * n, PRUNE * n * n)
    return GraphMemory(live, HEAP * live)


def max_tokens(need, budget: float, *, limit: int = 1 << 20) -> int:
    """The longest prompt length t with ``need(t) <= budget`` (``need`` increasing in t; 0 if not even one token)."""
    lo, hi = 0, 1
    while need(hi) <= budget and hi < limit:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid) <= budget else (lo, mid)
    return lo
