"""Unfaithfulness tests of Srinivas & Fleuret (2021), "Rethinking the Role of Gradient-based Attribution
Methods for Model Interpretability" (ICLR 2021; repo ``idiap/rethinking-saliency``).

* **Least-salient pixel perturbation** (:func:`least_salient_removal`): remove (set to a fill value) the
  fraction m of features the saliency ranks *lowest*, m ∈ logspace(−2, 0, 25), fill 0.5, and record the
  model's output and accuracy. A faithful saliency names the features the model does not use, so removing
  them leaves the output nearly unchanged — less than removing the same number of random features.
  The paper breaks ties with N(0, 1e-20) noise; here ties are broken uniformly at random (the same
  distribution, without relying on the noise exceeding float rounding).
* **GAN-test by activation maximisation** (:func:`gan_test`): view f_y(x) as an unnormalised
  class-conditional log-density, so that its input gradient is the model's score; sample by ascent
  x ← clip(x + η(φ(x) − λ(x − ½)), 0, 1) from clip(N(½, 0.2²)), η = 0.1, λ = 0.01, and classify the
  samples with an independently trained proxy: high proxy accuracy means the direction φ carries the
  class's generative structure, not an adversarial pattern only the explained model sees. The paper
  ascends the logit gradient for 500 steps; here φ is any attribution evaluated at the current iterate
  (the gradient reproduces the paper), optionally rescaled to unit RMS so methods of different scales
  take steps of the same size.

The explanation (``direction``) and the saliency are passed in; this module imports no attribution method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from assay.evaluate.faithfulness import Output, perturbation_curve

__all__ = ["LEAST_SALIENT_FRACTIONS", "Removal", "least_salient_removal", "GanTest", "gan_test"]

LEAST_SALIENT_FRACTIONS = tuple(10 ** (-2 + 2 * i / 24) for i in range(25))
"""The paper's removed fractions: logspace(−2, 0, 25) (1% to all of the features)."""


class Removal(NamedTuple):
    """Model outputs after removing the least salient features."""

    fractions: torch.Tensor
    """Fraction of features removed at each step, round(m · D)/D, ``[S]``."""
    scores: torch.Tensor
    """f_t after each removal, ``[B, S]``."""
    change: torch.Tensor
    """f_t(x) − f_t(x with the features removed), ``[B, S]``."""
    correct: torch.Tensor
    """Whether the prediction is still the target after each removal, bool ``[B, S]``."""


def least_salient_removal(
    model: Callable, x: torch.Tensor, saliency: torch.Tensor, target: int | torch.Tensor | None = None, *,
    fractions: Sequence[float] | torch.Tensor = LEAST_SALIENT_FRACTIONS, baseline: float | torch.Tensor = 0.5,
    generator: torch.Generator | None = None, output: Output = "probability", chunk: int | None = None,
) -> Removal:
    """Remove the ``fractions`` of features with the *lowest* saliency (set them to ``baseline``).

    Features are the elements of ``saliency``, which broadcasts to ``x`` like the attributions of
    :func:`~assay.evaluate.faithfulness.perturbation_curve` (``[B, 1, H, W]`` removes whole pixels). Pass a
    salience, not a signed attribution: |φ| or the paper's per-pixel standard deviation over channels. Ties
    are broken uniformly at random from ``generator``. ``target`` None explains the predicted class.
    """
    if saliency.shape[0] != x.shape[0]:
        raise ValueError(f"saliency {tuple(saliency.shape)} needs one map per example of x {tuple(x.shape)}")
    B = x.shape[0]
    s = saliency.reshape(B, -1).to(x.device)
    D = s.shape[1]
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    perm = torch.rand(B, D, generator=g).argsort(1).to(x.device)  # a random order, then a stable sort
    order = perm.gather(1, s.gather(1, perm).argsort(dim=1, stable=True))  # ascending saliency, random ties
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(D, device=x.device).expand(B, D))
    fr = torch.as_tensor(fractions, dtype=torch.float64).flatten()
    # deletion removes in decreasing order of its key: −rank removes the least salient first; the extra
    # fraction 0 is x itself, for f_t(x)
    curve = perturbation_curve(model, x, (-rank).double().view(saliency.shape), target,
                               fractions=torch.cat([fr.new_zeros(1), fr]), baseline=baseline, output=output,
                               chunk=chunk)
    return Removal(curve.fractions[1:], curve.scores[:, 1:], curve.scores[:, :1] - curve.scores[:, 1:],
                   curve.correct[:, 1:])


class GanTest(NamedTuple):
    """Samples drawn by ascent along an explanation and the proxy's verdict on them."""

    samples: torch.Tensor
    """The final iterates ``[n, *shape]``."""
    target: torch.Tensor
    """The class each sample was drawn for ``[n]``."""
    correct: torch.Tensor
    """Whether the proxy classifies each sample as its target, bool ``[n]``."""
    accuracy: float
    """The proxy's accuracy on the samples (the GAN-test score; chance is 1/classes)."""


def gan_test(
    direction: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], proxy: Callable[[torch.Tensor], torch.Tensor],
    target: torch.Tensor, shape: Sequence[int], *, n_steps: int = 500, step_size: float = 0.1, decay: float = 0.01,
    centre: float = 0.5, init_std: float = 0.2, normalize: bool = False, start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> GanTest:
    """Activation maximisation along ``direction(x, target) -> φ`` (broadcastable to x), scored by ``proxy``.

    From x₀ = clip(centre + init_std·ε, 0, 1), ε ~ N(0, I) from ``generator`` (or ``start``), repeat
    ``n_steps`` times x ← clip(x + step_size·(φ̂ − decay·(x − centre)), 0, 1), where φ̂ = φ, or φ/RMS(φ) per
    sample with ``normalize``. The defaults are the paper's update for φ = ∇_x f_y (500 steps, η = 0.1,
    λ = 0.01); the accuracy is the share of samples the proxy (an independently trained classifier,
    returning logits) assigns to their target.
    """
    if n_steps < 0 or step_size <= 0 or decay < 0 or init_std < 0:
        raise ValueError("n_steps and decay must be ≥ 0, step_size > 0 and init_std ≥ 0")
    target = torch.as_tensor(target).long()
    if start is None:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        start = centre + init_std * torch.randn(len(target), *shape, generator=g)
    x = start.clamp(0, 1)
    if tuple(x.shape) != (len(target), *shape):
        raise ValueError(f"start {tuple(x.shape)} must be [n, *shape] = {(len(target), *shape)}")
    for _ in range(n_steps):
        phi = direction(x.detach(), target).detach().to(x.dtype)
        if normalize:
            rms = phi.flatten(1).pow(2).mean(1).sqrt().clamp_min(torch.finfo(x.dtype).tiny)
            phi = phi / rms.view(-1, *[1] * (phi.dim() - 1))
        x = (x + step_size * (phi - decay * (x - centre))).clamp(0, 1)
    with torch.no_grad():
        correct = proxy(x).argmax(1) == target.to(x.device)
    return GanTest(x, target, correct, float(correct.double().mean()))
