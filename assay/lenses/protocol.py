"""The Lens protocol (Bhalla, Srinivas, Ghandeharioun & Lakkaraju 2024, "Towards Unifying
Interpretability and Control: Evaluation via Intervention").

Every representation method in assay — SAEs and other dictionaries, probes, steering vectors,
logit/tuned lenses, SpLiCE — is an encoder ``z = encode(h)`` from activations to concepts and a
decoder ``h = decode(z)`` back. One intervention API and one evaluation then serve them all.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["Lens"]


@runtime_checkable
class Lens(Protocol):
    """Anything with ``encode(h) -> z`` and ``decode(z) -> h`` over the last dimension."""

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Activations ``[..., d_model]`` → concept coordinates ``[..., n_concepts]``."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Concept coordinates ``[..., n_concepts]`` → activations ``[..., d_model]``."""
        ...
