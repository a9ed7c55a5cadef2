"""The world protocol shared by every synthetic data generator.

A world is a frozen config plus a seeded generator. ``sample(n, generator=g)`` returns a
:class:`Batch` whose ``inputs`` are token ids ``[n, T]`` (sequence worlds, padded with
``pad_id``) or tensors (image/tabular/feature worlds), ``targets`` are what a model is trained to
predict, and ``labels`` are per-example or per-token ground truth (per-token labels are
``[n, T]`` aligned with ``inputs``, with -1 / NaN at padding). Static ground truth (planted
directions, grammars, graphs) is exposed as world attributes.

Same seed ⇒ identical batches: worlds draw randomness only from the ``torch.Generator`` passed in
(or a ``numpy.random.Generator`` seeded from it), never from global state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

__all__ = ["Batch", "World", "SequenceWorld", "make_generator"]


@dataclass(frozen=True)
class Batch:
    """One sample of a world."""

    inputs: torch.Tensor
    """Model inputs: token ids ``[n, T]`` (long) or feature/image tensors ``[n, ...]``."""
    targets: torch.Tensor | None = None
    """Training targets (next tokens ``[n, T]`` with -100 where ignored, or class ids ``[n]``)."""
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    """Ground truth per example or per token, keyed by concept name."""

    def __len__(self) -> int:
        return self.inputs.shape[0]


@runtime_checkable
class World(Protocol):
    """Anything that samples batches with ground truth."""

    config: object
    """The frozen config the world was built from."""

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        """Draw ``n`` examples and their ground truth."""
        ...


@runtime_checkable
class SequenceWorld(World, Protocol):
    """A world over token sequences, with its vocabulary."""

    vocab: tuple[str, ...]
    """Token strings; the token id is the index."""
    pad_id: int
    """The padding token id."""

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids ``[T]`` → token strings (padding dropped)."""
        ...


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (never touches global RNG state)."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g
