"""Sensitivity of attributions to small input perturbations.

Max-sensitivity (Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, "On the (In)fidelity and Sensitivity
of Explanations"):

    SENS_max(φ, x) = max_{‖δ‖_∞ ≤ r} ‖φ(x + δ) − φ(x)‖  (optionally divided by ‖φ(x)‖),

estimated with n perturbations drawn uniformly from the L∞ ball (Captum: r = 0.02, n = 10,
Frobenius norm, absolute; Quantus: r = 0.2, n = 200, divided by ‖φ(x)‖). The explanation function
is passed in; all n perturbations of all examples go to it as one batch ``[B·n, *x]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["max_sensitivity"]

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(inputs [n, *x], targets [n]) -> attributions [n, *x]``."""


def max_sensitivity(
    explain: Explain, x: torch.Tensor, target: torch.Tensor, *, radius: float = 0.02, n_samples: int = 10,
    relative: bool = False, perturbations: torch.Tensor | None = None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Max over perturbations of ‖φ(x + δ) − φ(x)‖_F (÷ ‖φ(x)‖_F when ``relative``), ``[B]``.

    ``perturbations`` ``[B, n, *x]`` fixes δ; otherwise δ ~ U(−r, r) elementwise from ``generator``.
    """
    B = x.shape[0]
    if perturbations is None:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        perturbations = (torch.rand(B, n_samples, *x.shape[1:], generator=g, dtype=x.dtype) * 2 - 1) * radius
    d = perturbations.to(device=x.device, dtype=x.dtype)
    n = d.shape[1]
    t = target.to(x.device).long()
    base = explain(x, t).detach()
    pert = explain((x[:, None] + d).flatten(0, 1), t.repeat_interleave(n)).detach()
    diff = (pert.view(B, n, -1) - base.reshape(B, 1, -1)).double().norm(dim=-1)
    if relative:
        diff = diff / base.reshape(B, -1).double().norm(dim=-1, keepdim=True)
    return diff.max(1).values
