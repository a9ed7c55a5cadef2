"""Per-example and per-group gradients of a model output, for any ``nn.Module``.

Per-example gradients g_i = ∇_θ f(z_i; θ) are computed with ``torch.func``: ``vmap(grad(f))`` over
the batch, where ``f`` calls the model functionally (``functional_call``) on one example. Group
gradients (Ley, Srinivas, Zhang, Rusak & Lakkaraju 2024, "Generalized Group Data Attribution")
need no per-example work: g_G = Σ_{i∈G} g_i = ∇_θ Σ_{i∈G} f(z_i; θ), one ordinary backward pass per
group (vectorised over groups with ``vmap``, each group a padded batch).

Model-output functions (Park et al. 2023, TRAK, classification):
  margin  f(z; θ) = logit_y − logsumexp_{j≠y} logit_j = log(p_y / (1 − p_y))
  loss    ℓ(z; θ) = −log p_y  (cross-entropy)
and the out-to-loss weight Q = 1 − p_y. For sequences, the per-row next-token loss
ℓ(z; θ) = mean over positions t with a target of −log p(y_t | x_≤t).

The model must treat examples independently (no batch-norm in training mode) and must not be
shuffled between featurisation calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = [
    "OutputFn",
    "margin",
    "cross_entropy",
    "next_token_loss",
    "out_to_loss",
    "output_fn",
    "ParamSelection",
    "select_parameters",
    "per_example_grads",
    "group_grads",
    "flat_grad",
]

OutputFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(logits [B, C], targets [B]) -> per-example values [B]``."""


def margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """TRAK's classification margin logit_y − logsumexp_{j≠y} logit_j, per example ``[B]``."""
    correct = logits.gather(-1, targets[..., None]).squeeze(-1)
    others = logits.scatter(-1, targets[..., None], float("-inf"))
    return correct - torch.logsumexp(others, dim=-1)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy −log p_y ``[B]``."""
    return torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row mean next-token cross-entropy ``[B]`` of logits ``[B, T, V]`` over the positions whose
    target ``[B, T]`` is not -100 (a row without any target gives 0)."""
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return ce.sum(1) / (targets != -100).sum(1).clamp_min(1)


def out_to_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """TRAK's out-to-loss weight Q = 1 − p_y ``[B]``."""
    p = torch.softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return 1.0 - p


def output_fn(name: Literal["margin", "loss"]) -> OutputFn:
    """The output function called ``name``: ``"margin"`` (TRAK) or ``"loss"`` (TracIn, IF)."""
    if name == "margin":
        return margin
    if name == "loss":
        return cross_entropy
    raise ValueError(f"unknown output function {name!r}; use 'margin' or 'loss'")


class ParamSelection(NamedTuple):
    """The parameters that gradients are taken with respect to."""

    names: tuple[str, ...]
    """Parameter names, in ``model.named_parameters()`` order."""
    shapes: tuple[torch.Size, ...]
    """Their shapes."""

    @property
    def numel(self) -> int:
        """Total number of selected scalars P."""
        return sum(int(torch.Size(s).numel()) for s in self.shapes)


def select_parameters(model: nn.Module, names: Sequence[str] | None = None) -> ParamSelection:
    """Select parameters by name or by module prefix (``"fc1"`` selects ``fc1.weight`` and ``fc1.bias``).

    ``None`` selects every parameter that requires grad. A selected parameter that does not require
    grad, or a name matching nothing, raises ``ValueError``.
    """
    params = dict(model.named_parameters())
    if names is None:
        chosen = [n for n, p in params.items() if p.requires_grad]
        if not chosen:
            raise ValueError(
                f"model {type(model).__name__} has no parameter that requires grad; "
                "call p.requires_grad_(True) on the parameters to attribute through"
            )
    else:
        if isinstance(names, str):
            names = [names]
        chosen_set: set[str] = set()
        for name in names:
            hits = [n for n in params if n == name or n.startswith(name + ".")]
            if not hits:
                raise ValueError(
                    f"{name!r} names no parameter or module of {type(model).__name__}; "
                    f"parameters are: {', '.join(params)}"
                )
            chosen_set.update(hits)
        chosen = [n for n in params if n in chosen_set]
        frozen = [n for n in chosen if not params[n].requires_grad]
        if frozen:
            raise ValueError(
                f"parameters {', '.join(frozen)} do not require grad; attribution needs their gradients — "
                "call .requires_grad_(True) on them or leave them out of the selection"
            )
    return ParamSelection(tuple(chosen), tuple(params[n].shape for n in chosen))


def _check_batch(inputs: torch.Tensor, targets: torch.Tensor) -> None:
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"inputs and targets disagree on the number of examples: {inputs.shape[0]} vs {targets.shape[0]}"
        )


def per_example_grads(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    out_fn: OutputFn = cross_entropy,
    params: Sequence[str] | ParamSelection | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Per-example gradients ``[n, P]`` of ``out_fn(model(x_i), y_i)`` w.r.t. the selected parameters,
    flattened and concatenated in selection order; ``vmap(grad)`` over chunks of ``chunk_size``."""
    sel = params if isinstance(params, ParamSelection) else select_parameters(model, params)
    _check_batch(inputs, targets)
    all_params = dict(model.named_parameters())
    frozen = {n: p.detach() for n, p in all_params.items() if n not in sel.names}
    buffers = dict(model.named_buffers())
    theta = tuple(all_params[n].detach() for n in sel.names)

    def f(ps: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        state = {**frozen, **dict(zip(sel.names, ps)), **buffers}
        out = functional_call(model, state, (x.unsqueeze(0),))
        return out_fn(out, y.unsqueeze(0)).sum()

    g = vmap(grad(f), in_dims=(None, 0, 0))
    chunks = []
    for start in range(0, inputs.shape[0], chunk_size):
        x, y = inputs[start : start + chunk_size], targets[start : start + chunk_size]
        parts = g(theta, x, y)
        chunks.append(torch.cat([p.reshape(x.shape[0], -1) for p in parts], dim=1))
    if not chunks:
        return torch.zeros(0, sel.numel, dtype=theta[0].dtype)
    return torch.cat(chunks)


def flat_grad(
    model: nn.Module, value: torch.Tensor, sel: ParamSelection, *, create_graph: bool = False
) -> torch.Tensor:
    """∇ of a scalar ``value`` w.r.t. the selected parameters, flattened ``[P]``."""
    params = dict(model.named_parameters())
    gs = torch.autograd.grad(value, [params[n] for n in sel.names], create_graph=create_graph, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(params[n]) if g is None else g).reshape(-1) for n, g in zip(sel.names, gs)]
    )


def _group_loop(model, inputs, targets, members, weights, out_fn, sel, out):
    for row, idx in members:
        value = out_fn(model(inputs[idx]), targets[idx])
        value = (value if weights is None else value * weights[idx]).sum()
        out[row] = flat_grad(model, value, sel).detach()


def group_grads(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    groups: torch.Tensor,
    *,
    n_groups: int | None = None,
    out_fn: OutputFn = cross_entropy,
    params: Sequence[str] | ParamSelection | None = None,
    weights: torch.Tensor | None = None,
    groups_per_call: int | None = None,
    vectorize: bool = True,
) -> torch.Tensor:
    """Group gradients ``[K, P]``: g_G = ∇_θ Σ_{i∈G} w_i f(z_i), one backward pass per group (GGDA).

    ``groups [n]`` holds each example's group id in ``0..K−1``; ``weights [n]`` (default 1) are
    constants multiplying each example's output (e.g. TRAK's Q_i, or random signs). With ``vectorize``
    the per-group backward passes run together: ``vmap(grad)`` over ``groups_per_call`` groups at a
    time (default: as many as keep the ``[groups, P]`` output under 2²⁶ floats), each group a zero-weight-padded batch (groups sorted by size, so padding stays small); the
    model sees whole group batches, never single examples. ``vectorize=False`` loops over groups.
    """
    sel = params if isinstance(params, ParamSelection) else select_parameters(model, params)
    _check_batch(inputs, targets)
    groups = torch.as_tensor(groups, dtype=torch.long)
    if groups.shape != (inputs.shape[0],):
        raise ValueError(f"groups must be [n] = [{inputs.shape[0]}] group ids, got {tuple(groups.shape)}")
    if weights is not None:
        weights = torch.as_tensor(weights).detach()
        if weights.shape != (inputs.shape[0],):
            raise ValueError(f"weights must be [n] = [{inputs.shape[0]}], got {tuple(weights.shape)}")
    if groups_per_call is None:
        groups_per_call = max(1, 2**26 // max(1, sel.numel))
    if groups_per_call < 1:
        raise ValueError(f"groups_per_call must be ≥ 1, got {groups_per_call}")
    k = int(groups.max()) + 1 if n_groups is None and groups.numel() else (n_groups or 0)
    dtype = next(model.parameters()).dtype
    out = torch.zeros(k, sel.numel, dtype=dtype)
    order = torch.argsort(groups, stable=True)
    sizes = torch.bincount(groups, minlength=k)
    starts = torch.cumsum(sizes, 0) - sizes
    members = [(g, order[int(starts[g]) : int(starts[g] + sizes[g])]) for g in range(k) if int(sizes[g]) > 0]
    if not vectorize:
        _group_loop(model, inputs, targets, members, weights, out_fn, sel, out)
        return out
    all_params = dict(model.named_parameters())
    frozen = {n: p.detach() for n, p in all_params.items() if n not in sel.names}
    buffers = dict(model.named_buffers())
    theta = tuple(all_params[n].detach() for n in sel.names)

    def f(ps: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        state = {**frozen, **dict(zip(sel.names, ps)), **buffers}
        return (out_fn(functional_call(model, state, (x,)), y) * w).sum()

    g = vmap(grad(f), in_dims=(None, 0, 0, 0))
    members.sort(key=lambda m: m[1].numel())
    for c in range(0, len(members), groups_per_call):
        chunk = members[c : c + groups_per_call]
        width = chunk[-1][1].numel()
        idx = torch.zeros(len(chunk), width, dtype=torch.long)
        w = torch.zeros(len(chunk), width, dtype=dtype)
        for r, (_, m) in enumerate(chunk):
            idx[r, : m.numel()] = m
            w[r, : m.numel()] = 1.0 if weights is None else weights[m].to(dtype)
        parts = g(theta, inputs[idx], targets[idx], w)
        rows = torch.tensor([gid for gid, _ in chunk])
        out[rows] = torch.cat([p.reshape(len(chunk), -1) for p in parts], dim=1)
    return out
