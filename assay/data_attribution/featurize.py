"""Gradient features: projected per-example (or per-group) gradients of a model output.

φ_i = Rᵀ ∇_θ f(z_i; θ) / √k (Park et al. 2023, "TRAK: Attributing Model Behavior at Scale"), with R
from :mod:`assay.data_attribution.projection`. Two paths that give the same distribution of R:

- ``"dense"``: per-example gradients by ``vmap(grad)`` (any module), projected by a block-wise
  regenerated dense R; memory ``batch_size × P + block_rows × k``.
- ``"factored"``: every selected parameter belongs to an ``nn.Linear``; forward hooks capture each
  layer's input ā and one backward pass of Σ_b f(z_b) gives each example's output gradient s, then
  φ = Σ_layers Σ_t (Uᵀ s_t) ⊙ (Vᵀ ā_t) / √k — the per-example gradient is never formed.

``"auto"`` picks ``"factored"`` when it applies. :func:`projection_matrix` materialises the R a
path uses (small models only), so tests can check φ = R_denseᵀ g exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import nn

from assay.data_attribution.grads import (
    OutputFn,
    ParamSelection,
    cross_entropy,
    per_example_grads,
    select_parameters,
)
from assay.data_attribution.projection import (
    ProjectionConfig,
    dense_matrix,
    khatri_rao_matrix,
    layer_factors,
    mixing_matrix,
    project_dense,
    project_factored,
)

__all__ = ["LinearPlan", "linear_plan", "featurize", "projection_matrix", "check_inputs"]

Method = Literal["auto", "factored", "dense"]


class LinearPlan(NamedTuple):
    """One linear layer on the factored path."""

    name: str
    """Module name."""
    module: nn.Linear
    """The layer."""
    weight: bool
    """Whether its weight is selected."""
    bias: bool
    """Whether its bias is selected."""


def linear_plan(model: nn.Module, sel: ParamSelection) -> list[LinearPlan] | None:
    """The linear layers covering the selection, or None if some selected parameter is not a
    ``nn.Linear`` weight/bias."""
    owners: dict[str, set[str]] = {}
    for pname in sel.names:
        mod_name, _, leaf = pname.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        if not isinstance(mod, nn.Linear) or leaf not in ("weight", "bias"):
            return None
        owners.setdefault(mod_name, set()).add(leaf)
    return [
        LinearPlan(n, model.get_submodule(n), "weight" in leaves, "bias" in leaves) for n, leaves in owners.items()
    ]


def check_inputs(inputs: torch.Tensor, example_shape: tuple[int, ...] | None, what: str = "inputs") -> None:
    """Raise ``ValueError`` unless ``inputs`` is a batch ``[n, *example_shape]``."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(inputs).__name__}")
    if example_shape is not None and tuple(inputs.shape[1:]) != tuple(example_shape):
        raise ValueError(
            f"{what} have example shape {tuple(inputs.shape[1:])} but the attributor was fitted on examples of "
            f"shape {tuple(example_shape)}; pass a batch [n, {', '.join(map(str, example_shape))}] "
            "(add a leading batch dimension for a single point)"
        )


def _factored_batch(
    model: nn.Module,
    plan: list[LinearPlan],
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    out_fn: OutputFn,
    k: int,
) -> torch.Tensor:
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def make(name: str):
        def hook(module, args, output):
            if name in outputs:
                raise RuntimeError(
                    f"linear layer {name!r} ran twice in one forward pass (weight sharing); use method='dense'"
                )
            inputs[name] = args[0].detach()
            outputs[name] = output

        return hook

    handles = [p.module.register_forward_hook(make(p.name)) for p in plan]
    try:
        with torch.enable_grad():
            value = out_fn(model(x), y).sum()
            missing = [p.name for p in plan if p.name not in outputs]
            if missing:
                raise RuntimeError(f"linear layers {missing} did not run in the forward pass")
            grads = torch.autograd.grad(value, [outputs[p.name] for p in plan], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    phi = torch.zeros(x.shape[0], k, dtype=value.dtype, device=value.device)  # k: the factored width
    for p, s in zip(plan, grads):
        if s is None:
            continue
        a = inputs[p.name]
        parts = ([a] if p.weight else []) + ([torch.ones_like(a[..., :1])] if p.bias else [])
        a_bar = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        u, v = factors[p.name]
        phi += project_factored(a_bar, s, u, v)
    return phi


def _factors(plan: list[LinearPlan], cfg: ProjectionConfig, dtype: torch.dtype):
    out = {}
    for p in plan:
        d_in = (p.module.in_features if p.weight else 0) + (1 if p.bias else 0)
        out[p.name] = layer_factors(cfg, p.name, p.module.out_features, d_in, dtype)
    return out


def resolve_method(model: nn.Module, sel: ParamSelection, cfg: ProjectionConfig, method: Method):
    plan = linear_plan(model, sel) if cfg.dim is not None else None
    if method == "factored" and plan is None:
        raise ValueError(
            "method='factored' needs every selected parameter to be an nn.Linear weight or bias "
            "and a projection dim; use method='dense' or 'auto'"
        )
    if method not in ("auto", "factored", "dense"):
        raise ValueError(f"method must be 'auto', 'factored' or 'dense', got {method!r}")
    return plan if method in ("auto", "factored") else None


def featurize(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    projection: ProjectionConfig,
    out_fn: OutputFn = cross_entropy,
    params: Sequence[str] | ParamSelection | None = None,
    method: Method = "auto",
    batch_size: int = 256,
) -> torch.Tensor:
    """Projected per-example gradients ``[n, k]`` (``[n, P]`` when ``projection.dim`` is None)."""
    sel = params if isinstance(params, ParamSelection) else select_parameters(model, params)
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs ({inputs.shape[0]}) and targets ({targets.shape[0]}) differ in length")
    plan = resolve_method(model, sel, projection, method)
    dtype = next(model.parameters()).dtype
    chunks = []
    if plan is not None:
        assert projection.dim is not None
        factors = _factors(plan, projection, dtype)
        mix = mixing_matrix(projection, dtype)
        for start in range(0, inputs.shape[0], batch_size):
            x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
            phi = _factored_batch(model, plan, factors, x, y, out_fn, projection.dim * projection.oversample).detach()
            chunks.append(phi if mix is None else phi @ mix)
    else:
        for start in range(0, inputs.shape[0], batch_size):
            x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
            g = per_example_grads(model, x, y, out_fn=out_fn, params=sel, chunk_size=batch_size)
            chunks.append(project_dense(g, projection))
    width = projection.dim if projection.dim is not None else sel.numel
    return torch.cat(chunks) if chunks else torch.zeros(0, width, dtype=dtype)


def projection_matrix(
    model: nn.Module,
    projection: ProjectionConfig,
    *,
    params: Sequence[str] | ParamSelection | None = None,
    method: Method = "auto",
) -> torch.Tensor:
    """The materialised (scaled) R ``[P, k]`` that :func:`featurize` applies to the flattened gradient
    (selection order). For tests on small models."""
    sel = params if isinstance(params, ParamSelection) else select_parameters(model, params)
    dtype = next(model.parameters()).dtype
    plan = resolve_method(model, sel, projection, method)
    if plan is None:
        return dense_matrix(projection, sel.numel, dtype)
    factors = _factors(plan, projection, dtype)
    rows: dict[str, torch.Tensor] = {}
    for p in plan:
        u, v = factors[p.name]
        if p.weight:
            rows[p.name + ".weight"] = khatri_rao_matrix(u, v[: p.module.in_features])
        if p.bias:
            rows[p.name + ".bias"] = khatri_rao_matrix(u, v[-1:])
    r = torch.cat([rows[n] for n in sel.names])
    mix = mixing_matrix(projection, dtype)
    return r if mix is None else r @ mix
