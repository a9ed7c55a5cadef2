"""Intervention metrics: success vs. coherence trade-off curves, and naturalness of steering paths.

Bhalla, Srinivas, Ghandeharioun & Lakkaraju 2024, "Towards Unifying Interpretability and Control:
Evaluation via Intervention" (arXiv 2411.04430): sweep the intervention strength α and plot, for every
lens on the same axes, *success* (the targeted concept appears / a ground-truth or probe read-out
moves) against *coherence* (offline stand-in for the LLM judge: perplexity of the output under the
unsteered model, and the distinct-2 rate).

Wurgaft et al. 2026, "Manifold Steering" (spec §6): a steering path γ(t) of output distributions is
scored by its distance to the behaviour manifold M_y,

    E_BC(γ) = ∫₀¹ min_{q∈M_y} d_BC(γ(t), q) dt,   d_BC(p, q) = −log Σ_i √(p_i q_i)

(the integral as the mean over evenly spaced t). Check: d_BC((½, ½, 0), (¼, ¼, ½)) = 0.346574.

On a world whose answers are known (a trained world model), Bhalla et al.'s two axes become exact:
*read-out* — the AUROC of the encoded concept against the world's label (:func:`readout_auroc`) — and
*intervention success* — the fraction of (input, target) pairs whose answer becomes the target, over the
pairs whose answer was not already the target (:func:`target_success`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "bhattacharyya",
    "hellinger_embed",
    "naturalness",
    "distinct_n",
    "perplexity",
    "mean_kl",
    "success_rate",
    "target_success",
    "readout_auroc",
    "TradeoffCurve",
    "tradeoff_curve",
    "draw_tradeoffs",
    "plot_tradeoffs",
]


def _probs(p: Tensor, what: str) -> Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{what} must be finite and non-negative")
    s = p.sum(-1)
    if not torch.allclose(s, torch.ones_like(s), atol=1e-6):
        raise ValueError(f"{what} must sum to 1 over the last dimension")
    return p


def bhattacharyya(p: Tensor, q: Tensor) -> Tensor:
    """d_BC(p, q) = −log Σ_i √(p_i q_i), broadcasting over leading dimensions."""
    p, q = _probs(p, "p"), _probs(q, "q")
    return -torch.log((p * q).sqrt().sum(-1).clamp_min(1e-300))


def hellinger_embed(p: Tensor) -> Tensor:
    """p ↦ √p (points on the unit sphere; decode by squaring)."""
    return _probs(p, "p").sqrt()


def naturalness(path: Tensor, manifold: Tensor) -> float:
    """E_BC of a path of distributions ``[K, C]`` against behaviour-manifold samples ``[M, C]``."""
    path, manifold = _probs(path, "path"), _probs(manifold, "manifold")
    d = bhattacharyya(path[:, None, :], manifold[None, :, :])
    return float(d.min(1).values.mean())


def distinct_n(tokens: Sequence[Sequence[int]] | Tensor, n: int = 2) -> float:
    """Distinct n-grams / all n-grams over the given token sequences (1 = no repetition)."""
    seqs = tokens.tolist() if isinstance(tokens, Tensor) else [list(s) for s in tokens]
    grams = [tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n + 1)]
    if not grams:
        raise ValueError(f"no sequence is long enough for {n}-grams")
    return len(set(grams)) / len(grams)


def perplexity(logits: Tensor, tokens: Tensor, mask: Tensor | None = None) -> float:
    """exp(mean NLL) of ``tokens [B, T]`` under next-token ``logits [B, T, V]`` (token t from t − 1),
    over positions where ``mask`` (default all) is true."""
    if logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree on [B, T]")
    lp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    m = torch.ones_like(lp, dtype=torch.bool) if mask is None else mask[:, 1:].bool()
    if not m.any():
        raise ValueError("no scored position")
    return float(torch.exp(-(lp[m]).mean()))


def mean_kl(base_logits: Tensor, logits: Tensor, mask: Tensor | None = None) -> float:
    """Mean over positions (where ``mask [B, T]``, default all) of KL(p_base ‖ p) in nats, from logits
    ``[B, T, V]`` of the unsteered and the steered model on the same text — the coherence cost."""
    if base_logits.shape != logits.shape:
        raise ValueError(f"base logits {tuple(base_logits.shape)} and logits {tuple(logits.shape)} differ in shape")
    if not (torch.isfinite(base_logits).all() and torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or inf")
    lp_b = torch.log_softmax(base_logits.double(), -1)
    kl = (lp_b.exp() * (lp_b - torch.log_softmax(logits.double(), -1))).sum(-1)
    m = torch.ones(kl.shape, dtype=torch.bool, device=kl.device) if mask is None else mask.bool()
    if m.shape != kl.shape or not m.any():
        raise ValueError(f"mask must be {tuple(kl.shape)} with at least one true position")
    return float(kl[m].mean())


def success_rate(texts: Sequence[str], concept: str | Sequence[str]) -> float:
    """Fraction of ``texts`` containing the concept string (any of several; case-insensitive)."""
    if not texts:
        raise ValueError("no texts to score")
    words = [concept] if isinstance(concept, str) else list(concept)
    return sum(any(w.lower() in t.lower() for w in words) for t in texts) / len(texts)


def target_success(predicted: Tensor, target: Tensor, eligible: Tensor | None = None) -> float:
    """Fraction of the ``eligible`` rows (bool ``[N]``, default all) whose ``predicted`` answer ``[N]`` equals
    ``target`` (``[N]`` or one value). Pass as eligible the rows whose unedited answer was not the target
    already, so that success counts only answers the edit moved."""
    predicted, target = torch.as_tensor(predicted).reshape(-1), torch.as_tensor(target).reshape(-1)
    if target.numel() == 1:
        target = target.expand_as(predicted)
    if predicted.shape != target.shape:
        raise ValueError(f"{predicted.numel()} predictions for {target.numel()} targets")
    keep = torch.ones_like(predicted, dtype=torch.bool) if eligible is None else torch.as_tensor(eligible).reshape(-1).bool()
    if keep.shape != predicted.shape:
        raise ValueError(f"eligible has {keep.numel()} rows for {predicted.numel()} predictions")
    if not keep.any():
        raise ValueError("no eligible row to score")
    return float((predicted[keep] == target[keep]).double().mean())


def readout_auroc(codes: Tensor, labels: Tensor) -> float:
    """AUROC of an encoded concept ``codes [N]`` (higher = more of the concept) against the world's binary
    ``labels [N]``; ties count one half, NaN when the labels hold one class."""
    from assay.stats import auroc_matrix

    c, y = torch.as_tensor(codes).reshape(-1, 1), torch.as_tensor(labels).reshape(-1, 1).bool()
    if c.shape != y.shape:
        raise ValueError(f"{c.shape[0]} codes for {y.shape[0]} labels")
    if not torch.isfinite(c).all():
        raise ValueError("concept codes contain NaN or inf")
    return float(auroc_matrix(c.double(), y)[0, 0])


class TradeoffCurve(NamedTuple):
    """Success and coherence of one lens's intervention across strengths."""

    name: str
    """The lens / method name (the legend entry)."""
    strengths: tuple[float, ...]
    """The strengths α swept."""
    success: tuple[float, ...]
    """Intervention success at each α (higher is better)."""
    coherence: tuple[float, ...]
    """Coherence cost at each α (e.g. perplexity under the unsteered model; lower is better)."""
    interval: tuple[tuple[float, float], ...] = ()
    """(low, high) interval of ``success`` at each α, drawn as error bars (empty: none)."""


def tradeoff_curve(name: str, strengths: Sequence[float], run: Callable[[float], tuple[float, float]]) -> TradeoffCurve:
    """Sweep ``run(α) -> (success, coherence)`` over ``strengths``."""
    if not strengths:
        raise ValueError("need at least one strength")
    pairs = [run(float(a)) for a in strengths]
    return TradeoffCurve(name, tuple(float(a) for a in strengths), tuple(p[0] for p in pairs),
                         tuple(p[1] for p in pairs))


def draw_tradeoffs(ax: Any, curves: Sequence[TradeoffCurve], *, xlabel: str = "coherence cost",
                   ylabel: str = "intervention success", title: str = "") -> None:
    """Draw every curve on the matplotlib axes ``ax`` (coherence on x, success on y; points labelled by α)."""
    for c in curves:
        if c.interval:
            if len(c.interval) != len(c.success):
                raise ValueError(f"curve {c.name!r}: {len(c.interval)} intervals for {len(c.success)} points")
            err = [[s - lo for s, (lo, _) in zip(c.success, c.interval)],
                   [hi - s for s, (_, hi) in zip(c.success, c.interval)]]
            ax.errorbar(c.coherence, c.success, yerr=err, marker="o", capsize=3, label=c.name)
        else:
            ax.plot(c.coherence, c.success, marker="o", label=c.name)
        for a, x, y in zip(c.strengths, c.coherence, c.success):
            ax.annotate(f"{a:g}", (x, y), fontsize=7, alpha=0.7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()


def plot_tradeoffs(curves: Sequence[TradeoffCurve], path: str | Path, *, xlabel: str = "coherence cost",
                   ylabel: str = "intervention success", title: str = "") -> Path:
    """All curves on the same axes (:func:`draw_tradeoffs`), saved to ``path``."""
    from assay.report import new_figure, save_figure

    fig = new_figure((5, 4))
    draw_tradeoffs(fig.subplots(), curves, xlabel=xlabel, ylabel=ylabel, title=title)
    fig.tight_layout()
    return save_figure(fig, path)
