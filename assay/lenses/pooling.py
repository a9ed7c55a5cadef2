"""Sequence pooling for probes, and sequence probes trained end to end (BCE, Adam).

McKenzie, Pawar, Blandfort, Bankes, Krueger, Lubana, Krasheninnikov 2025, "Detecting High-Stakes
Interactions with Activation Probes" (arXiv 2506.10805; repo Arrrlex/models-under-pressure
``probes/pytorch_modules.py``). For token activations h ∈ ℝ^{B×T×d} and mask m ∈ {0,1}^{B×T}:

    mean_then_linear   s = w·(Σ_t m_t h_t / Σ_t m_t) + b
    linear_then_<agg>  s_t = wᵀ BN(h_t) (no bias), then agg over real tokens:
                       mean; max; last; rolling max of window-W means; softmax(T): Σ_t s_t softmax_t(s_t/T)
    attention          α = softmax_t(q·h_t/√d) (masked), s = w·Σ_t α_t h_t + b

Checks (spec §1.2): token scores (1, 2, 3) → mean 2, max 3, softmax T=1 → 2.575210, T=5 → 2.132452,
rolling max (W=2) → 2.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assay.config import ConfigError, check_choice

__all__ = [
    "Sequences",
    "pool_mean",
    "pool_max",
    "pool_last",
    "pool_rolling_max",
    "pool_softmax",
    "last_index",
    "pool_tokens",
    "SequenceProbeConfig",
    "SequenceProbe",
    "fit_sequence_probe",
]


def _mask(scores: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device)
    if mask.shape != scores.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match [batch, pos] = {tuple(scores.shape[:2])}")
    m = mask.bool()
    if not m.any(1).all():
        raise ValueError("a sequence has no real token (its mask is all zero)")
    return m


def pool_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over real tokens of ``x [B, T]`` or ``[B, T, d]``."""
    m = _mask(x, mask).to(x.dtype)
    m = m if x.dim() == 2 else m[..., None]
    return (x * m).sum(1) / m.sum(1)


def pool_max(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Max over real tokens."""
    m = _mask(x, mask)
    m = m if x.dim() == 2 else m[..., None]
    return x.masked_fill(~m, float("-inf")).amax(1)


def last_index(mask: Tensor) -> Tensor:
    """Column of the last real token per row ``[B]`` (right padding: mask.sum − 1; left padding: T − 1)."""
    cols = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask.bool(), cols, -1).amax(1)


def pool_last(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Value at the last real token."""
    m = _mask(x, mask)
    idx = last_index(m)
    return x[torch.arange(x.shape[0], device=x.device), idx]


def pool_rolling_max(s: Tensor, mask: Tensor | None = None, *, window: int = 40) -> Tensor:
    """Max over windows of ``window`` consecutive real tokens of the window mean of ``s [B, T]``
    (sequences shorter than the window: their mean)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    m = _mask(s, mask)
    B, T = s.shape
    w = min(window, T)
    zs = torch.where(m, s, torch.zeros_like(s))
    cs = F.pad(zs.cumsum(1), (1, 0))
    cm = F.pad(m.long().cumsum(1), (1, 0))
    sums = cs[:, w:] - cs[:, :-w]                       # [B, T − w + 1]
    counts = cm[:, w:] - cm[:, :-w]
    need = m.sum(1, keepdim=True).clamp(max=window)
    means = torch.where(counts == need, sums / counts.clamp(min=1), torch.full_like(sums, float("-inf")))
    return means.amax(1)


def pool_softmax(s: Tensor, mask: Tensor | None = None, *, temperature: float = 5.0) -> Tensor:
    """Σ_t s_t·softmax_t(s_t / T) over real tokens."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    m = _mask(s, mask)
    a = (s / temperature).masked_fill(~m, float("-inf")).softmax(1)
    return (a * torch.where(m, s, torch.zeros_like(s))).sum(1)


Pooling = Literal["mean", "max", "last", "rolling_max", "softmax"]


@dataclass(frozen=True)
class Sequences:
    """Token activations of N sequences, ``h [N, T, d]`` with ``mask [N, T]`` (True = a real token), as one
    object that indexes like a tensor (``seqs[idx]``), so cross-validation splits sequence data and pooled
    features the same way."""

    h: Tensor
    """Activations ``[N, T, d]`` (padded positions hold anything; the mask says which are real)."""
    mask: Tensor
    """Bool ``[N, T]``."""

    def __post_init__(self) -> None:
        if self.h.dim() != 3 or tuple(self.mask.shape) != tuple(self.h.shape[:2]):
            raise ValueError(f"Sequences need h [N, T, d] and mask [N, T]; got {tuple(self.h.shape)} and "
                             f"{tuple(self.mask.shape)}")
        if not self.mask.any(1).all():
            raise ValueError("every sequence needs at least one real token (a mask row is all False)")

    def __len__(self) -> int:
        return self.h.shape[0]

    def __getitem__(self, idx: Tensor | slice) -> Sequences:
        return Sequences(self.h[idx], self.mask[idx])


def pool_tokens(s: Tensor, mask: Tensor | None, pooling: Pooling, *, window: int = 40,
                temperature: float = 5.0) -> Tensor:
    """Aggregate ``s [B, T]`` (or activations ``[B, T, d]`` for mean/max/last) by name."""
    if pooling == "mean":
        return pool_mean(s, mask)
    if pooling == "max":
        return pool_max(s, mask)
    if pooling == "last":
        return pool_last(s, mask)
    if pooling == "rolling_max":
        return pool_rolling_max(s, mask, window=window)
    if pooling == "softmax":
        return pool_softmax(s, mask, temperature=temperature)
    raise ValueError(f"unknown pooling {pooling!r}; choose mean, max, last, rolling_max or softmax")


@dataclass(frozen=True, kw_only=True)
class SequenceProbeConfig:
    """A sequence-level probe trained with BCE and Adam."""

    kind: Literal["mean_then_linear", "linear_then_agg", "attention"] = "linear_then_agg"
    """Architecture: pool then score, score each token then aggregate, or the attention probe."""
    aggregation: Pooling = "mean"
    """Token-score aggregation of ``linear_then_agg``."""
    window: int = 40
    """Window of the rolling-max aggregation."""
    temperature: float = 5.0
    """Temperature of the softmax aggregation."""
    epochs: int = 50
    """Passes over the training set."""
    batch_size: int = 32
    """Sequences per step."""
    lr: float = 5e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam (decoupled, AdamW) weight decay."""
    dropout: float = 0.1
    """Dropout on the attention probe's context vector."""
    seed: int = 0
    """Seed of initialisation, shuffling and dropout."""

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ("mean_then_linear", "linear_then_agg", "attention"))
        check_choice("aggregation", self.aggregation, ("mean", "max", "last", "rolling_max", "softmax"))
        for name in ("window", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0 or self.lr <= 0:
            raise ConfigError("temperature and lr must be positive")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout}")


class SequenceProbe(nn.Module):
    """A sequence probe ``h [B, T, d], mask [B, T] -> logit [B]`` (see the module docstring)."""

    def __init__(self, d: int, cfg: SequenceProbeConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.d = d
        bound = 1 / math.sqrt(d)
        self.w = nn.Parameter((torch.rand(d, generator=generator) * 2 - 1) * bound)
        self.b = nn.Parameter(torch.zeros(()))
        self.q = nn.Parameter(torch.zeros(d)) if cfg.kind == "attention" else None
        self.bn = nn.BatchNorm1d(d, affine=False) if cfg.kind == "linear_then_agg" else None
        self._generator = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)

    def token_scores(self, h: Tensor, mask: Tensor) -> Tensor:
        """Per-token scores s_t = wᵀBN(h_t) ``[B, T]`` (BN statistics over real tokens)."""
        m = mask.bool()
        flat = h[m]
        z = torch.zeros(h.shape[:2], dtype=h.dtype, device=h.device)
        z[m] = self.bn(flat) @ self.w if self.bn is not None else flat @ self.w
        return z

    def score(self, seqs: Sequences) -> Tensor:
        """Logits ``[N]`` of ``seqs`` in eval mode, without gradients (what cross-validation reads)."""
        with torch.no_grad():
            return self.eval()(seqs.h, seqs.mask)

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        if h.dim() != 3 or h.shape[-1] != self.d:
            raise ValueError(f"expected activations [B, T, {self.d}], got shape {tuple(h.shape)}")
        m = _mask(h, mask)
        cfg = self.cfg
        if cfg.kind == "mean_then_linear":
            return pool_mean(h, m) @ self.w + self.b
        if cfg.kind == "linear_then_agg":
            return pool_tokens(self.token_scores(h, m), m, cfg.aggregation, window=cfg.window,
                               temperature=cfg.temperature)
        a = (h @ self.q / math.sqrt(self.d)).masked_fill(~m, float("-inf")).softmax(1)
        ctx = (a[..., None] * h).sum(1)
        if self.training and cfg.dropout > 0:  # seeded dropout (the generator set by fit_sequence_probe)
            keep = torch.rand(ctx.shape, generator=self._generator, dtype=ctx.dtype) >= cfg.dropout
            ctx = ctx * keep.to(ctx.device) / (1 - cfg.dropout)
        return ctx @ self.w + self.b


def fit_sequence_probe(h: Tensor, mask: Tensor | None, y: Tensor, cfg: SequenceProbeConfig) -> SequenceProbe:
    """Train a :class:`SequenceProbe` on ``h [N, T, d]``, ``mask [N, T]``, labels ``y [N]`` (0/1)."""
    if h.dim() != 3:
        raise ValueError(f"sequence probe inputs must be [N, T, d], got shape {tuple(h.shape)}")
    if not torch.isfinite(h).all():
        raise ValueError("activations contain NaN or inf")
    y = torch.as_tensor(y).flatten()
    if y.numel() != h.shape[0]:
        raise ValueError(f"{y.numel()} labels for {h.shape[0]} sequences")
    if torch.unique(y).numel() < 2:
        raise ValueError("labels have a single class; a probe needs examples of both classes")
    mask = _mask(h, mask)
    g = torch.Generator().manual_seed(cfg.seed)
    probe = SequenceProbe(h.shape[-1], cfg, generator=g).to(h.device, h.dtype)
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    yf = y.to(h.dtype)
    N = h.shape[0]
    probe.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(N, generator=g)
        for i in range(0, N, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            if idx.numel() < 2 and probe.bn is not None:
                continue
            loss = F.binary_cross_entropy_with_logits(probe(h[idx], mask[idx]), yf[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe.eval()
