"""Data-free neuron surgery: merge near-duplicate hidden neurons into their twins, with no data.

Srinivas & Babu 2015, "Data-free Parameter Pruning for Deep Neural Networks" (BMVC 2015,
arXiv 1507.06149). For a hidden layer h = φ(W x̃) (x̃ = (x, 1): the bias is an extra coordinate of
each incoming vector w_i) feeding a next linear layer with outgoing columns a_i, if w_j = w_i then
h_j = h_i for every input, and removing j while setting a_i ← a_i + a_j leaves the network unchanged.
For near-duplicates the output error of that merge is a_j (h_j − h_i), whose size is measured by the
paper's saliency

    s_ij = ⟨a_j²⟩ · ‖w_i − w_j‖²        (removing j in favour of i; ⟨·⟩ the mean over outputs).

The greedy procedure merges the pair of minimum saliency, updates a_i, recomputes the saliencies
that involve i, and repeats until a merge count or a saliency threshold is reached.

Scale-invariant variant [design]: for a positively homogeneous activation (ReLU: φ(c·z) = c·φ(z)
for c > 0), w_j = c·w_i with c > 0 also gives h_j = c·h_i exactly. Then the twin is compared up to
the least-squares scale c_ij = ⟨w_i, w_j⟩/‖w_i‖² (only c_ij > 0 counts), the merge is
a_i ← a_i + c_ij·a_j, and the saliency uses the residual: s_ij = ⟨a_j²⟩ · ‖w_j − c_ij·w_i‖².

Merging only changes the next layer: the removed unit's outgoing column is zeroed and it is marked
in a ``keep`` mask; its physical removal is left to structured removal.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["NeuronLayer", "SurgeryConfig", "Merge", "SurgeryResult", "neuron_layers", "pair_saliencies",
           "merge_neurons"]

_HOMOGENEOUS = (nn.ReLU, nn.Identity)


class NeuronLayer(NamedTuple):
    """A hidden layer of neurons: the linear layer that produces them and the one that reads them."""

    incoming: str
    """Site of the ``nn.Linear`` whose output units are the neurons (its rows and bias entries)."""
    outgoing: str
    """Site of the ``nn.Linear`` that reads the neurons (its columns), after the activation."""
    positively_homogeneous: bool
    """Whether the activation between them satisfies φ(c·z) = c·φ(z) for c > 0 (ReLU)."""


@dataclass(frozen=True, kw_only=True)
class SurgeryConfig:
    """When to stop merging, and how twins are compared."""

    n_merges: int | None = None
    """Merges per layer (at most width − 1). None: stop only at ``max_saliency``."""
    max_saliency: float | None = None
    """Merge only while the smallest saliency is at most this. None: stop only at ``n_merges``."""
    scale_invariant: bool = False
    """Compare incoming vectors up to a positive scale (exact for ReLU); refused for other activations."""

    def __post_init__(self) -> None:
        if self.n_merges is None and self.max_saliency is None:
            raise ValueError("SurgeryConfig needs a stopping rule: set n_merges, max_saliency or both")
        if self.n_merges is not None and self.n_merges < 0:
            raise ValueError(f"n_merges must be >= 0, got {self.n_merges}")
        if self.max_saliency is not None and not self.max_saliency >= 0:
            raise ValueError(f"max_saliency must be >= 0, got {self.max_saliency}")


class Merge(NamedTuple):
    """One merge: ``removed`` folded into ``into`` with a_into ← a_into + scale·a_removed."""

    layer: str
    """The incoming site of the layer (``NeuronLayer.incoming``)."""
    removed: int
    """The neuron removed."""
    into: int
    """Its twin, which absorbs its outgoing weights."""
    scale: float
    """c with h_removed ≈ c·h_into (1 unless ``scale_invariant``)."""
    saliency: float
    """s_(into, removed) at the time of the merge."""


class SurgeryResult(NamedTuple):
    """The merged model, which neurons survive, and the merges in the order they were made."""

    model: nn.Module
    """A copy of the input model with the next layers adjusted and removed units' columns zeroed."""
    keep: dict[str, torch.Tensor]
    """Per layer (keyed by incoming site): a boolean mask over its neurons, False where removed."""
    merges: list[Merge]
    """Every merge, layer by layer, in order of increasing step within each layer."""


def neuron_layers(model: nn.Module) -> list[NeuronLayer]:
    """The hidden layers of an assay MLP (``fc{i}`` → ``fc{i+1}``/``out``) or the MLP blocks of an assay
    Transformer (``blocks.{b}.mlp.fc_in`` → ``fc_out``, GELU). Other models: list them yourself."""
    from assay.models.mlp import MLP
    from assay.models.transformer import Transformer

    if isinstance(model, MLP):
        names = [f"fc{i}" for i in range(model.n_hidden)] + ["out"]
        return [NeuronLayer(a, b, isinstance(model.get_submodule(f"act{i}"), _HOMOGENEOUS))
                for i, (a, b) in enumerate(zip(names, names[1:]))]
    if isinstance(model, Transformer):
        return [NeuronLayer(f"blocks.{b}.mlp.fc_in", f"blocks.{b}.mlp.fc_out", False)
                for b in range(len(model.blocks))]
    raise TypeError(f"neuron_layers knows assay's MLP and Transformer, not {type(model).__name__}; "
                    "pass the layers as NeuronLayer(incoming, outgoing, positively_homogeneous)")


def _residuals(incoming: torch.Tensor, scale_invariant: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """R[i, j] = ‖w_j − C[i, j]·w_i‖² and the scales C (float64); +inf where j cannot merge into i."""
    w = incoming.double()
    gram = w @ w.T
    sq = gram.diagonal()
    if scale_invariant:
        c = gram / sq.clamp(min=1e-300)[:, None]  # c[i, j] = <w_i, w_j> / |w_i|^2
        resid = (sq[None, :] - c * gram).clamp(min=0)  # |w_j|^2 - <w_i, w_j>^2 / |w_i|^2
        resid = torch.where((c > 0) & (sq[:, None] > 0), resid, torch.inf)
    else:
        c = torch.ones_like(gram)
        resid = (sq[:, None] + sq[None, :] - 2 * gram).clamp(min=0)
    resid.fill_diagonal_(torch.inf)
    return resid, c


def pair_saliencies(
    incoming: torch.Tensor, outgoing: torch.Tensor, *, scale_invariant: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Saliency matrix S[i, j] = ⟨a_j²⟩·‖w_j − C[i, j]·w_i‖² of removing neuron j in favour of i, and C.

    ``incoming`` is [n, d] (each neuron's weights with its bias appended), ``outgoing`` [d_next, n]
    (column j is a_j). Float64. The diagonal, and pairs with a non-positive scale when
    ``scale_invariant``, are +inf; C is all ones unless ``scale_invariant``.
    """
    resid, c = _residuals(incoming, scale_invariant)
    return _saliency(resid, outgoing.double().pow(2).mean(0)), c


def _saliency(resid: torch.Tensor, mean_sq: torch.Tensor) -> torch.Tensor:
    """resid · ⟨a_j²⟩ with ∞ kept ∞ where a_j = 0 (∞ · 0 would be NaN, which argmin would pick)."""
    return torch.where(torch.isinf(resid), torch.inf, resid * mean_sq)


def _linear(model: nn.Module, site: str) -> nn.Linear:
    module = model.get_submodule(site)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"surgery layer {site!r} must be an nn.Linear, got {type(module).__name__}")
    return module


def _check_untied(model: nn.Module, layer: NeuronLayer, fc_in: nn.Linear, fc_out: nn.Linear) -> None:
    mine = {id(p) for p in (*fc_in.parameters(), *fc_out.parameters())}
    for name, module in model.named_modules():
        if name in (layer.incoming, layer.outgoing):
            continue
        for p in module.parameters(recurse=False):
            if id(p) in mine:
                raise ValueError(f"layer {layer.incoming!r} -> {layer.outgoing!r} shares a weight with {name!r} "
                                 "(tied weights); merging would change both: untie them first")


@torch.no_grad()
def _merge_layer(model: nn.Module, layer: NeuronLayer, cfg: SurgeryConfig) -> tuple[torch.Tensor, list[Merge]]:
    fc_in, fc_out = _linear(model, layer.incoming), _linear(model, layer.outgoing)
    n = fc_in.out_features
    if fc_out.in_features != n:
        raise ValueError(f"layer {layer.incoming!r} has {n} neurons but {layer.outgoing!r} reads "
                         f"{fc_out.in_features} inputs: they are not consecutive")
    if cfg.scale_invariant and not layer.positively_homogeneous:
        raise ValueError(f"scale_invariant merging of layer {layer.incoming!r} needs a positively homogeneous "
                         "activation (ReLU); use scale_invariant=False")
    if cfg.n_merges is not None and cfg.n_merges >= n:
        raise ValueError(f"n_merges={cfg.n_merges} would remove every neuron of {layer.incoming!r} (width {n})")
    _check_untied(model, layer, fc_in, fc_out)
    bias = fc_in.bias if fc_in.bias is not None else fc_in.weight.new_zeros(n)
    w = torch.cat([fc_in.weight, bias[:, None]], dim=1)
    resid, c = _residuals(w, cfg.scale_invariant)  # fixed while merging: only the outgoing weights change
    a = fc_out.weight.double().clone()
    s = _saliency(resid, a.pow(2).mean(0))
    keep = torch.ones(n, dtype=torch.bool, device=a.device)
    merges: list[Merge] = []
    limit = n - 1 if cfg.n_merges is None else cfg.n_merges
    while len(merges) < limit:
        flat = int(torch.argmin(s))
        i, j = divmod(flat, n)
        if not torch.isfinite(s[i, j]) or (cfg.max_saliency is not None and s[i, j] > cfg.max_saliency):
            break
        merges.append(Merge(layer.incoming, j, i, float(c[i, j]), float(s[i, j])))
        a[:, i] += c[i, j] * a[:, j]
        a[:, j] = 0
        keep[j] = False
        s[j, :] = torch.inf  # j can no longer absorb nor be removed
        s[:, j] = torch.inf
        s[:, i] = torch.where(keep, _saliency(resid[:, i], a[:, i].pow(2).mean()), torch.inf)  # i now carries more
    fc_out.weight.copy_(a.to(fc_out.weight.dtype))
    return keep, merges


def merge_neurons(
    model: nn.Module, config: SurgeryConfig, layers: Sequence[NeuronLayer] | None = None
) -> SurgeryResult:
    """Merge near-duplicate neurons of each layer (default: :func:`neuron_layers`) into their twins.

    Works on a deep copy; the input model is not changed. Layers are processed in the order given, each
    on the weights left by the previous one. Uses no data.
    """
    merged = copy.deepcopy(model)
    keep: dict[str, torch.Tensor] = {}
    merges: list[Merge] = []
    for layer in neuron_layers(merged) if layers is None else layers:
        keep[layer.incoming], found = _merge_layer(merged, layer, config)
        merges += found
    return SurgeryResult(merged, keep, merges)
