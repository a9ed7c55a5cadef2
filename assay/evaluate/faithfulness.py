"""Faithfulness of attributions: does removing what the attribution calls important change f?

* Deletion / insertion curves (Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling for
  Explanation of Black-box Models"; Quantus's pixel flipping, Bach et al. 2015): features are set to
  a baseline (deletion) or revealed from it (insertion) in order of decreasing attribution; the
  curve p_t(step) and its trapezoid AUC over the removed fraction ∈ [0, 1].
* Faithfulness correlation (Bhatt, Weller & Moura 2020, "Evaluating and Aggregating Feature-based
  Model Explanations"): Pearson correlation over random subsets S of Σ_{i∈S} φ_i and f(x) − f(x_S→b).
* PGI / PGU (Agarwal et al. 2022, "OpenXAI"): E|f(x) − f(x + ε ⊙ m)| with Gaussian ε on the top-k
  (PGI) or the other (PGU) features by |φ|.
* Keep-top-1/p (Bhalla, Srinivas & Lakkaraju 2023, "Discriminative Feature Attributions", §6): keep
  only the top 1/p of the features by attribution, fill the rest with a baseline (DiET's random colour),
  and record whether the prediction is still the target — the insertion curve at fractions 1/p.
* Infidelity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations"):
  E_I[(Iᵀφ − (f(x) − f(x − I)))²], optionally with φ rescaled by β = E[Iᵀφ·Δf]/E[(Iᵀφ)²] (Captum's
  ``normalize``).

Attributions are passed in (this module never imports a method); every metric evaluates all its
perturbation steps as one batch of rows, cut into chunks of ``chunk`` rows. By default (``chunk=None``)
the chunk is sized from :data:`MEMORY_BUDGET_MB` and the activation bytes per row, measured by hooking
the model's leaf modules during the one forward on the unperturbed inputs that every metric needs
anyway (f_t(x)); on shared CPUs a few large calls beat many small ones, since every operator call of a
small block can stall on the thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch

from assay.chunks import blocks, chunk_rows, row_bytes
from assay.stats import pearson

__all__ = [
    "Curve",
    "perturbation_curve",
    "faithfulness_correlation",
    "prediction_gap",
    "infidelity",
    "KeepTop",
    "keep_top",
    "scores_of",
]

Output = Literal["probability", "logit", "log_softmax"]
MEMORY_BUDGET_MB = 128.0
"""Memory for one chunk of perturbed rows (their activations) when ``chunk`` is None."""


def scores_of(model: Callable, x: torch.Tensor, target: torch.Tensor, output: Output) -> torch.Tensor:
    """f_t(x) per row for targets ``[n]`` under the output transform."""
    return _select(model(x), target, output)


def _select(y: torch.Tensor, target: torch.Tensor, output: Output) -> torch.Tensor:
    """The target column of logits ``y`` under the output transform."""
    if output == "probability":
        y = y.softmax(-1)
    elif output == "log_softmax":
        y = y.log_softmax(-1)
    return y.gather(1, target[:, None])[:, 0]


def _targets(model, x, target) -> torch.Tensor:
    if target is None:
        with torch.no_grad():
            return model(x).argmax(1)
    if isinstance(target, int):
        return torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    return target.to(x.device).long()


def _start(model: Callable, x: torch.Tensor, target, output: Output, chunk: int | None
           ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """One no-grad forward on ``x``: targets ``[B]`` (argmax when None), f_t(x) ``[B]`` (float64), the
    rows per chunk (``chunk``, or sized from :data:`MEMORY_BUDGET_MB` by the activation bytes per row) and
    whether the prediction is the target ``[B]``."""
    per_row, y = row_bytes(model, x)
    t = y.argmax(1) if target is None else _targets(model, x, target)
    f0 = _select(y, t, output).double()
    if chunk is None:  # the engine's rule: a chunk's activations stay near the CPU caches
        chunk = chunk_rows(per_row, MEMORY_BUDGET_MB, backward=False)
    return t, f0, int(chunk), y.argmax(1) == t


def _batched(model, build: Callable[[slice, slice], torch.Tensor], B: int, S: int,
             target: torch.Tensor, output: Output, chunk: int, hits: torch.Tensor | None = None) -> torch.Tensor:
    """Scores ``[B, S]`` of the rows that ``build(examples, steps)`` (two slices) returns as
    ``[nb, ns, *x]`` blocks — built by broadcasting, one model call per block. ``hits`` (bool ``[B, S]``),
    when given, receives whether each row's prediction is the target."""
    out = torch.empty(B, S, dtype=torch.float64, device=target.device)
    with torch.no_grad():
        for exs, ss in blocks(B, S, chunk):
            rows = build(exs, ss)
            nb, ns = rows.shape[:2]
            t = target[exs].repeat_interleave(ns)
            y = model(rows.reshape(nb * ns, *rows.shape[2:]))
            out[exs, ss] = _select(y, t, output).double().view(nb, ns)
            if hits is not None:
                hits[exs, ss] = (y.argmax(1) == t).view(nb, ns)
    return out


def _check(x: torch.Tensor, a: torch.Tensor) -> None:
    if a.shape[0] != x.shape[0] or a.dim() != x.dim():
        raise ValueError(f"attributions {tuple(a.shape)} must be [B, ...] broadcastable to inputs {tuple(x.shape)}")
    try:
        torch.broadcast_shapes(a.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"attributions {tuple(a.shape)} do not broadcast to inputs {tuple(x.shape)}") from None


class Curve(NamedTuple):
    """A deletion or insertion curve."""

    fractions: torch.Tensor
    """Fraction of features removed (deletion) or revealed (insertion) at each step, ``[S+1]``."""
    scores: torch.Tensor
    """f_t after each step, ``[B, S+1]`` (column 0 is the unperturbed start, unless ``fractions`` were given)."""
    auc: torch.Tensor
    """Trapezoid area under scores over fractions, ``[B]``."""
    correct: torch.Tensor
    """Whether the prediction (argmax) is still the target after each step, bool ``[B, S+1]``."""


def perturbation_curve(
    model: Callable, x: torch.Tensor, attributions: torch.Tensor, target: int | torch.Tensor | None = None, *,
    mode: Literal["deletion", "insertion"] = "deletion", features_per_step: int | None = None,
    n_steps: int = 20, fractions: Sequence[float] | torch.Tensor | None = None, baseline: float | torch.Tensor = 0.0,
    output: Output = "probability", chunk: int | None = None,
) -> Curve:
    """Deletion/insertion curve: features ranked by attribution (descending, stable ties).

    Features are the elements of ``attributions`` (which broadcasts to ``x``: an ``[B, 1, H, W]`` map
    removes whole pixels). ``features_per_step`` (Quantus's pixel flipping) overrides ``n_steps``.
    ``fractions`` (non-decreasing, in [0, 1]) evaluates the curve at round(fraction · D) removed
    (deletion) or revealed (insertion) features instead of equal steps; every column is then a model call.
    """
    _check(x, attributions)
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    t, f0, chunk, hit0 = _start(model, x, target, output, chunk)
    B = x.shape[0]
    a = attributions.reshape(B, -1).to(x.device)
    D = a.shape[1]
    order = torch.argsort(a, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(D, device=x.device).expand(B, D))
    if fractions is None:
        fps = features_per_step if features_per_step is not None else max(1, -(-D // n_steps))
        S = -(-D // fps)
        counts = torch.clamp(torch.arange(S + 1, device=x.device) * fps, max=D)
    else:
        fr = torch.as_tensor(fractions, dtype=torch.float64).flatten()
        if len(fr) == 0 or bool((fr < 0).any() or (fr > 1).any() or (fr.diff() < 0).any()):
            raise ValueError(f"fractions must be non-decreasing values in [0, 1], got {fr.tolist()}")
        counts = (fr * D).round().long().to(x.device)
    base = baseline if isinstance(baseline, torch.Tensor) else torch.tensor(float(baseline))
    base = base.to(device=x.device, dtype=x.dtype).expand_as(x)
    a_shape = attributions.shape[1:]

    def steps_from(offset: int):
        def build(exs, ss):  # steps offset + ss of the curve
            m = rank[exs, None] < counts[None, ss.start + offset:ss.stop + offset, None]  # [nb, ns, D]
            if mode == "insertion":
                m = ~m
            m = m.view(*m.shape[:2], *a_shape)
            return torch.where(m, base[exs, None], x[exs, None])
        return build

    hits = torch.empty(B, len(counts), dtype=torch.bool, device=x.device)
    if fractions is not None:
        scores = _batched(model, steps_from(0), B, len(counts), t, output, chunk, hits)
    # x itself is deletion's first step and insertion's last: its score f0 comes from the first forward
    elif mode == "deletion":
        scores = torch.cat([f0[:, None], _batched(model, steps_from(1), B, S, t, output, chunk, hits[:, 1:])], 1)
        hits[:, 0] = hit0
    else:
        scores = torch.cat([_batched(model, steps_from(0), B, S, t, output, chunk, hits[:, :-1]), f0[:, None]], 1)
        hits[:, -1] = hit0
    frac = counts.double() / D
    auc = torch.trapezoid(scores, frac, dim=1)
    return Curve(frac, scores, auc, hits)


class KeepTop(NamedTuple):
    """Keep-top-1/p scores."""

    p: tuple[int, ...]
    """The kept share 1/p of each column (ascending p)."""
    correct: torch.Tensor
    """Whether the prediction is still the target with only the top round(D/p) features kept, bool ``[B, len(p)]``."""
    scores: torch.Tensor
    """f_t with only those features kept, ``[B, len(p)]``."""


def keep_top(model: Callable, x: torch.Tensor, attributions: torch.Tensor, target: int | torch.Tensor | None = None,
             *, p: Sequence[int] = (10, 20, 50, 100), baseline: float | torch.Tensor = 0.0,
             output: Output = "probability", chunk: int | None = None) -> KeepTop:
    """Keep-top-1/p (DiET §6): the top round(D/p) features by attribution (stable ties) kept, every other
    feature set to ``baseline`` (e.g. a per-image colour ``[B, C, 1, 1]``). The accuracy over examples
    (``correct.double().mean(0)``) is the paper's metric; with correctly classified x it is the agreement
    with the model's own prediction."""
    ps = tuple(sorted({int(v) for v in p}))
    if not ps or ps[0] < 1:
        raise ValueError(f"p must be integers ≥ 1 (keep the top 1/p of the features), got {list(p)}")
    curve = perturbation_curve(model, x, attributions, target, mode="insertion", fractions=[1 / v for v in ps[::-1]],
                               baseline=baseline, output=output, chunk=chunk)
    return KeepTop(ps, curve.correct.flip(1), curve.scores.flip(1))


def faithfulness_correlation(
    model: Callable, x: torch.Tensor, attributions: torch.Tensor, target: int | torch.Tensor | None = None, *,
    subsets: torch.Tensor | None = None, n_runs: int = 100, subset_size: int = 16,
    generator: torch.Generator | None = None, baseline: float | torch.Tensor = 0.0, output: Output = "probability",
    chunk: int | None = None,
) -> torch.Tensor:
    """Pearson correlation per example between Σ_{i∈S} φ_i and f(x) − f(x with S set to the baseline).

    ``baseline`` is a value or one value per example ``[B]`` (Quantus's "black" is each example's
    minimum). ``subsets`` ``[B, R, s]`` (flat feature indices of x) fixes the random subsets; otherwise R =
    ``n_runs`` subsets of ``subset_size`` are drawn without replacement from ``generator``.
    """
    _check(x, attributions)
    t, f0, chunk, _ = _start(model, x, target, output, chunk)
    B = x.shape[0]
    a = attributions.expand_as(x).reshape(B, -1).double()
    D = a.shape[1]
    if subsets is None:  # uniform subsets: the indices of the s largest of D uniforms (order irrelevant)
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        subsets = torch.rand(B, n_runs, D, generator=g).topk(subset_size, dim=-1, sorted=False).indices
    subsets = subsets.to(x.device).long()
    R = subsets.shape[1]
    flat = x.reshape(B, -1)
    fill = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand(B)

    def build(exs, ss):
        idx = subsets[exs, ss]  # [nb, ns, s]
        rows = flat[exs, None].expand(-1, idx.shape[1], -1).clone()
        rows.scatter_(2, idx, fill[exs, None, None].expand_as(idx))
        return rows.view(*idx.shape[:2], *x.shape[1:])

    f = _batched(model, build, B, R, t, output, chunk)
    delta = f0[:, None] - f
    att = torch.gather(a[:, None].expand(-1, R, -1), 2, subsets).sum(-1)
    return pearson(att, delta).to(att.dtype)


def prediction_gap(
    model: Callable, x: torch.Tensor, attributions: torch.Tensor, target: int | torch.Tensor | None = None, *,
    k: int | float = 0.25, mode: Literal["important", "unimportant"] = "important", sigma: float = 0.1,
    n_samples: int = 100, generator: torch.Generator | None = None, output: Output = "probability",
    chunk: int | None = None,
) -> torch.Tensor:
    """PGI (``mode="important"``) or PGU: mean |f_t(x) − f_t(x + ε ⊙ m)|, ε ~ N(0, σ²), m the top-k
    (or the other) features by |φ|; ``k`` an int or a fraction of the features. Returns ``[B]``."""
    _check(x, attributions)
    t, f0, chunk, _ = _start(model, x, target, output, chunk)
    B = x.shape[0]
    a = attributions.expand_as(x).reshape(B, -1).abs()
    D = a.shape[1]
    kk = int(round(k * D)) if isinstance(k, float) else int(k)
    top = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(kk, dim=1).indices, True)
    m = top if mode == "important" else ~top
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    eps = sigma * torch.randn(n_samples, D, generator=g, dtype=x.dtype).to(x.device)
    flat = x.reshape(B, -1)
    f = _batched(model, lambda exs, ss: torch.addcmul(flat[exs, None], eps[None, ss], m[exs, None].to(x.dtype))
                 .view(-1, ss.stop - ss.start, *x.shape[1:]), B, n_samples, t, output, chunk)
    return (f0[:, None] - f).abs().mean(1)


def infidelity(
    model: Callable, x: torch.Tensor, attributions: torch.Tensor, target: int | torch.Tensor | None = None, *,
    n_samples: int = 64, sigma: float = 0.1, perturbations: torch.Tensor | None = None,
    generator: torch.Generator | None = None, normalize: bool = False, output: Output = "logit",
    chunk: int | None = None,
) -> torch.Tensor:
    """E_I[(Iᵀφ − (f(x) − f(x − I)))²] with I ~ N(0, σ²) (or ``perturbations`` ``[B, N, *x]``); ``[B]``.

    ``normalize`` first rescales φ by the optimal β = E[Iᵀφ·Δf]/E[(Iᵀφ)²] (Captum's convention).
    """
    _check(x, attributions)
    t, f0, chunk, _ = _start(model, x, target, output, chunk)
    B = x.shape[0]
    if perturbations is None:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        perturbations = sigma * torch.randn(B, n_samples, *x.shape[1:], generator=g, dtype=x.dtype)
    I = perturbations.to(device=x.device, dtype=x.dtype)
    N = I.shape[1]
    f = _batched(model, lambda exs, ss: x[exs, None] - I[exs, ss], B, N, t, output, chunk)
    dfx = f0[:, None] - f
    ia = (I.flatten(2).double() * attributions.expand_as(x).flatten(1).double()[:, None]).sum(-1)
    if normalize:
        beta = (ia * dfx).mean(1) / (ia * ia).mean(1)
        ia = ia * beta[:, None]
    return ((ia - dfx) ** 2).mean(1)
