"""Occlusion (sliding windows) and feature ablation (one feature group at a time).

Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks": slide a window over
the input, fill it with a baseline, and record the drop Δ_s = f_t(x) − f_t(x with window s
occluded). Each input element receives the mean drop over the windows covering it,

    φ_i = Σ_s Δ_s·M_s[i] / Σ_s M_s[i],

which is the least-squares solution of min_φ Σ_s Σ_{i ∈ s} (φ_i − Δ_s)² — the squared-loss,
constant-weight, no-bias member of the local-approximation family (Han, Srinivas & Lakkaraju 2022;
Captum divides by the coverage count the same way). Windows of size 1 on a linear model give
w ⊙ (x − b). With a ``feature_mask`` each feature group is one "window" (feature ablation).
All B × windows rows run as one chunked no-grad batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from assay.attribution import engine
from assay.attribution.engine import Attribution, EngineConfig
from assay.attribution.neighbourhoods import check_feature_mask, window_masks, window_starts
from assay.config import ConfigError

__all__ = ["OcclusionConfig", "occlusion"]


@dataclass(frozen=True, kw_only=True)
class OcclusionConfig(EngineConfig):
    """Occlusion with sliding windows (or feature ablation with a feature mask)."""

    window: tuple[int, ...] | None = None
    """Window shape over the non-batch dimensions (e.g. (3, 4, 4)); None: one element at a time."""
    strides: tuple[int, ...] | None = None
    """Window strides per dimension; None: 1 everywhere."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window is not None and any(w < 1 for w in self.window):
            raise ConfigError(f"window sizes must be ≥ 1, got {self.window}")
        if self.strides is not None and any(s < 1 for s in self.strides):
            raise ConfigError(f"strides must be ≥ 1, got {self.strides}")


def occlusion(
    model, x: torch.Tensor, target=None, *, config: OcclusionConfig = OcclusionConfig(),
    baseline: float | torch.Tensor | None = None, feature_mask: torch.Tensor | None = None,
) -> Attribution:
    """Mean output drop over the windows (or feature groups) covering each input element."""
    b = engine.expand_baseline(x, baseline)
    t, out, single, per_row = engine.target_outputs(model, x, target, config.output)
    shape = tuple(x.shape[1:])
    fm = check_feature_mask(feature_mask, x)
    if fm is not None:
        n_win = int(fm.max()) + 1

        def masks(ids: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
            return fm[ex] == ids.view(-1, *([1] * len(shape)))
    else:
        window = config.window or (1,) * len(shape)
        strides = config.strides or (1,) * len(shape)
        starts = window_starts(shape, window, strides)
        n_win = 1
        for s in starts:
            n_win *= len(s)

        def masks(ids: torch.Tensor, ex: torch.Tensor) -> torch.Tensor:
            return window_masks(ids, starts, shape, window)

    def rows(ex, s):
        return torch.where(masks(s, ex), b[ex], x[ex])

    chunk = engine.chunk_rows(per_row, config.memory_budget_mb, backward=False, n_rows=x.shape[0] * n_win)
    ys, _ = engine.outputs_at(model, x, t, rows, n_win, output=config.output, chunk=chunk)
    drop = (out.to(torch.float64)[:, :, None] - ys).to(x.dtype)  # [B, K, S]
    B, K = t.shape
    vals = torch.zeros((B, K, *shape), dtype=x.dtype, device=x.device)
    count = torch.zeros((B, *shape), dtype=x.dtype, device=x.device)
    win_chunk = max(1, chunk // max(1, B))
    all_ex = torch.arange(B, device=x.device)
    for s0 in range(0, n_win, win_chunk):
        ids = torch.arange(s0, min(n_win, s0 + win_chunk), device=x.device)
        if fm is not None:
            m = torch.stack([masks(ids, torch.full_like(ids, i)) for i in all_ex.tolist()]).to(x.dtype)
        else:
            m = masks(ids, ids)[None].to(x.dtype).expand(B, *([-1] * (len(shape) + 1)))
        vals += torch.einsum("bks,bs...->bk...", drop[:, :, ids], m)
        count += m.sum(1)
    vals = vals / count.clamp_min(1)[:, None]
    base_out = engine.baseline_outputs(model, b, t, config.output, chunk)
    return engine.finish(vals, t, out, single, "occlusion", baseline_output=base_out)
