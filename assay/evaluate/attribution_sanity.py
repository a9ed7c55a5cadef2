"""Sanity and invariance tests for attribution methods.

* Model-parameter randomisation (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018, "Sanity
  Checks for Saliency Maps"): re-draw the weights of the layers cascading from the top, recompute the
  attributions, and compare with the originals by Spearman rank correlation (signed and of |φ|) and
  SSIM. An attribution that stays the same does not depend on what the model learnt.
* Logit-shift invariance (Srinivas & Fleuret 2021, "Rethinking the Role of Gradient-based Attribution
  Methods for Model Interpretability"): f′(x) = f(x) + g(x)·1 has the same softmax, so a faithful
  explanation of the *classifier* must not change; explanations of raw logits change by ∇g, those of
  log-softmax outputs do not.

The explanation function is passed in (``explain(model, x, target) -> φ``); this module imports no
attribution method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from assay.hooks import resolve
from assay.stats import spearman

__all__ = ["RandomisationResult", "model_randomisation", "ssim", "LogitShiftResult", "logit_shift_test"]

ExplainModel = Callable[[Callable, torch.Tensor, torch.Tensor], torch.Tensor]


class RandomisationResult(NamedTuple):
    """Similarity between original and randomised-model attributions after each cascade step."""

    layers: tuple[str, ...]
    """Sites randomised so far at each step (cumulative, top first)."""
    spearman: torch.Tensor
    """Spearman correlation of signed attributions, ``[L, B]``."""
    spearman_abs: torch.Tensor
    """Spearman correlation of |attributions|, ``[L, B]``."""
    ssim: torch.Tensor
    """Global SSIM of the min–max normalised |attributions|, ``[L, B]``."""


def ssim(a: torch.Tensor, b: torch.Tensor, *, c1: float = 0.01**2, c2: float = 0.03**2) -> torch.Tensor:
    """Structural similarity over one global window per example (Wang et al. 2004), ``[B]``."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    ma, mb = a.mean(1), b.mean(1)
    va, vb = a.var(1, unbiased=False), b.var(1, unbiased=False)
    cov = ((a - ma[:, None]) * (b - mb[:, None])).mean(1)
    return ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))


def _minmax(a: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1).abs().double()
    lo, hi = a.min(1, keepdim=True).values, a.max(1, keepdim=True).values
    return (a - lo) / (hi - lo).clamp_min(1e-12)


@torch.no_grad()
def _redraw(module: nn.Module, generator: torch.Generator) -> None:
    for p in module.parameters():
        std = float(p.std()) if p.numel() > 1 else 0.1
        p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) * (std or 0.1))


def model_randomisation(
    model: nn.Module, explain: ExplainModel, x: torch.Tensor, target: torch.Tensor, *,
    layers: Sequence[str], generator: torch.Generator | None = None,
) -> RandomisationResult:
    """Cascading randomisation of ``layers`` (given top first) on a deep copy of ``model``."""
    g = generator if generator is not None else torch.Generator().manual_seed(42)
    ref = explain(model, x, target).detach()
    work = copy.deepcopy(model)
    rows_s, rows_a, rows_ssim, done = [], [], [], []
    for site in layers:
        _redraw(resolve(work, site), g)
        done.append(site)
        phi = explain(work, x, target).detach()
        rows_s.append(spearman(ref.flatten(1), phi.flatten(1)))
        rows_a.append(spearman(ref.flatten(1).abs(), phi.flatten(1).abs()))
        rows_ssim.append(ssim(_minmax(ref), _minmax(phi)))
    return RandomisationResult(tuple(done), torch.stack(rows_s), torch.stack(rows_a), torch.stack(rows_ssim))


class LogitShiftResult(NamedTuple):
    """How much attributions move when every logit is shifted by the same g(x)."""

    change_logit: torch.Tensor
    """‖φ′ − φ‖/‖φ‖ explaining raw logits, ``[B]`` (large: the explanation is not of the classifier)."""
    change_log_softmax: torch.Tensor
    """The same for log-softmax outputs, ``[B]`` (≈0 for a method that explains the classifier)."""
    same_prediction: bool
    """Whether the shifted model's softmax equals the original's (sanity of the construction)."""


class _Shifted(nn.Module):
    def __init__(self, model: Callable, shift: Callable[[torch.Tensor], torch.Tensor], log_softmax: bool):
        super().__init__()
        self.model, self.shift, self.log_softmax = model, shift, log_softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x) + self.shift(x)[:, None]
        return y.log_softmax(-1) if self.log_softmax else y


class _LogSoftmax(nn.Module):
    def __init__(self, model: Callable):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).log_softmax(-1)


def logit_shift_test(
    model: nn.Module, explain: ExplainModel, x: torch.Tensor, target: torch.Tensor,
    shift: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LogitShiftResult:
    """Compare attributions of f and f + g(x)·1 for raw logits and for log-softmax outputs.

    ``shift`` maps inputs ``[n, *x]`` to ``[n]``; the default g(x) = 5·Σ sin(3x) is smooth and far
    from constant.
    """
    g = shift if shift is not None else (lambda z: 5 * torch.sin(3 * z).flatten(1).sum(1))

    def rel(a, b):
        return (a - b).flatten(1).double().norm(dim=1) / b.flatten(1).double().norm(dim=1).clamp_min(1e-300)

    base_logit = explain(model, x, target).detach()
    shifted_logit = explain(_Shifted(model, g, False), x, target).detach()
    base_ls = explain(_LogSoftmax(model), x, target).detach()
    shifted_ls = explain(_Shifted(model, g, True), x, target).detach()
    with torch.no_grad():
        same = torch.allclose(model(x).softmax(-1), (model(x) + g(x)[:, None]).softmax(-1), atol=1e-6)
    return LogitShiftResult(rel(shifted_logit, base_logit), rel(shifted_ls, base_ls), bool(same))
