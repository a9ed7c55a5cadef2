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
from typing import ClassVar

import torch

from assay.attribution import engine
from assay.attribution.engine import Attribution, EngineConfig
from assay.attribution.neighbourhoods import check_feature_mask, shared_mask, window_masks, window_starts
from assay.config import ConfigError

__all__ = ["OcclusionConfig", "occlusion"]


@dataclass(frozen=True, kw_only=True)
class OcclusionConfig(EngineConfig):
    """Occlusion with sliding windows (or feature ablation with a feature mask)."""

    name: ClassVar[str] = "occlusion"
    uses_baseline: ClassVar[bool] = True
    feature_groups: ClassVar[bool] = True

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
    t, out, single, per_row, base_out = engine.probe(model, x, target, config.output, b)
    shape = tuple(x.shape[1:])
    nd = len(shape)
    fm = check_feature_mask(feature_mask, x)
    shared = shared_mask(fm)
    if fm is not None:
        n_win = int(fm.max()) + 1
        ids_all = torch.arange(n_win, device=x.device)

        def masks(ss: slice) -> torch.Tensor:  # [1 or B, ns, *x]
            ids = ids_all[ss].view(1, -1, *([1] * nd))
            return (shared[None, None] if shared is not None else fm[:, None]) == ids
    else:
        window = config.window or (1,) * nd
        strides = config.strides or (1,) * nd
        starts = window_starts(shape, window, strides)
        n_win = 1
        for st in starts:
            n_win *= len(st)

        def masks(ss: slice) -> torch.Tensor:  # [1, ns, *x]
            return window_masks(torch.arange(ss.start, ss.stop, device=x.device), starts, shape, window)[None]

    chunk = engine.chunk_rows(per_row, config.memory_budget_mb, backward=False, n_rows=x.shape[0] * n_win)
    step = max(1, chunk)
    cache: dict = {}

    def block_masks(ss: slice) -> torch.Tensor:
        key = (ss.start, ss.stop)
        if cache.get("key") != key:  # shared by the examples of consecutive blocks and the accumulation
            cache["key"], cache["m"] = key, masks(ss)
        return cache["m"]

    def rows(exs, ss):
        m = block_masks(ss)
        if m.shape[0] != 1:
            m = m[exs]
        return torch.where(m, b[exs, None], x[exs, None])

    ys, _ = engine.outputs_at(model, x, t, rows, n_win, output=config.output, chunk=chunk)
    drop = (out.to(torch.float64)[:, :, None] - ys).to(x.dtype)  # [B, K, S]
    B, K = t.shape
    if fm is not None:  # every element lies in exactly one group: its value is that group's drop
        idx = fm.reshape(B, 1, -1).expand(B, K, -1)
        vals = torch.gather(drop, 2, idx).reshape(B, K, *shape)
    else:  # Σ_s drop_s M_s / Σ_s M_s, one matmul per block of windows
        D = x[0].numel()
        acc = torch.zeros((B * K, D), dtype=x.dtype, device=x.device)
        count = torch.zeros(D, dtype=x.dtype, device=x.device)
        s_step = n_win if n_win <= step else step  # the blocks outputs_at used, so the cached masks serve
        for s0 in range(0, n_win, s_step):
            ss = slice(s0, min(n_win, s0 + s_step))
            m = block_masks(ss)[0].reshape(ss.stop - s0, D).to(x.dtype)
            acc += drop[:, :, ss].reshape(B * K, -1) @ m
            count += m.sum(0)
        vals = (acc / count.clamp_min(1)).reshape(B, K, *shape)
    cache.clear()
    return engine.finish(vals, t, out, single, "occlusion", baseline_output=base_out)
