"""Connectivity-based fine-tuning (CBFT): fine-tune a cue-reliant model away from its cue.

Lubana, Bigelow, Dick, Krueger, Tanaka 2023, "Mechanistic Mode Connectivity" (ICML 2023); repo
``EkdeepSLubana/MMC`` (``mech_fine_tuning.py``). A model θ_c that relies on a spurious cue is linearly
connected (on cue data) to naively fine-tuned copies of itself, which keep the cue; CBFT breaks that
connection while asking the features to ignore the cue. θ ← θ_c, then for each pair of a clean batch
(x, y) and a cue batch (x_c, y_c), two SGD steps on one optimiser (momentum, weight decay):

1. barrier step: t = 0.5 + 0.5·clip(ε, −0.5, 0.5), ε ∼ N(0, 1) (so t ∈ [0.25, 0.75]);
   θ_t = t·θ_c + (1 − t)·θ;  L_b = |m − CE(f_{θ_t}(x_c), y_c)|  (margin m = 1), whose gradient on θ is
   (1 − t)·∇_{θ_t} L_b — it pushes the loss on the path towards m;
2. invariance step: z = the penultimate features of θ;
   L = CE(f_θ(x), y) + λ·(1/K)·Σ_k ‖n(mean_{y=k} z(x)) − n(mean_{y=k} z(x_c))‖²,
   n = L2 normalisation, K = number of classes (a class absent from either batch adds 0), λ = 1.

Defaults as in the repo: SGD lr 0.01, momentum 0.9, weight decay 1e-4; the repo builds a cosine
schedule but its CBFT loop never steps it, so the learning rate stays constant — as here. Every floating
parameter is interpolated (the repo interpolates those of Conv/Linear/BatchNorm layers: the same set for
models without other parameters); models with BatchNorm are refused (see
:mod:`assay.dynamics.connectivity`). The model runs in eval mode (no dropout).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from assay.config import ConfigError
from assay.dynamics.connectivity import State, _refuse_batchnorm, check_same_architecture
from assay.hooks import capture

__all__ = ["CBFTConfig", "CBFTResult", "cbft", "class_mean_invariance"]


@dataclass(frozen=True, kw_only=True)
class CBFTConfig:
    """Hyperparameters of connectivity-based fine-tuning (defaults: the MMC repo's)."""

    margin: float = 1.0
    """Target loss m on the path to the cue model (cue data)."""
    invariance_weight: float = 1.0
    """λ, the weight of the class-mean feature invariance term."""
    lr: float = 0.01
    """SGD learning rate (constant)."""
    momentum: float = 0.9
    """SGD momentum (one buffer shared by both steps)."""
    weight_decay: float = 1e-4
    """SGD weight decay."""

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.margin < 0 or self.invariance_weight < 0:
            raise ConfigError(f"CBFT needs lr > 0, margin >= 0 and invariance_weight >= 0, got lr={self.lr}, "
                              f"margin={self.margin}, invariance_weight={self.invariance_weight}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ConfigError(f"CBFT needs 0 <= momentum < 1 and weight_decay >= 0, got {self.momentum}, "
                              f"{self.weight_decay}")


class CBFTResult(NamedTuple):
    """The fine-tuned state and the per-pair losses."""

    state: dict[str, Tensor]
    """The fine-tuned ``state_dict`` (buffers copied from the cue state)."""
    ts: tuple[float, ...]
    """The interpolation point t of each barrier step."""
    barrier_losses: tuple[float, ...]
    """L_b = |m − CE| on the path, before each barrier step."""
    clean_losses: tuple[float, ...]
    """CE on the clean batch, before each invariance step."""
    invariance_losses: tuple[float, ...]
    """The (unweighted) invariance term before each invariance step."""


def class_mean_invariance(z: Tensor, y: Tensor, z_cue: Tensor, y_cue: Tensor, n_classes: int) -> Tensor:
    """(1/K)·Σ_k ‖n(mean_{y=k} z) − n(mean_{y_cue=k} z_cue)‖² over classes present in both batches."""
    total = z.new_zeros(())
    for k in range(n_classes):
        a, b = y == k, y_cue == k
        if a.any() and b.any():
            diff = F.normalize(z[a].mean(0), dim=0) - F.normalize(z_cue[b].mean(0), dim=0)
            total = total + diff.pow(2).sum()
    return total / n_classes


def cbft(
    model: nn.Module, cue_state: State, pairs: Iterable[tuple[Tensor, Tensor, Tensor, Tensor]], *,
    features: str, config: CBFTConfig | None = None, generator: torch.Generator,
) -> CBFTResult:
    """Fine-tune from ``cue_state`` over ``pairs`` of ``(x_clean, y_clean, x_cue, y_cue)`` batches.

    ``model`` is the vessel (its architecture is used; its own weights are not touched): ``model(x)``
    returns logits and the site ``features`` outputs the penultimate features z (e.g. ``"act0"`` of a
    one-hidden-layer :class:`assay.models.mlp.MLP`). ``generator`` draws the interpolation points.
    """
    cfg = config or CBFTConfig()
    _refuse_batchnorm(model)
    check_same_architecture(dict(model.state_dict()), cue_state, names=("the vessel model", "the cue state"))
    names = [k for k, _ in model.named_parameters()]
    anchor = {k: cue_state[k].detach() for k in names}
    theta = {k: nn.Parameter(cue_state[k].detach().clone()) for k in names}
    buffers = {k: v for k, v in cue_state.items() if k not in theta}
    opt = torch.optim.SGD(theta.values(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    was_training = model.training
    model.eval()
    ts, barrier_losses, clean_losses, inv_losses = [], [], [], []
    try:
        for x, y, x_cue, y_cue in pairs:
            # 1. barrier step: θ_t depends on θ with factor (1 − t), so autograd gives (1 − t)·∇_{θ_t} L_b
            t = 0.5 + 0.5 * float(torch.randn((), generator=generator).clamp(-0.5, 0.5))
            opt.zero_grad(set_to_none=True)
            theta_t = {k: t * anchor[k] + (1 - t) * theta[k] for k in names}
            logits = functional_call(model, {**buffers, **theta_t}, (x_cue,))
            lb = (cfg.margin - F.cross_entropy(logits, y_cue)).abs()
            lb.backward()
            opt.step()
            # 2. clean loss + class-mean feature invariance between clean and cue batches
            opt.zero_grad(set_to_none=True)
            with capture(model, features, detach=False) as cap:
                out = functional_call(model, {**buffers, **theta}, (x,))
                z = cap[features]
                functional_call(model, {**buffers, **theta}, (x_cue,))
                z_cue = cap[features]
            ce = F.cross_entropy(out, y)
            inv = class_mean_invariance(z.flatten(1), y, z_cue.flatten(1), y_cue, out.shape[-1])
            (ce + cfg.invariance_weight * inv).backward()
            opt.step()
            ts.append(t)
            barrier_losses.append(float(lb.detach()))
            clean_losses.append(float(ce.detach()))
            inv_losses.append(float(inv.detach()))
    finally:
        model.train(was_training)
    state = {k: (theta[k].detach().clone() if k in theta else v.clone()) for k, v in cue_state.items()}
    return CBFTResult(state, tuple(ts), tuple(barrier_losses), tuple(clean_losses), tuple(inv_losses))
