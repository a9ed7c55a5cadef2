"""A direction as a one-concept lens: the encoder–decoder view of steering vectors and probes.

Bhalla, Srinivas, Ghandeharioun & Lakkaraju 2024, "Towards Unifying Interpretability and Control"
(arXiv 2411.04430), Table 1: a steering vector or a probe direction v has the decoder x̂ = x + α v.
As a lens with unit direction v̂ = v/‖v‖:

    encode(h) = h·v̂            (the coordinate along v, shape [..., 1])
    decode(z) = z v̂

so, through equation (1) of :mod:`assay.lens`, h′ = h + D(z′) − D(z), ``Add(amount=α‖v‖)`` is addition
h + α v, ``Ablate()`` is projection removal h − (h·v̂)v̂ and ``Set(value=‖v‖, strength=α)`` is
ablation-then-addition h − (h·v̂)v̂ + α v.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DirectionLens", "unit"]


def unit(v: Tensor) -> Tensor:
    """v/‖v‖ for a non-zero finite vector ``[d]``; clear errors otherwise."""
    if v.dim() != 1:
        raise ValueError(f"a direction must be a vector [d], got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ValueError("the direction contains NaN or inf")
    n = v.norm()
    if n == 0:
        raise ValueError("the direction is the zero vector; it has no direction to steer or read along")
    return v / n


class DirectionLens:
    """One-concept lens along ``v`` (encode = h·v̂, decode = z v̂)."""

    def __init__(self, v: Tensor) -> None:
        self.v = v.detach()
        self.v_hat = unit(self.v)

    def _check(self, h: Tensor) -> None:
        if h.shape[-1] != self.v.shape[0]:
            raise ValueError(
                f"direction of width {self.v.shape[0]} does not match activations of width {h.shape[-1]} "
                f"(shape {tuple(h.shape)}); was it extracted at another site or model?"
            )

    def encode(self, h: Tensor) -> Tensor:
        self._check(h)
        return (h @ self.v_hat.to(device=h.device, dtype=h.dtype))[..., None]

    def decode(self, z: Tensor) -> Tensor:
        if z.shape[-1] != 1:
            raise ValueError(f"a direction lens has one concept; codes must be [..., 1], got {tuple(z.shape)}")
        return z * self.v_hat.to(device=z.device, dtype=z.dtype)
