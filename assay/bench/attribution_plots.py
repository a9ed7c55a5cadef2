"""Plots of the attribution bench family (:mod:`assay.bench.attribution`), drawn on matplotlib Figures without
pyplot (:mod:`assay.report.figure`), each saved as PNG and SVG (the SVG path is returned):

- keep-top-1/p accuracy over p (DiET, Bhalla, Srinivas & Lakkaraju 2023, §6), one panel per world;
- relevance mass inside the planted signal mask against the model-randomisation Spearman (Adebayo et al. 2018,
  "Sanity Checks for Saliency Maps"): methods that agree with the truth *and* depend on the weights sit bottom
  right.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from assay.report import new_figure, save_figure

__all__ = ["keep_top_plot", "truth_vs_sanity_plot"]


def keep_top_plot(summary: list[dict[str, Any]], path: Path, keep_top_p: Sequence[int]) -> Path:
    """Keep-top-1/p accuracy over p (one panel per world, one line per method level, 95% intervals over seeds).
    Saved as PNG and SVG; returns the SVG."""
    idx = {(s["world"], s["method"], s["level"], s["metric"]): s for s in summary if s["n"]}
    worlds = list(dict.fromkeys(k[0] for k in idx))
    fig = new_figure((4.2 * len(worlds), 3.6))
    axes = fig.subplots(1, len(worlds), squeeze=False, sharey=True)[0]
    for ax, world in zip(axes, worlds):
        for meth, lev in dict.fromkeys((k[1], k[2]) for k in idx if k[0] == world):
            pts = [(p, idx[(world, meth, lev, f"keep_top_{p}_accuracy")]) for p in keep_top_p
                   if (world, meth, lev, f"keep_top_{p}_accuracy") in idx]
            if pts:
                ax.errorbar([p for p, _ in pts], [v["mean"] for _, v in pts], fmt="o-", ms=3, capsize=2,
                            yerr=[[v["mean"] - v["ci_low"] for _, v in pts], [v["ci_high"] - v["mean"] for _, v in pts]],
                            label=meth if lev == "default" else f"{meth} {lev}")
        ax.set_xscale("log")
        ax.set_xticks(list(keep_top_p), [f"1/{p}" for p in keep_top_p])
        ax.minorticks_off()
        ax.set_xlabel("share of features kept")
        ax.set_title(world, fontsize=9)
    axes[0].set_ylabel("accuracy with only the top 1/p kept")
    axes[-1].legend(fontsize=7)
    save_figure(fig, path.with_suffix(".png"), dpi=110, tight=True)
    return save_figure(fig, path.with_suffix(".svg"), tight=True)


def truth_vs_sanity_plot(summary: list[dict[str, Any]], world: str, chance: float, path: Path) -> Path:
    """Scatter of relevance mass (x) against randomisation Spearman (y), one point per method level with
    95% intervals; good methods sit bottom right. Saved as PNG and SVG; returns the SVG."""
    idx = {(s["method"], s["level"], s["metric"]): s for s in summary if s["n"]}
    fig = new_figure((6, 4.2))
    ax = fig.subplots()
    for (meth, lev, met), sx in idx.items():
        sy = idx.get((meth, lev, "randomisation_spearman"))
        if met != "relevance_mass" or sy is None:
            continue
        ax.errorbar(sx["mean"], sy["mean"], xerr=[[sx["mean"] - sx["ci_low"]], [sx["ci_high"] - sx["mean"]]],
                    yerr=[[sy["mean"] - sy["ci_low"]], [sy["ci_high"] - sy["mean"]]], fmt="o", ms=4, capsize=2)
        ax.annotate(meth if lev == "default" else f"{meth} {lev}", (sx["mean"], sy["mean"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    if chance == chance:
        ax.axvline(chance, color="grey", ls="--", lw=0.8, label="chance mass")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("relevance mass inside the signal mask (higher: agrees with the truth)")
    ax.set_ylabel("randomisation Spearman (lower: depends on the weights)")
    ax.set_title(world, fontsize=9)
    save_figure(fig, path.with_suffix(".png"), dpi=110, tight=True)
    return save_figure(fig, path.with_suffix(".svg"), tight=True)
