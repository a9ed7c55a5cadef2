"""Off-manifold robustness and the alignment of input gradients with the data manifold.

Srinivas*, Bordt* & Lakkaraju 2023, "Which Models have Perceptually-Aligned Gradients? An
Explanation via Off-Manifold Robustness" (NeurIPS 2023); reference code ``tml-tuebingen/pags``.

With an orthonormal tangent basis T at x (from a world that knows it, a decoder's Jacobian, or PCA)
and n ∼ N(0, I): u_on = P_T n/‖P_T n‖, u_off = (n − P_T n)/‖n − P_T n‖, and at step ε

    change_on/off(ε) = mean_x ‖softmax f(x) − softmax f(x + ε u_on/off)‖₁.

A model is off-manifold robust when change_off < change_on; ``ratio`` = change_on/change_off
(> 1: more robust off the manifold than on it — the regime where gradients become perceptually
aligned). Gradient alignment: ‖P_T ∇_x Σ_c f_c‖/‖∇_x Σ_c f_c‖ ∈ [0, 1], and the cosine similarity
of the model gradient with the data score ∇log p(x) when the density is known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from assay.robustness.validate import check_nonnegative, classifier_logits

__all__ = ["OnOffRobustness", "on_off_robustness", "tangent_from_decoder", "pca_tangent",
           "gradient_manifold_alignment", "score_alignment", "input_gradient"]

Model = Callable[[torch.Tensor], torch.Tensor]
PAPER_EPSILONS = (1.438, 2.637, 4.833, 8.859)  # logspace(−3, 2, 20)[12:16]


class OnOffRobustness(NamedTuple):
    """Output change under on- and off-manifold perturbations of each size."""

    epsilons: torch.Tensor
    """Step sizes ``[E]``."""
    change_on: torch.Tensor
    """Mean L1 change of the softmax for tangent perturbations ``[E]``."""
    change_off: torch.Tensor
    """Mean L1 change for perturbations orthogonal to the tangent space ``[E]``."""
    ratio: torch.Tensor
    """change_on/change_off ``[E]`` (> 1: off-manifold robust)."""


def _check_basis(x: torch.Tensor, tangent: torch.Tensor) -> torch.Tensor:
    d = x[0].numel()
    if tangent.ndim == 2:
        tangent = tangent.expand(x.shape[0], -1, -1)
    if tangent.ndim != 3 or tangent.shape[:2] != (x.shape[0], d):
        raise ValueError(f"tangent must be an orthonormal basis [d, r] or [B, d, r] with d = {d}, "
                         f"got {tuple(tangent.shape)}")
    return tangent.to(x.dtype)


def _project(v: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """P_T v for flattened v ``[B, d]`` and bases ``[B, d, r]``."""
    return torch.einsum("bdr,br->bd", T, torch.einsum("bdr,bd->br", T, v))


def on_off_robustness(model: Model, x: torch.Tensor, tangent: torch.Tensor,
                      epsilons: Sequence[float] = PAPER_EPSILONS, *,
                      generator: torch.Generator | None = None) -> OnOffRobustness:
    """Mean softmax L1 change under unit on/off-manifold directions scaled by each ε (one draw per x)."""
    T = _check_basis(x, tangent)
    eps = [check_nonnegative("eps", e) for e in epsilons]
    B = x.shape[0]
    flat = x.reshape(B, -1)
    n = torch.randn(flat.shape, dtype=x.dtype, device=x.device, generator=generator)
    on = _project(n, T)
    off = n - on
    u_on = on / on.norm(dim=1, keepdim=True).clamp_min(1e-30)
    u_off = off / off.norm(dim=1, keepdim=True).clamp_min(1e-30)
    with torch.no_grad():
        p0 = classifier_logits(model, x).softmax(1)
        ch_on, ch_off = [], []
        for e in eps:
            for u, out in ((u_on, ch_on), (u_off, ch_off)):
                p = classifier_logits(model, (flat + e * u).reshape(x.shape)).softmax(1)
                out.append((p - p0).abs().sum(1).mean())
    on_t, off_t = torch.stack(ch_on), torch.stack(ch_off)
    return OnOffRobustness(torch.tensor(eps), on_t, off_t, on_t / off_t.clamp_min(1e-30))


def tangent_from_decoder(decoder: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """Orthonormal tangent bases ``[B, d, r]`` of a decoder's image at latents ``z [B, r]``
    (columns ∂dec/∂z_k by ``torch.func.jacrev``, orthonormalised by QR)."""
    def one(zi: torch.Tensor) -> torch.Tensor:
        return decoder(zi[None]).reshape(-1)

    J = torch.func.vmap(torch.func.jacrev(one))(z)  # [B, d, r]
    q, _ = torch.linalg.qr(J)
    return q


def pca_tangent(data: torch.Tensor, r: int) -> torch.Tensor:
    """A global tangent basis ``[d, r]``: the top-r principal directions of ``data [n, d]``."""
    if not 1 <= r <= min(data.shape[0], data[0].numel()):
        raise ValueError(f"r must be in [1, min(n, d)], got {r}")
    flat = data.reshape(data.shape[0], -1)
    _, _, vh = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)
    return vh[:r].T


def input_gradient(model: Model, x: torch.Tensor) -> torch.Tensor:
    """∇_x Σ_c f_c(x) per example, flattened ``[B, d]`` (the paper's model gradient)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(classifier_logits(model, x).sum(), x)
    return g.reshape(x.shape[0], -1)


def gradient_manifold_alignment(model: Model, x: torch.Tensor, tangent: torch.Tensor) -> torch.Tensor:
    """‖P_T g‖/‖g‖ per example ``[B]`` for g = ∇_x Σ_c f_c (1: the gradient lies in the tangent space)."""
    T = _check_basis(x, tangent)
    g = input_gradient(model, x)
    return _project(g, T).norm(dim=1) / g.norm(dim=1).clamp_min(1e-30)


def score_alignment(model: Model, x: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of ∇_x Σ_c f_c with the data score ∇log p(x), per example ``[B]``."""
    g = input_gradient(model, x)
    s = score.reshape(x.shape[0], -1).to(g)
    return torch.nn.functional.cosine_similarity(g, s, dim=1)
