"""Pruning masks: dense shadow weights θ, a binary mask M, and a forward pass that uses θ ⊙ M.

The mask abstraction of time-varying projected gradient descent (Srinivas, Kuzmin, Nagel, van Baalen,
Skliar, Blankevoort 2022, "Cyclical Pruning for Sparse Neural Networks", arXiv 2202.01290): the
dense θ is kept and trained, the forward pass sees the projection θ ⊙ M, and pruning recomputes M
from θ at scheduled steps (Zhu & Gupta 2017, "To prune, or not to prune"). A mask is attached with
:mod:`torch.nn.utils.parametrize`, so ``module.weight`` *is* θ ⊙ M and the dense θ lives at
``module.parametrizations.weight.original``.

With ``regrow=True`` (the default) the gradient reaches every entry of θ, masked or not — the
straight-through projection ``∂(θ ⊙ M)/∂θ := 1`` — so a masked weight whose magnitude grows can
win its place back at the next projection (regrowth). ``regrow=False`` freezes masked entries: their
gradient is exactly zero.

Sparsity s is the fraction of zeros of the effective weight θ ⊙ M, counted exactly over the
prunable weights (the ``weight`` of every ``nn.Linear`` / ``nn.Conv{1,2,3}d``; biases, norms and
embeddings are never pruned). :func:`materialize` bakes θ ⊙ M into a plain parameter and removes the
parametrization; structured (channel/neuron) removal is :mod:`assay.pruning.structured`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from assay.artifact import load_artifact, save_artifact

__all__ = ["MaskedWeight", "SparsityReport", "prunable_layers", "check_sparsity", "apply_masks", "get_masks",
           "shadow_weight", "is_masked", "sparsity", "materialize", "save_masks", "load_masks"]

MASKS_KIND = "pruning.masks"

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class MaskedWeight(nn.Module):
    """The parametrization θ ↦ θ ⊙ M with a boolean mask buffer ``mask``.

    Kept entries pass through bit for bit; masked entries are exactly 0. With ``regrow`` the gradient
    with respect to θ is the gradient with respect to θ ⊙ M at every entry (straight-through); without
    it, masked entries get zero gradient."""

    def __init__(self, mask: torch.Tensor, *, regrow: bool = True) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())
        self.regrow = regrow

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.regrow:  # value θ (kept) or θ − θ = 0 (masked); derivative 1 everywhere
            return torch.where(self.mask, weight, weight - weight.detach())
        return torch.where(self.mask, weight, torch.zeros_like(weight))


class SparsityReport(NamedTuple):
    """Exact zero counts of the effective weights of the prunable layers."""

    zeros: dict[str, int]
    """Layer name → number of zero entries of its effective weight."""
    sizes: dict[str, int]
    """Layer name → number of entries of its weight."""
    layer: dict[str, float]
    """Layer name → its sparsity, zeros / size."""
    total_zeros: int
    """Zeros over all counted layers."""
    total_size: int
    """Entries over all counted layers."""
    global_sparsity: float
    """total_zeros / total_size."""


def check_sparsity(s: float, what: str = "sparsity") -> float:
    """Return ``s`` as a float if it lies in [0, 1), else raise a ValueError saying so."""
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= float(s) < 1.0:
        raise ValueError(f"{what} must be a number in [0, 1) (the fraction of weights set to zero; 1 would "
                         f"remove every weight), got {s!r}")
    return float(s)


def _owners(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) → every ``module.param`` path that holds it (a tied parameter has several)."""
    out: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):  # a masked θ shows as …parametrizations.weight.original
        for pname, p in module._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append(f"{path}.{pname}" if path else pname)
    return out


def _dense(module: nn.Module) -> torch.Tensor:
    if is_masked(module):
        return module.parametrizations.weight.original
    return module.weight


def prunable_layers(model: nn.Module, *, skip_first_last: bool = False) -> tuple[str, ...]:
    """Names of the layers whose ``weight`` may be pruned (``nn.Linear`` and ``nn.Conv{1,2,3}d``), in
    registration order; ``skip_first_last`` leaves out the first and the last of them."""
    names = tuple(n for n, m in model.named_modules() if isinstance(m, PRUNABLE))
    if skip_first_last:
        names = names[1:-1]
    return names


def _layer(model: nn.Module, name: str) -> nn.Module:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise KeyError(f"model has no layer {name!r}; prunable layers: {', '.join(prunable_layers(model))}") from None
    if not isinstance(module, PRUNABLE):
        raise TypeError(f"layer {name!r} is a {type(module).__name__}; only nn.Linear and nn.Conv1d/2d/3d weights "
                        "can be masked")
    return module


def _check_untied(model: nn.Module, name: str, owners: dict[int, list[str]]) -> None:
    paths = owners.get(id(_dense(_layer(model, name))), [])
    if len(paths) > 1:
        raise ValueError(f"the weight of layer {name!r} is tied: the same parameter is {' and '.join(paths)}; "
                         "a mask on one would silently prune the other. Untie the weights (clone one) first")


def is_masked(module: nn.Module) -> bool:
    """Whether ``module.weight`` carries a :class:`MaskedWeight`."""
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, MaskedWeight) for p in module.parametrizations.weight)


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], *, regrow: bool = True) -> nn.Module:
    """Attach (or replace) the mask of each named layer, in place; returns ``model``.

    ``masks`` maps a layer name (``model.get_submodule`` path) to a mask shaped like its weight
    (bool, or 0/1 numbers; True/1 keeps). Everything is validated before any layer changes."""
    owners = _owners(model)
    checked = {}
    for name, mask in masks.items():
        module = _layer(model, name)
        _check_untied(model, name, owners)
        weight = _dense(module)
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(f"mask for layer {name!r} has shape {tuple(mask.shape)} but its weight has shape "
                             f"{tuple(weight.shape)}; give one mask entry per weight")
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"mask for layer {name!r} must be boolean or hold only 0 and 1")
        checked[name] = mask.to(device=weight.device, dtype=torch.bool)
    for name, mask in checked.items():
        module = model.get_submodule(name)
        if is_masked(module):
            param = next(p for p in module.parametrizations.weight if isinstance(p, MaskedWeight))
            param.mask.copy_(mask)
            param.regrow = regrow
        else:
            parametrize.register_parametrization(module, "weight", MaskedWeight(mask, regrow=regrow))
    return model


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name → a copy of its current boolean mask, for every masked layer."""
    out = {}
    for name, module in model.named_modules():
        if is_masked(module):
            param = next(p for p in module.parametrizations.weight if isinstance(p, MaskedWeight))
            out[name] = param.mask.clone()
    return out


def shadow_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The dense θ of layer ``name`` (the parameter the optimiser updates), masked or not."""
    return _dense(_layer(model, name))


@torch.no_grad()
def sparsity(model: nn.Module, layers: Iterable[str] | None = None) -> SparsityReport:
    """Exact sparsity of the effective weights of ``layers`` (default: every prunable layer)."""
    names = tuple(layers) if layers is not None else prunable_layers(model)
    zeros = {n: int((_layer(model, n).weight == 0).sum()) for n in names}
    sizes = {n: _layer(model, n).weight.numel() for n in names}
    total_zeros, total_size = sum(zeros.values()), sum(sizes.values())
    return SparsityReport(zeros, sizes, {n: zeros[n] / sizes[n] for n in names}, total_zeros, total_size,
                          total_zeros / total_size if total_size else 0.0)


def materialize(model: nn.Module) -> nn.Module:
    """Bake θ ⊙ M into a plain ``weight`` parameter of every masked layer and remove the
    parametrization, in place; returns ``model``. The outputs do not change; the masked entries of θ
    are gone for good (no regrowth afterwards)."""
    for _, module in list(model.named_modules()):
        if is_masked(module):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def save_masks(path: str | Path, masks: Mapping[str, torch.Tensor], *, meta: Mapping[str, Any] | None = None) -> Path:
    """Save keep-masks (layer name → bool tensor) as an artifact of kind ``"pruning.masks"``; ``meta``
    (the rule, schedule, sparsity …) is stored alongside. Atomic, checksummed."""
    return save_artifact(path, kind=MASKS_KIND, config={"layers": list(masks)},
                         tensors={n: m.to(torch.bool) for n, m in masks.items()}, meta=meta)


def load_masks(path: str | Path) -> dict[str, torch.Tensor]:
    """Masks saved by :func:`save_masks`, in their saved order (apply them with :func:`apply_masks`,
    which checks each shape against the model's layer)."""
    art = load_artifact(path, kind=MASKS_KIND)
    weights = art.tensors["weights"]
    return {n: weights[n] for n in art.config["layers"]}
