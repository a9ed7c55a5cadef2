"""The local-function-approximation engine behind every perturbation and gradient attribution.

Han, Srinivas & Lakkaraju (2022), "Which Explanation Should I Choose? A Function Approximation
Perspective to Characterizing Post Hoc Explanations": an explanation is the parameter ``w`` of a
simple surrogate fitted to ``f`` around ``x``::

    w* = argmin_w  E_{ξ ~ Z}  ℓ(f, g_w, x, ξ)

Two losses cover the eight classic methods, and both have closed forms, so no optimiser runs:

* **gradient matching** (gradient, input×gradient, SmoothGrad, Integrated Gradients):
  ``w = Σ_s q_s · (∂x'/∂ξ) ⊙ ∇f_t(x'_s)`` — a weighted mean gradient over the neighbourhood
  (:func:`mean_gradient`);
* **weighted squared loss** (LIME, KernelSHAP, C-LIME, occlusion): ``f_t(x'_s) ≈ w·z_s + c`` solved by
  weighted least squares (:func:`assay.attribution.surrogates.weighted_lstsq`) on the outputs
  gathered by :func:`outputs_at`.

All rows (examples × neighbourhood samples) are evaluated in rectangular blocks (:func:`blocks`) of
at most ``chunk`` rows, built by broadcasting (no per-row gathers), with the chunk size from a single
memory budget (:func:`chunk_rows`). Several targets per example are
supported everywhere (a ``[B, K]`` target gives values ``[B, K, *x]``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import nn

from assay.chunks import blocks, chunk_rows, row_bytes
from assay.config import ConfigError

__all__ = [
    "Attribution",
    "EngineConfig",
    "OutputKind",
    "select_output",
    "resolve_targets",
    "expand_baseline",
    "check_model",
    "chunk_rows",
    "mean_gradient",
    "outputs_at",
    "Probe",
    "probe",
    "target_outputs",
    "finish",
]

OutputKind = Literal["logit", "log_softmax", "probability"]
RowFn = Callable[[slice, slice], torch.Tensor]
"""``(example slice, sample slice) -> perturbed inputs [nb, ns, *x]`` of one block."""


class Attribution(NamedTuple):
    """An attribution of model outputs to input features (the same fields for every method).

    With a target of shape ``[B]`` (or an int, or None) ``values`` is ``[B, *x]`` and per-target
    fields are ``[B]``; with targets ``[B, K]`` they are ``[B, K, *x]`` and ``[B, K]``.
    """

    values: torch.Tensor
    """Attributions, shaped like the input (with a target axis after the batch when K targets)."""
    target: torch.Tensor
    """The explained output index per example (long)."""
    output: torch.Tensor
    """f_t(x), the explained output at the input (after the ``output`` transform)."""
    baseline_output: torch.Tensor
    """f_t(x'), the explained output at the method's reference input; NaN for methods without one
    (gradient, SmoothGrad, C-LIME)."""
    completeness_gap: torch.Tensor
    """Σ values − (f_t(x) − f_t(x')): IG's convergence delta, KernelSHAP's efficiency gap; NaN when the
    method has no reference input."""
    intercept: torch.Tensor
    """The fitted surrogate's bias (LIME, KernelSHAP, C-LIME); NaN for methods without one."""
    method: str
    """Name of the method that produced this attribution."""


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Settings shared by every engine method.

    Each method's config class also names the method and states its capabilities as class constants
    (not fields); :mod:`assay.attribution.registry` builds the method table from them.
    """

    name: ClassVar[str] = ""
    """The method's name in the registry and on the command line ('' for a base class)."""
    uses_baseline: ClassVar[bool] = False
    """The method compares x with a reference input: it takes ``baseline=`` and reports f_t(baseline)."""
    feature_groups: ClassVar[bool] = False
    """The method takes ``feature_mask=`` and gives each feature group one score, written to every
    element of the group (a token's whole embedding, an image patch)."""
    complete: ClassVar[bool] = False
    """Its scores should sum to f_t(x) − f_t(baseline) (IG's completeness, KernelSHAP's efficiency)."""
    stochastic: ClassVar[bool] = False
    """It draws random numbers, from ``generator=`` or else from its ``seed`` field."""
    budget_field: ClassVar[str | None] = None
    """The field that sets the model evaluations per example (IG's ``steps``, a sample count); None: fixed."""

    output: OutputKind = "logit"
    """Which output is explained: raw logits, log-softmax (loss-like, invariant to a shared logit
    shift) or softmax probabilities."""
    memory_budget_mb: float = 128.0
    """Memory for one chunk of perturbed rows (activations and gradients); the chunk size is
    derived from it by measuring the model's activations on the input batch. 128 MB keeps a chunk's
    working set near a server CPU's L3 cache (measured on an idle 2-core EPYC, 32 MB L3: SmoothGrad and
    occlusion on the benchmark CNN ran 1.5–1.9× faster than at 256 MB)."""

    def __post_init__(self) -> None:
        if self.output not in ("logit", "log_softmax", "probability"):
            raise ConfigError(f"output must be 'logit', 'log_softmax' or 'probability', got {self.output!r}")
        if not self.memory_budget_mb > 0:
            raise ConfigError(f"memory_budget_mb must be positive, got {self.memory_budget_mb}")


def select_output(y: torch.Tensor, output: OutputKind) -> torch.Tensor:
    """Apply the output transform to model outputs ``[n, C]``."""
    if not isinstance(y, torch.Tensor):
        logits = getattr(y, "logits", None)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"the model must return a tensor [n, C] of outputs, got {type(y).__name__}")
        y = logits
    if y.dim() != 2:
        raise ValueError(
            f"the model must return outputs of shape [n, C] (one row per input), got {tuple(y.shape)}; "
            "wrap it so that it returns the scores to explain"
        )
    if output == "logit":
        return y
    if output == "log_softmax":
        return torch.log_softmax(y, dim=-1)
    return torch.softmax(y, dim=-1)


def check_model(model: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Refuse models whose batch rows interact (BatchNorm in training mode) or are random (dropout)."""
    if not isinstance(model, nn.Module):
        return
    for name, m in model.named_modules():
        if m.training and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout2d)):
            raise ValueError(
                f"module {name or type(model).__name__!r} ({type(m).__name__}) is in training mode; "
                "attributions batch many perturbed rows together, so call model.eval() first"
            )


def resolve_targets(
    y: torch.Tensor, target: int | torch.Tensor | None
) -> tuple[torch.Tensor, bool]:
    """Targets as a ``[B, K]`` long tensor, and whether the caller asked for a single target per row.

    ``None`` takes the argmax of ``y`` ``[B, C]``; an int applies to every row; ``[B]`` one per row;
    ``[B, K]`` several per row. Out-of-range targets raise ``ValueError``.
    """
    B, C = y.shape
    if target is None:
        t = y.argmax(dim=1)
    elif isinstance(target, int) and not isinstance(target, bool):
        t = torch.full((B,), target, dtype=torch.long, device=y.device)
    elif isinstance(target, torch.Tensor):
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
        t = target.to(device=y.device, dtype=torch.long)
        if t.dim() == 0:
            t = t.expand(B)
        if t.dim() > 2 or t.shape[0] != B:
            raise ValueError(f"target must be an int, [B] or [B, K] with B = {B}; got shape {tuple(target.shape)}")
    else:
        raise TypeError(f"target must be None, an int or a tensor of class indices, got {type(target).__name__}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= C):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ValueError(f"target {bad} is out of range for a model with {C} outputs (valid: 0..{C - 1})")
    single = t.dim() == 1
    return (t[:, None] if single else t), single


def expand_baseline(x: torch.Tensor, baseline: float | torch.Tensor | None) -> torch.Tensor:
    """A baseline ``[B, *x]`` from a scalar, ``[*x]``, ``[1, *x]`` or ``[B, *x]`` (default 0)."""
    if baseline is None:
        return torch.zeros_like(x)
    if not isinstance(baseline, torch.Tensor):
        return torch.full_like(x, float(baseline))
    b = baseline.to(device=x.device, dtype=x.dtype)
    if b.dim() == x.dim() - 1:
        b = b[None]
    if b.dim() != x.dim() or any(bs not in (1, xs) for bs, xs in zip(b.shape, x.shape)):
        raise ValueError(
            f"baseline of shape {tuple(baseline.shape)} does not fit input of shape {tuple(x.shape)}; "
            f"pass a scalar, a tensor of shape {tuple(x.shape[1:])} or {tuple(x.shape)}"
        )
    return b.expand_as(x)


class Probe(NamedTuple):
    """What one forward on the inputs (and the baselines) tells an engine method."""

    targets: torch.Tensor
    """Targets ``[B, K]`` (long)."""
    output: torch.Tensor
    """f_t(x) ``[B, K]``."""
    single: bool
    """Whether the caller asked for one target per example."""
    row_bytes: float
    """Activation bytes per input row (for :func:`chunk_rows`)."""
    baseline_output: torch.Tensor | None
    """f_t(b) ``[B, K]`` when baselines were given."""


def probe(
    model: Callable, x: torch.Tensor, target: int | torch.Tensor | None, output: OutputKind,
    baseline: torch.Tensor | None = None,
) -> Probe:
    """One forward on ``x`` (stacked with ``baseline`` ``[B, *x]`` when given, so f_t(b) costs no extra call)."""
    check_model(model)
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError("x must be a batched tensor [B, ...]")
    B = x.shape[0]
    inp = x if baseline is None else torch.cat([x, baseline])
    per_row, y = row_bytes(model, inp)
    y = select_output(y, output)
    if y.shape[0] != inp.shape[0]:
        raise ValueError(f"the model returned {y.shape[0]} rows for {inp.shape[0]} inputs")
    t, single = resolve_targets(y[:B], target)
    base = None if baseline is None else y[B:].gather(1, t)
    return Probe(t, y[:B].gather(1, t), single, per_row, base)


def target_outputs(
    model: Callable, x: torch.Tensor, target: int | torch.Tensor | None, output: OutputKind
) -> tuple[torch.Tensor, torch.Tensor, bool, float]:
    """One forward on ``x``: (targets ``[B, K]``, f_t(x) ``[B, K]``, single-target flag, bytes/row)."""
    p = probe(model, x, target, output)
    return p.targets, p.output, p.single, p.row_bytes


def _check_float(x: torch.Tensor) -> None:
    if not x.dtype.is_floating_point:
        raise TypeError(
            f"gradient methods need floating-point inputs, got {x.dtype}; for token ids attribute at the "
            "embedding layer (assay.attribution.text), or use a perturbation method"
        )


def _span(sl: slice) -> int:
    return sl.stop - sl.start


def mean_gradient(
    model: Callable,
    x: torch.Tensor,
    targets: torch.Tensor,
    rows: RowFn,
    weights: torch.Tensor,
    *,
    output: OutputKind,
    chunk: int,
    abs_: bool = False,
) -> torch.Tensor:
    """Σ_s weights[s] · ∇_x' f_t(x'_s) (or of |∇| with ``abs_``) for every example and target, as ``[B, K, *x]``.

    ``rows(examples, samples)`` (two slices) builds the perturbed inputs of a block as
    ``[nb, ns, *x]``; blocks of at most ``chunk`` rows run one forward and K backwards each. The
    weights enter as the backward's output gradient (so no per-row rescaling pass) and the sum over a
    block's samples is one contiguous reduction.
    """
    _check_float(x)
    B, K = targets.shape
    S = weights.shape[0]
    shape = tuple(x.shape[1:])
    whole = S <= chunk  # every block holds all samples of its examples: each result is written once
    acc = (torch.empty if whole else torch.zeros)((B, K, *shape), dtype=x.dtype, device=x.device)
    w_all = weights.to(device=x.device, dtype=x.dtype)
    for exs, ss in blocks(B, S, chunk):
        nb, ns = _span(exs), _span(ss)
        with torch.enable_grad():
            pts = rows(exs, ss).reshape(nb * ns, *shape).detach().requires_grad_(True)
            y = select_output(model(pts), output)
            if not y.requires_grad:
                raise RuntimeError(
                    "the model output does not depend on its input through differentiable operations "
                    "(no gradient path); gradient methods cannot explain it"
                )
            C = y.shape[1]
            w = w_all[ss]
            src = (torch.ones_like(w) if abs_ else w).view(1, ns, 1).expand(nb, ns, 1)
            for k in range(K):
                go = torch.zeros((nb, ns, C), dtype=y.dtype, device=y.device)
                go.scatter_(2, targets[exs, k].view(nb, 1, 1).expand(nb, ns, 1), src.to(y.dtype))
                (g,) = torch.autograd.grad(y, pts, go.view(nb * ns, C), retain_graph=k < K - 1, allow_unused=True)
                if g is None:
                    raise RuntimeError(
                        "the model output does not depend on its input through differentiable operations "
                        "(no gradient path); gradient methods cannot explain it"
                    )
                g = g.view(nb, ns, *shape)
                if abs_:
                    part = torch.einsum("s,bs...->b...", w, g.abs())
                else:
                    part = g[:, 0] if ns == 1 else g.sum(1)
                if whole:
                    acc[exs, k] = part
                else:
                    acc[exs, k] += part
    return acc


def outputs_at(
    model: Callable,
    x: torch.Tensor,
    targets: torch.Tensor,
    rows: RowFn,
    n_samples: int,
    *,
    output: OutputKind,
    chunk: int,
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """f_t at every perturbed row: ``[B, K, S]``; plus ``distance(x [nb, *x], x' [nb, ns, *x]) -> [nb, ns]``
    as ``[B, S]`` if given. ``rows`` builds blocks as in :func:`mean_gradient`."""
    B, K = targets.shape
    S = n_samples
    shape = tuple(x.shape[1:])
    ys = torch.empty((B, K, S), dtype=torch.float64, device=x.device)
    dist = torch.empty((B, S), dtype=torch.float64, device=x.device) if distance is not None else None
    with torch.no_grad():
        for exs, ss in blocks(B, S, chunk):
            nb, ns = _span(exs), _span(ss)
            pts = rows(exs, ss)
            y = select_output(model(pts.reshape(nb * ns, *shape)), output).view(nb, ns, -1)
            ys[exs, :, ss] = y.gather(2, targets[exs].view(nb, 1, K).expand(nb, ns, K)).transpose(1, 2).to(torch.float64)
            if dist is not None:
                dist[exs, ss] = distance(x[exs], pts).to(torch.float64)
    return ys, dist


def finish(
    values: torch.Tensor,
    targets: torch.Tensor,
    out: torch.Tensor,
    single: bool,
    method: str,
    *,
    baseline_output: torch.Tensor | None = None,
    intercept: torch.Tensor | None = None,
) -> Attribution:
    """Assemble an :class:`Attribution` from ``[B, K, ...]`` pieces, dropping K for single targets."""
    nan = torch.full_like(out, float("nan"))
    base = nan if baseline_output is None else baseline_output.to(out.dtype)
    gap = nan if baseline_output is None else values.flatten(2).sum(-1).to(out.dtype) - (out - base)
    icpt = nan if intercept is None else intercept.to(out.dtype)
    if single:
        values, targets, out, base, gap, icpt = (t[:, 0] for t in (values, targets, out, base, gap, icpt))
    return Attribution(values, targets, out.detach(), base.detach(), gap.detach(), icpt.detach(), method)
