"""Toy safety filters with known behaviour, shared by the erase-and-check tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

HARMFUL, TRIGGER_A, TRIGGER_B, SUPPRESSOR = 0.9, 1, 2, 3


class ToyFilter:
    """Harmful iff the tokens contain the bigram (1, 2) and no 3 — so appending or inserting a 3 fools it
    (the adversary's move) while erasing the 3 restores the verdict. Counts every sequence it scores."""

    name = "toy"

    def __init__(self, context_length: int | None = None) -> None:
        self.context_length = context_length
        self.calls = 0
        self.batches: list[int] = []

    @staticmethod
    def verdict(seq: Sequence[int]) -> bool:
        s = tuple(seq)
        bigram = any(s[i] == TRIGGER_A and s[i + 1] == TRIGGER_B for i in range(len(s) - 1))
        return bigram and SUPPRESSOR not in s

    def harmful_probability(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        self.calls += len(sequences)
        self.batches.append(len(sequences))
        return torch.tensor([HARMFUL if self.verdict(s) else 1 - HARMFUL for s in sequences])


class BagFilter:
    """Logistic bag of words: logit = Σ_t w[x_t] + b. Differentiable in a soft keep-mask (GradEC), with a
    known best erasure: drop every token of negative weight."""

    name = "bag"
    context_length = None

    def __init__(self, w: torch.Tensor, b: float) -> None:
        self.w, self.b = w, b
        self.calls = 0

    def logit(self, seq: Sequence[int]) -> float:
        return float(self.w[list(seq)].sum() + self.b) if len(seq) else self.b

    def harmful_probability(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        self.calls += len(sequences)
        return torch.sigmoid(torch.tensor([self.logit(s) for s in sequences]))

    def soft_logit(self, tokens: Sequence[int], keep: torch.Tensor) -> torch.Tensor:
        return (keep * self.w[list(tokens)]).sum() + self.b

    def embedding_table(self) -> torch.Tensor:
        """One-dimensional 'embeddings': token v ↦ w[v], so content_logit is the same bag-of-words logit."""
        return self.w.unsqueeze(1)

    def content_logit(self, emb: torch.Tensor) -> torch.Tensor:
        return emb.sum() + self.b
