"""The LFA fidelity report: how well an explanation's linear surrogate fits the model in a chosen neighbourhood.

Han, Srinivas & Lakkaraju (2022), "Which Explanation Should I Choose? A Function Approximation Perspective
to Characterizing Post Hoc Explanations" (NeurIPS 2022): every classic explanation is the linear model
g(ξ) = φᵀξ that some method fits to f around x in *its* neighbourhood Z, and no method is best in every
neighbourhood — so pick the explanation whose surrogate has the lowest loss in the neighbourhood you
care about. :func:`lfa_loss` scores a given explanation φ in a user-chosen Z by the squared local
function approximation loss

    L(φ; Z) = E_{ξ∼Z} [(f_t(x′(ξ)) − f_t(x) − φᵀξ)²]

(the surrogate anchored at x, no free bias), with two neighbourhoods (:class:`Neighbourhood`), those of the
engine (:mod:`assay.attribution.neighbourhoods`):

* ``gaussian``: x′ = x + ξ, ξ ~ N(0, σ²I) in input space (the gradient's, SmoothGrad's and C-LIME's);
  for a linear f the gradient has zero loss.
* ``mask``: binary masks z ∈ {0, 1}^d over d interpretable features (a feature mask groups input elements,
  e.g. image patches), each kept with probability ``keep`` (LIME's and KernelSHAP's Bernoulli(½)),
  x′ = b + z ⊙ (x − b), ξ = z − 1 (the removed features); φ_F = Σ_{i∈F} φ_i. For a linear f, occlusion
  and SHAP with baseline b (φ = w ⊙ (x − b)) have zero loss.

Attributions are per-element shares: a feature's coefficient is the sum of its elements' values. A
method that writes its group's score on every element of the group (occlusion, LIME, KernelSHAP with a
feature mask) must be divided by the group size first. The loss of the zero explanation,
E[(f_t(x′) − f_t(x))²], comes from the same samples as the reference: an explanation above it explains
nothing of the local behaviour. This module imports no attribution method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import torch

from assay.config import ConfigError, check_choice
from assay.evaluate.faithfulness import Output, _batched, _check, _start

__all__ = ["NeighbourhoodKind", "Neighbourhood", "LocalFidelity", "lfa_loss"]

NeighbourhoodKind = Literal["gaussian", "mask"]


@dataclass(frozen=True, kw_only=True)
class Neighbourhood:
    """A neighbourhood Z around x in which a surrogate is scored (module docstring)."""

    kind: NeighbourhoodKind = "gaussian"
    """gaussian: x′ = x + ξ, ξ ~ N(0, σ²I); mask: x′ = b + z ⊙ (x − b), z ~ Bernoulli(keep) per feature."""
    sigma: float = 0.1
    """Standard deviation of the Gaussian noise, in input units (gaussian only)."""
    keep: float = 0.5
    """Probability that a feature is kept (mask only; LIME's and KernelSHAP's ½)."""
    baseline: float = 0.0
    """Value of removed features (mask only)."""
    n_samples: int = 200
    """Samples ξ drawn (shared by every example of the batch)."""

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, get_args(NeighbourhoodKind))
        if self.sigma <= 0 or not 0 < self.keep < 1 or self.n_samples < 1:
            raise ConfigError(f"neighbourhood needs sigma > 0, 0 < keep < 1 and n_samples ≥ 1; got sigma "
                              f"{self.sigma}, keep {self.keep}, n_samples {self.n_samples}")


class LocalFidelity(NamedTuple):
    """LFA losses per example."""

    loss: torch.Tensor
    """E[(f_t(x′) − f_t(x) − φᵀξ)²], ``[B]``."""
    null_loss: torch.Tensor
    """The zero explanation's loss E[(f_t(x′) − f_t(x))²] on the same samples, ``[B]``."""


def lfa_loss(
    model: Callable, x: torch.Tensor, attributions: torch.Tensor, target: int | torch.Tensor | None = None, *,
    neighbourhood: Neighbourhood = Neighbourhood(), feature_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None, output: Output = "logit", chunk: int | None = None,
) -> LocalFidelity:
    """The local function approximation loss of the explanations ``attributions`` (broadcastable to x).

    ``feature_mask`` (integer ids 0..d−1 shaped like one example, mask neighbourhoods only) groups input
    elements into features; None: every element is a feature. Samples come from ``generator`` and are
    shared by the batch. ``target`` None explains the predicted class.
    """
    _check(x, attributions)
    nb = neighbourhood
    t, f0, chunk, _ = _start(model, x, target, output, chunk)
    B, shape = x.shape[0], tuple(x.shape[1:])
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    phi = attributions.to(x.device).expand_as(x).reshape(B, -1).double()
    if nb.kind == "gaussian":
        if feature_mask is not None:
            raise ValueError("a feature_mask groups features of a mask neighbourhood; the gaussian one has none")
        xi = nb.sigma * torch.randn(nb.n_samples, *shape, generator=g, dtype=x.dtype).to(x.device)

        def rows(exs: slice, ss: slice) -> torch.Tensor:
            return x[exs, None] + xi[None, ss]
        linear = phi @ xi.reshape(nb.n_samples, -1).double().T  # [B, N]
    else:
        ids = _feature_ids(feature_mask, shape).to(x.device)
        d = int(ids.max()) + 1
        z = (torch.rand(nb.n_samples, d, generator=g) < nb.keep).to(x.device)
        kept = z[:, ids].view(nb.n_samples, *shape)  # [N, *x]
        base = torch.full_like(x[0], nb.baseline)

        def rows(exs: slice, ss: slice) -> torch.Tensor:
            return torch.where(kept[None, ss], x[exs, None], base)
        coef = torch.zeros(B, d, dtype=torch.float64, device=x.device).index_add_(1, ids, phi)  # φ_F
        linear = coef @ (z.double() - 1).T
    delta = _batched(model, rows, B, nb.n_samples, t, output, chunk) - f0[:, None]
    return LocalFidelity(((delta - linear) ** 2).mean(1), (delta**2).mean(1))


def _feature_ids(feature_mask: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """Flat feature ids ``[D]`` of one example (each element its own feature when None)."""
    D = 1
    for s in shape:
        D *= s
    if feature_mask is None:
        return torch.arange(D)
    if feature_mask.dtype.is_floating_point or feature_mask.dtype == torch.bool:
        raise TypeError(f"feature_mask must hold integer feature ids, got dtype {feature_mask.dtype}")
    try:
        ids = feature_mask.expand(shape).reshape(-1).long()
    except RuntimeError:
        raise ValueError(f"feature_mask {tuple(feature_mask.shape)} must broadcast to one example "
                         f"{shape}") from None
    if int(ids.min()) < 0:
        raise ValueError("feature_mask ids must be 0..d−1")
    return ids
