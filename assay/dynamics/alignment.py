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

Specs are provided for :class:`assay.models.mlp.MLP` (every hidden layer) and for the MLP neurons of
:class:`assay.models.transformer.Transformer` (one permutation per block: rows of ``fc_in``, columns of
``fc_out``; activation matching reads ``fc_in``'s output, the pre-GELU value, which the permutation
moves the same way). Check (spec): B = A with its hidden units permuted by π gives argsort(π).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from assay.dynamics.connectivity import State, check_same_architecture
from assay.hooks import capture

__all__ = ["PermutationSpec", "mlp_spec", "transformer_mlp_spec", "spec_for", "permute", "weight_matching",
           "activation_matching"]


@dataclass(frozen=True)
class PermutationSpec:
    """Which permutation acts on which axis of which parameter."""

    axes: Mapping[str, tuple[str | None, ...]]
    """Parameter name → one entry per axis: the permutation acting on it, or None."""
    sites: Mapping[str, str]
    """Permutation name → the site whose output's last dimension it permutes (for activation matching)."""

    def sizes(self, state: State) -> dict[str, int]:
        """Permutation name → its size, read from ``state`` (and checked to agree across parameters)."""
        out: dict[str, int] = {}
        for name, perms in self.axes.items():
            if name not in state:
                raise KeyError(f"permutation spec names parameter {name!r}, which the model does not have")
            for axis, p in enumerate(perms):
                if p is None:
                    continue
                n = state[name].shape[axis]
                if out.setdefault(p, n) != n:
                    raise ValueError(f"permutation {p!r} has size {out[p]} elsewhere but {n} on axis {axis} of {name!r}")
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


def transformer_mlp_spec(model: nn.Module) -> PermutationSpec:
    """Spec of a :class:`assay.models.transformer.Transformer`'s MLP neurons: ``mlp{i}`` per block."""
    axes: dict[str, tuple[str | None, ...]] = {}
    sites = {}
    for i in range(model.config.n_layers):
        pre = f"blocks.{i}.mlp"
        axes[f"{pre}.fc_in.weight"] = (f"mlp{i}", None)
        axes[f"{pre}.fc_in.bias"] = (f"mlp{i}",)
        axes[f"{pre}.fc_out.weight"] = (None, f"mlp{i}")
        sites[f"mlp{i}"] = f"{pre}.fc_in"
    return PermutationSpec(axes, sites)


def spec_for(model: nn.Module) -> PermutationSpec:
    """The permutation spec of an assay MLP or Transformer."""
    from assay.models.mlp import MLP
    from assay.models.transformer import Transformer

    if isinstance(model, MLP):
        return mlp_spec(model)
    if isinstance(model, Transformer):
        return transformer_mlp_spec(model)
    raise TypeError(f"no permutation spec for {type(model).__name__}; pass a PermutationSpec naming which "
                    "permutation acts on each axis of each parameter")


def _apply(spec: PermutationSpec, perms: Mapping[str, Tensor], name: str, w: Tensor, skip_axis: int | None) -> Tensor:
    for axis, p in enumerate(spec.axes.get(name, ())):
        if p is not None and axis != skip_axis:
            w = w.index_select(axis, perms[p])
    return w


def permute(state: State, spec: PermutationSpec, perms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with every permutation applied (``index_select`` on each axis it acts on)."""
    missing = sorted(set(spec.sizes(state)) - set(perms))
    if missing:
        raise KeyError(f"no permutation given for {', '.join(missing)}")
    return {k: _apply(spec, perms, k, v, None) for k, v in state.items()}


def weight_matching(
    a: State, b: State, spec: PermutationSpec, *, max_sweeps: int = 100, generator: torch.Generator,
) -> dict[str, Tensor]:
    """Permutations of B's units that maximise Σ⟨W_A, P(W_B)⟩ (coordinate descent; see the module docstring)."""
    check_same_architecture(a, b)
    sizes = spec.sizes(a)
    perms = {p: torch.arange(n) for p, n in sizes.items()}
    carried: dict[str, list[tuple[str, int]]] = {p: [] for p in sizes}
    for name, axes in spec.axes.items():
        for axis, p in enumerate(axes):
            if p is not None:
                carried[p].append((name, axis))
    names = list(sizes)
    for _ in range(max_sweeps):
        gained = False
        for idx in torch.randperm(len(names), generator=generator).tolist():
            p = names[idx]
            n = sizes[p]
            m = torch.zeros(n, n, dtype=torch.float64)
            for name, axis in carried[p]:
                wa = a[name].double().movedim(axis, 0).reshape(n, -1)
                wb = _apply(spec, perms, name, b[name].double(), axis).movedim(axis, 0).reshape(n, -1)
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


def _pearson_matrix(x: Tensor, y: Tensor) -> np.ndarray:
    x = x.double().flatten(0, -2)
    y = y.double().flatten(0, -2)
    x = (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-12)
    y = (y - y.mean(0)) / y.std(0, unbiased=False).clamp_min(1e-12)
    return (x.T @ y / x.shape[0]).numpy()


@torch.no_grad()
def activation_matching(
    model_a: nn.Module, model_b: nn.Module, inputs: Tensor, spec: PermutationSpec,
    *, forward: Callable[[nn.Module, Tensor], object] | None = None,
) -> dict[str, Tensor]:
    """Permutations of B's units maximising the summed Pearson correlation with A's units at each site,
    over ``inputs`` (one batch; sequences are pooled over positions). ``forward(model, inputs)`` runs a model
    (default ``model(inputs)``)."""
    check_same_architecture(dict(model_a.state_dict()), dict(model_b.state_dict()))
    run = forward or (lambda m, x: m(x))
    acts = []
    for model in (model_a, model_b):
        with capture(model, list(spec.sites.values())) as cap:
            run(model, inputs)
        acts.append(cap)
    perms = {}
    for p, site in spec.sites.items():
        _, cols = linear_sum_assignment(_pearson_matrix(acts[0][site], acts[1][site]), maximize=True)
        perms[p] = torch.as_tensor(cols, dtype=torch.long)
    return perms
