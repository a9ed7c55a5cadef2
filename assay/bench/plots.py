"""Bench plots (matplotlib figures without pyplot, :mod:`assay.report.figure`; each saved as PNG and
SVG): the sparsity–fidelity Pareto (L0 vs FVU), ground-truth recovery vs L0, and per-concept detection
heatmaps (method × concept, best single-latent AUROC). Points are seed means with 95% intervals
(:func:`assay.stats.t_interval`). The log L0 axis is labelled with plain numbers (1…9 within a
decade, 1-2-5 steps up to three decades, powers of ten beyond), never with matplotlib's crowded
``2×10^0`` minor-tick labels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from assay.report import new_figure, save_figure

__all__ = ["pareto_plot", "recovery_plot", "detection_heatmap", "draw_all"]


def _save(fig, path: Path) -> list[Path]:
    return [save_figure(fig, path.with_suffix(f".{ext}"), dpi=110, tight=True) for ext in ("png", "svg")]


def _log_ticks(axis, lo: float, hi: float) -> None:
    """Plain-number labels on a log ``axis`` spanning [lo, hi]: at every 1…9 × 10^k within a decade, at
    1, 2, 5 × 10^k up to three decades, at powers of ten beyond; minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(hi / lo)
    subs = tuple(range(1, 10)) if decades < 1 else (1, 2, 5) if decades <= 3 else (1,)
    axis.set_major_locator(LogLocator(base=10, subs=[float(s) for s in subs]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _series(summary: list[dict[str, Any]], world: str, metric: str) -> dict[str, list[tuple[float, float, float, float]]]:
    """method → [(L0 mean, metric mean, ci_low, ci_high)] sorted by L0."""
    idx = {(r["method"], r["level"], r["metric"]): r for r in summary if r["world"] == world}
    out: dict[str, list[tuple[float, float, float, float]]] = {}
    for (meth, lev, met), r in idx.items():
        if met != metric or (meth, lev, "l0") not in idx:
            continue
        l0 = idx[(meth, lev, "l0")]["mean"]
        if r["mean"] is None or l0 is None or r["mean"] != r["mean"]:
            continue
        out.setdefault(meth, []).append((l0, r["mean"], r["ci_low"], r["ci_high"]))
    return {k: sorted(v) for k, v in out.items()}


def _line_plot(summary, world: str, metric: str, ylabel: str, title: str, path: Path) -> list[Path]:
    series = _series(summary, world, metric)
    if not series:
        return []
    fig = new_figure((5.5, 3.8))
    ax = fig.subplots()
    for meth, pts in series.items():
        xs, ys, lo, hi = zip(*pts)
        ax.errorbar(xs, ys, yerr=[[y - a for y, a in zip(ys, lo)], [b - y for y, b in zip(ys, hi)]], marker="o",
                    capsize=2, label=meth)
    ax.set_xscale("log")
    l0 = [p[0] for pts in series.values() for p in pts if p[0] > 0]
    if l0:
        _log_ticks(ax.xaxis, min(l0), max(l0))
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def pareto_plot(summary, world: str, path: Path) -> list[Path]:
    """L0 vs FVU per method (lower-left is better)."""
    return _line_plot(summary, world, "fvu", "FVU (fraction of variance unexplained)", f"{world}: sparsity vs fidelity",
                      path)


def recovery_plot(summary, world: str, path: Path) -> list[Path]:
    """Ground-truth recovery vs L0: Hungarian MCC of atoms (planted worlds) or mean best AUROC."""
    has_mcc = bool(_series(summary, world, "recovery_mcc"))
    metric, label = ("recovery_mcc", "recovery MCC (matched cosine)") if has_mcc else \
        ("detect_auroc", "mean best-latent AUROC")
    return _line_plot(summary, world, metric, label, f"{world}: ground-truth recovery vs L0", path)


def detection_heatmap(runs: list[dict[str, Any]], world: str, path: Path, *, max_concepts: int = 48) -> list[Path]:
    """Method (at its best level) × concept heatmap of the best single-latent AUROC (mean over seeds)."""
    import numpy as np

    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in runs:
        if r["world"] == world:
            d = rows.setdefault((r["method"], r["level"]), {})
            for c, v in r.get("per_concept", {}).items():
                if v is not None:
                    d.setdefault(c, []).append(v)
    if not rows:
        return []
    best: dict[str, tuple[str, dict[str, float]]] = {}
    for (meth, lev), d in rows.items():
        means = {c: float(np.mean(v)) for c, v in d.items()}
        score = float(np.mean(list(means.values()))) if means else -1
        if meth not in best or score > best[meth][0]:
            best[meth] = (score, lev, means)  # type: ignore[assignment]
    concepts = sorted({c for _, _, m in best.values() for c in m})[:max_concepts]  # type: ignore[misc]
    methods = sorted(best)
    grid = np.array([[best[m][2].get(c, np.nan) for c in concepts] for m in methods])  # type: ignore[index]
    fig = new_figure((max(4, 0.22 * len(concepts) + 2), 0.35 * len(methods) + 1.5))
    ax = fig.subplots()
    im = ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(methods)), [f"{m} ({best[m][1]})" for m in methods], fontsize=7)  # type: ignore[index]
    ax.set_xticks(range(len(concepts)), concepts, rotation=90, fontsize=6)
    ax.set_title(f"{world}: best single-latent AUROC per concept", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return _save(fig, path)


def draw_all(out: Path, runs, summary) -> list[Path]:
    """Every plot of a suite under ``out/plots``; returns the files written."""
    d = Path(out) / "plots"
    d.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for world in dict.fromkeys(r["world"] for r in runs):
        safe = "".join(ch if ch.isalnum() else "_" for ch in world)
        files += pareto_plot(summary, world, d / f"pareto_{safe}")
        files += recovery_plot(summary, world, d / f"recovery_{safe}")
        files += detection_heatmap(runs, world, d / f"detection_{safe}")
    return files
