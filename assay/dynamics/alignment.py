"""Permutation alignment of two networks before interpolation: weight matching and activation matching.

Ainsworth, Hayase, Srinivasa 2023, "Git Re-Basin: Merging Models modulo Permutation Symmetries" (ICLR
2023; weight matching, repo ``samuela/git-re-basin``); Entezari, Sedghi, Saukh, Neyshabur 2022, "The
Role of Permutation Invariance in Linear Mode Connectivity of Neural Networks"; Lubana et al. 2023,
"Mechanistic Mode Connectivity" (activation matching by Pearson correlation, repo ``EkdeepSLubana/MMC``).

Hidden units can be permuted without changing the function. A :class:`PermutationSpec` names, for
every parameter, which permutation (if any) acts on each of its axes. Permuting B by ``perm`` means
``W_B ← W_B.index_select(axis, perm)`` on every axis that permutation acts on.

- Weight matching maximises Σ_W ⟨W_A, P(W_B)⟩ by coordinate descent: for each permutation p (in a
  random order per sweep) M_p = Σ over the (parameter, axis) pairs carrying p of W_A·W̃_Bᵀ (that axis
  moved first and the rest flattened; W̃_B has every *other* permutation applied), then
  ``linear_sum_assignment(M_p, maximize=True)``; stop after a sweep with no gain above 1e-12 (at most
  ``max_sweeps``). Biases count.
- Activation matching: the Pearson correlation matrix C_ij = corr(a^A_i, a^B_j) over probe inputs
  (and positions) at each permutation's site, one assignment per layer (permuting one hidden layer
  leaves every other layer's activations unchanged, so layers match independently).

A permutation may move *groups* of entries as units (:class:`PermAxis`): an axis of length
outer·n·inner laid out ``[outer, n, inner]`` is permuted on its middle index, so one attention head —
its Q, K and V rows of the fused ``qkv`` projection (outer 3, inner d_head) and its d_head columns of
the output projection — moves as one unit. Weight matching then flattens each head's entries into one
row of M_p (an n_heads × n_heads assignment).

Specs are provided for :class:`assay.models.mlp.MLP` (every hidden layer) and for
:class:`assay.models.transformer.Transformer` (per block: ``heads{i}`` permuting its attention heads,
``mlp{i}`` its MLP neurons — rows of ``fc_in``, columns of ``fc_out``). Activation matching reads
``fc_in``'s output for the neurons (the pre-GELU value, which the permutation moves the same way) and
the attention pattern ``attn.pattern`` ``[batch, head, query, key]`` for the heads (a head's pattern
does not change under the GL(d_head) symmetries inside a head, so two heads that compute the same
thing correlate fully). Check (spec): B = A with its hidden units permuted by π gives argsort(π).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from assay.dynamics.connectivity import State, check_same_architecture
from assay.hooks import capture

__all__ = ["PermAxis", "PermutationSpec", "mlp_spec", "transformer_spec", "spec_for", "permute", "weight_matching",
           "activation_matching"]


class PermAxis(NamedTuple):
    """A permutation acting on groups of an axis laid out ``[outer, n, inner]`` (n = the permutation's size)."""

    perm: str
    """The permutation's name."""
    outer: int = 1
    """Number of outer blocks, each holding all n units (3 for a fused Q/K/V projection)."""
    inner: int = 1
    """Consecutive entries that make one unit (d_head for an attention head)."""


AxisEntry = str | PermAxis | None
"""What acts on one axis: a permutation name (single entries), a :class:`PermAxis`, or nothing."""


def _entry(e: AxisEntry) -> PermAxis | None:
    return PermAxis(e) if isinstance(e, str) else e


def _unit_index(perm: Tensor, outer: int, inner: int) -> Tensor:
    """Entry indices of an ``[outer, n, inner]`` axis after permuting its units by ``perm``."""
    n = perm.numel()
    idx = (torch.arange(outer)[:, None, None] * n + perm[None, :, None]) * inner + torch.arange(inner)[None, None, :]
    return idx.reshape(-1)


@dataclass(frozen=True)
class PermutationSpec:
    """Which permutation acts on which axis of which parameter."""

    axes: Mapping[str, tuple[AxisEntry, ...]]
    """Parameter name → one entry per axis: the permutation acting on it (a name or a :class:`PermAxis`), or None."""
    sites: Mapping[str, str]
    """Permutation name → the site whose output carries its units (for activation matching)."""
    site_axes: Mapping[str, int] = field(default_factory=dict)
    """Permutation name → the axis of its site's output that indexes the units (default −1, the last)."""

    def sizes(self, state: State) -> dict[str, int]:
        """Permutation name → its size, read from ``state`` (and checked to agree across parameters)."""
        out: dict[str, int] = {}
        for name, entries in self.axes.items():
            if name not in state:
                raise KeyError(f"permutation spec names parameter {name!r}, which the model does not have")
            for axis, e in enumerate(map(_entry, entries)):
                if e is None:
                    continue
                length = state[name].shape[axis]
                if length % (e.outer * e.inner):
                    raise ValueError(f"axis {axis} of {name!r} has length {length}, not a multiple of "
                                     f"outer·inner = {e.outer}·{e.inner} for permutation {e.perm!r}; the spec was "
                                     "built for a model of another shape: build it from this model")
                n = length // (e.outer * e.inner)
                if out.setdefault(e.perm, n) != n:
                    raise ValueError(f"permutation {e.perm!r} has size {out[e.perm]} elsewhere but {n} on axis {axis} "
                                     f"of {name!r}; the spec does not fit this model: build it from this model")
        return out


def mlp_spec(model: nn.Module) -> PermutationSpec:
    """Spec of an :class:`assay.models.mlp.MLP`: permutation ``P{i}`` on hidden layer i (site ``act{i}``)."""
    n = model.n_hidden
    axes: dict[str, tuple[str | None, ...]] = {}
    for i in range(n):
        axes[f"fc{i}.weight"] = (f"P{i}", f"P{i - 1}" if i else None)
        axes[f"fc{i}.bias"] = (f"P{i}",)
    axes["out.weight"] = (None, f"P{n - 1}" if n else None)
    axes["out.bias"] = (None,)
    return PermutationSpec(axes, {f"P{i}": f"act{i}" for i in range(n)})


def transformer_spec(model: nn.Module, *, heads: bool = True, neurons: bool = True) -> PermutationSpec:
    """Spec of a :class:`assay.models.transformer.Transformer`: per block i, ``heads{i}`` moves whole
    attention heads (Q, K, V rows of ``qkv`` and columns of ``out``; site ``attn.pattern``, axis 1) and
    ``mlp{i}`` the MLP neurons (rows of ``fc_in``, columns of ``fc_out``; site ``fc_in``)."""
    if not (heads or neurons):
        raise ValueError("transformer_spec needs heads=True or neurons=True (otherwise nothing is permuted)")
    cfg = model.config
    axes: dict[str, tuple[AxisEntry, ...]] = {}
    sites: dict[str, str] = {}
    site_axes: dict[str, int] = {}
    for i in range(cfg.n_layers):
        if heads:
            pre, p = f"blocks.{i}.attn", f"heads{i}"
            axes[f"{pre}.qkv.weight"] = (PermAxis(p, 3, cfg.d_head), None)
            axes[f"{pre}.qkv.bias"] = (PermAxis(p, 3, cfg.d_head),)
            axes[f"{pre}.out.weight"] = (None, PermAxis(p, 1, cfg.d_head))
            sites[p], site_axes[p] = f"{pre}.pattern", 1
        if neurons:
            pre, p = f"blocks.{i}.mlp", f"mlp{i}"
            axes[f"{pre}.fc_in.weight"] = (p, None)
            axes[f"{pre}.fc_in.bias"] = (p,)
            axes[f"{pre}.fc_out.weight"] = (None, p)
            sites[p] = f"{pre}.fc_in"
    return PermutationSpec(axes, sites, site_axes)


def spec_for(model: nn.Module) -> PermutationSpec:
    """The permutation spec of an assay MLP or Transformer."""
    from assay.models.mlp import MLP
    from assay.models.transformer import Transformer

    if isinstance(model, MLP):
        return mlp_spec(model)
    if isinstance(model, Transformer):
        return transformer_spec(model)
    raise TypeError(f"no permutation spec for {type(model).__name__}; pass a PermutationSpec naming which "
                    "permutation acts on each axis of each parameter")


def _apply(spec: PermutationSpec, perms: Mapping[str, Tensor], name: str, w: Tensor, skip_axis: int | None) -> Tensor:
    for axis, e in enumerate(map(_entry, spec.axes.get(name, ()))):
        if e is not None and axis != skip_axis:
            w = w.index_select(axis, _unit_index(perms[e.perm], e.outer, e.inner).to(w.device))
    return w


def _units_first(w: Tensor, axis: int, e: PermAxis, n: int) -> Tensor:
    """``w`` as ``[n, rest]``: the units of ``axis`` first, everything else (their Q/K/V blocks, entries) flattened."""
    w = w.movedim(axis, 0)
    return w.reshape(e.outer, n, e.inner, -1).transpose(0, 1).reshape(n, -1)


def permute(state: State, spec: PermutationSpec, perms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with every permutation applied (``index_select`` on each axis it acts on)."""
    sizes = spec.sizes(state)
    missing = sorted(set(sizes) - set(perms))
    if missing:
        raise KeyError(f"no permutation given for {', '.join(missing)}")
    for p, n in sizes.items():
        if not torch.equal(torch.sort(perms[p].cpu()).values, torch.arange(n)):
            raise ValueError(f"permutation {p!r} must be a permutation of 0..{n - 1} (the model has {n} such units), "
                             f"got {perms[p].tolist()}")
    return {k: _apply(spec, perms, k, v, None) for k, v in state.items()}


def weight_matching(
    a: State, b: State, spec: PermutationSpec, *, max_sweeps: int = 100, generator: torch.Generator,
) -> dict[str, Tensor]:
    """Permutations of B's units that maximise Σ⟨W_A, P(W_B)⟩ (coordinate descent; see the module docstring)."""
    check_same_architecture(a, b)
    sizes = spec.sizes(a)
    perms = {p: torch.arange(n) for p, n in sizes.items()}
    carried: dict[str, list[tuple[str, int, PermAxis]]] = {p: [] for p in sizes}
    for name, entries in spec.axes.items():
        for axis, e in enumerate(map(_entry, entries)):
            if e is not None:
                carried[e.perm].append((name, axis, e))
    names = list(sizes)
    for _ in range(max_sweeps):
        gained = False
        for idx in torch.randperm(len(names), generator=generator).tolist():
            p = names[idx]
            n = sizes[p]
            m = torch.zeros(n, n, dtype=torch.float64)
            for name, axis, e in carried[p]:
                wa = _units_first(a[name].double(), axis, e, n)
                wb = _units_first(_apply(spec, perms, name, b[name].double(), axis), axis, e, n)
                m += wa @ wb.T
            _, cols = linear_sum_assignment(m.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)
            rows = torch.arange(n)
            if float(m[rows, new].sum() - m[rows, perms[p]].sum()) > 1e-12:
                gained = True
            perms[p] = new
        if not gained:
            break
    return perms


def _pearson_matrix(x: Tensor, y: Tensor, axis: int = -1) -> np.ndarray:
    x = x.double().movedim(axis, -1).flatten(0, -2)
    y = y.double().movedim(axis, -1).flatten(0, -2)
    x = (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-12)
    y = (y - y.mean(0)) / y.std(0, unbiased=False).clamp_min(1e-12)
    return (x.T @ y / x.shape[0]).numpy()


@torch.no_grad()
def activation_matching(
    model_a: nn.Module, model_b: nn.Module, inputs: Tensor, spec: PermutationSpec,
    *, forward: Callable[[nn.Module, Tensor], object] | None = None,
) -> dict[str, Tensor]:
    """Permutations of B's units maximising the summed Pearson correlation with A's units at each site,
    over ``inputs`` (one batch; every other axis of the site's output — batch, positions, a head's pattern
    entries — is pooled). ``forward(model, inputs)`` runs a model (default ``model(inputs)``)."""
    check_same_architecture(dict(model_a.state_dict()), dict(model_b.state_dict()))
    run = forward or (lambda m, x: m(x))
    acts = []
    for model in (model_a, model_b):
        with capture(model, list(spec.sites.values())) as cap:
            run(model, inputs)
        acts.append(cap)
    perms = {}
    for p, site in spec.sites.items():
        corr = _pearson_matrix(acts[0][site], acts[1][site], spec.site_axes.get(p, -1))
        _, cols = linear_sum_assignment(corr, maximize=True)
        perms[p] = torch.as_tensor(cols, dtype=torch.long)
    return perms
