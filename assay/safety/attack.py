"""GCG-style adversarial suffix against a safety filter (the attack erase-and-check is evaluated on).

Zou, Wang, Carlini, Nasr, Kolter & Fredrikson 2023, "Universal and Transferable Adversarial Attacks on
Aligned Language Models" (Greedy Coordinate Gradient), used against a classifier filter as in Kumar,
Agarwal, Srinivas, Li, Feizi & Lakkaraju 2024, "Certifying LLM Safety against Adversarial Prompting"
(arXiv 2309.02705). For a harmful prompt P and a suffix a of ℓ tokens, minimise the filter's harmful
logit z(P ⊕ a) (equivalently the loss −log P(safe | P ⊕ a) = softplus(z)):

    G = ∂z / ∂onehot(a)  [ℓ, V]                              (through the input embeddings)
    candidates: n random single swaps a_i ← v, v ∈ top-k_v(−G_i)   (i uniform over positions)
    a ← the candidate of lowest z if it beats the current suffix; repeat ``steps`` times

Works on any filter with ``embedding_table()`` and ``content_logit(emb)`` (e.g.
:class:`assay.safety.classifier.ClassifierFilter`); candidates are scored in one batched filter call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["GCGConfig", "EmbeddingFilter", "gcg_suffix"]


class EmbeddingFilter(Protocol):
    """A filter whose harmful logit can be differentiated through its input embeddings."""

    def embedding_table(self) -> Tensor:
        """``[vocab, d_model]``."""
        ...

    def content_logit(self, emb: Tensor) -> Tensor:
        """Harmful logit (0-d) of the prompt given as input embeddings ``[T, d_model]``."""
        ...

    def harmful_probability(self, sequences: Sequence[Sequence[int]]) -> Tensor:
        """P(harmful) ``[n]``."""
        ...


@dataclass(frozen=True, kw_only=True)
class GCGConfig:
    """GCG budget (the spec's offline defaults: k = 32, batch 64, 20 steps)."""

    steps: int = 20
    """Optimisation steps."""
    top_k: int = 32
    """Candidate tokens per position (most negative gradient)."""
    n_candidates: int = 64
    """Single-token swaps scored per step (one batched filter call)."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.top_k < 1 or self.n_candidates < 1:
            raise ValueError(f"steps must be >= 0, top_k and n_candidates >= 1; got {self}")


def gcg_suffix(prompt: Sequence[int], length: int, flt: EmbeddingFilter, *, allowed: Tensor,
               config: GCGConfig = GCGConfig(), generator: torch.Generator | None = None) -> tuple[int, ...]:
    """An adversarial suffix of ``length`` tokens drawn from ``allowed`` (token ids ``[m]``) that lowers
    ``flt``'s harmful probability of ``prompt ⊕ suffix``; ``length`` 0 returns ``()``."""
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if length == 0:
        return ()
    allowed = allowed.long().cpu()
    table = flt.embedding_table().detach()
    p = tuple(int(t) for t in prompt)
    suffix = allowed[torch.randint(len(allowed), (length,), generator=generator)]
    best = float(flt.harmful_probability([p + tuple(suffix.tolist())])[0])
    prompt_emb = table[torch.tensor(p, dtype=torch.long, device=table.device)]
    for _ in range(config.steps):
        onehot = torch.zeros(length, len(allowed), dtype=table.dtype, device=table.device)
        onehot[torch.arange(length), (allowed.unsqueeze(0) == suffix.unsqueeze(1)).float().argmax(1)] = 1.0
        onehot.requires_grad_(True)
        z = flt.content_logit(torch.cat([prompt_emb, onehot @ table[allowed.to(table.device)]]))
        (grad,) = torch.autograd.grad(z, onehot)
        top = (-grad).topk(min(config.top_k, len(allowed)), dim=1).indices.cpu()  # [ℓ, k] indices into allowed
        pos = torch.randint(length, (config.n_candidates,), generator=generator)
        pick = top[pos, torch.randint(top.shape[1], (config.n_candidates,), generator=generator)]
        cands = suffix.repeat(config.n_candidates, 1)
        cands[torch.arange(config.n_candidates), pos] = allowed[pick]
        probs = flt.harmful_probability([p + tuple(c.tolist()) for c in cands])
        i = int(probs.argmin())
        if float(probs[i]) < best:
            best, suffix = float(probs[i]), cands[i]
    return tuple(suffix.tolist())
