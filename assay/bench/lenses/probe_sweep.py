"""The probe sweep behind ``assay probe``: cross-validated sentiment-probe AUROC per layer of a real LM.

Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes": a probe per
layer, read out by held-out AUROC (with its DeLong interval), shows where a concept becomes linearly
decodable. Data: the bundled Pang & Lee sentence-polarity sentences (balanced subsample); every layer is
captured in one forward pass per batch. The best layer's probe, refitted on all the sentences, is saved
as a ``lens.probe`` artifact (:mod:`assay.lenses.artifacts`) whose provenance says the activations are
*off-policy*: human-written sentences read by the model, not its own generations (Kirch et al. 2025).

Outputs in ``out_dir``: ``results.json``, ``plots/probe_auroc.png``, ``probe/`` (the artifact) and the
report section (``section.json`` + ``report.html``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from assay.bench.lenses.lm import layer_number, layer_sites

__all__ = ["ProbeConfig", "run_probe", "balanced_subsample"]


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """Layer sweep of sentiment probes on the bundled Pang & Lee sentences."""

    model: str = "smollm2-135m"
    """Offline model name."""
    n_sentences: int = 200
    """Sentences used (balanced; at most 200)."""
    layers: tuple[int, ...] = ()
    """Layer indices to probe (empty: all)."""
    pooling: Literal["mean", "last", "max"] = "mean"
    """Sequence pooling of each sentence's residuals (BOS excluded)."""
    C: float = 1e-3
    """Inverse L2 strength of the standardised logistic probe."""
    folds: int = 5
    """Cross-validation folds."""
    batch_size: int = 16
    """Sentences per forward pass."""
    seed: int = 0
    """Seed of the sentence subsample and the folds."""
    out_dir: Path = Path("runs/probe")
    """Where the plot, results.json, the probe artifact (probe/) and the report section go."""

    def __post_init__(self) -> None:
        if not 4 <= self.n_sentences <= 200:
            raise ValueError(f"n_sentences must be in 4..200, got {self.n_sentences}")
        if self.C <= 0 or self.folds < 2 or self.batch_size < 1:
            raise ValueError("C must be positive, folds >= 2 and batch_size >= 1")


def balanced_subsample(texts: list[str], labels: Any, n: int, seed: int) -> tuple[list[str], Any]:
    """``n // 2`` sentences of each class (seeded draw), shuffled together."""
    import torch

    g = torch.Generator().manual_seed(seed)
    idx = []
    for cls in (1, 0):
        rows = (labels == cls).nonzero().flatten()
        idx.append(rows[torch.randperm(rows.numel(), generator=g)][: n // 2])
    order = torch.cat(idx)
    order = order[torch.randperm(order.numel(), generator=g)]
    return [texts[i] for i in order.tolist()], labels[order]


def run_probe(cfg: ProbeConfig, lm: Any = None) -> dict[str, Any]:
    """Run the sweep (``lm``: an already loaded model, else ``cfg.model`` is loaded); saves the best layer's
    probe and ends by writing the report section (``out_dir/section.json`` + ``report.html``)."""
    from assay.corpora import load_labelled_sentences
    from assay.lenses.artifacts import Provenance, save_probe
    from assay.lenses.probe_eval import tpr_at_fpr
    from assay.lenses.probes import logistic
    from assay.lenses.sweep import collect_features, probe_sweep
    from assay.lenses.text import batches
    from assay.models.offline import load

    lm = lm or load(cfg.model)
    texts, labels = load_labelled_sentences("pang_lee")
    texts, labels = balanced_subsample(texts, labels, cfg.n_sentences, cfg.seed)
    sites = layer_sites(lm, cfg.layers)
    feats = collect_features(lm.model, sites, batches(lm.tokenizer, texts, cfg.batch_size), pooling=cfg.pooling,
                             skip_first=cfg.pooling != "last")
    sweep = probe_sweep(feats, labels, fit=lambda x, y: logistic(x, y, C=cfg.C, standardise=True), k=cfg.folds, seed=cfg.seed)
    rows = [{"site": s, "auroc": r.auroc.value, "auroc_low": r.auroc.low, "auroc_high": r.auroc.high,
             "accuracy": r.accuracy.value, "accuracy_low": r.accuracy.low, "accuracy_high": r.accuracy.high,
             "tpr_at_1pct_fpr": tpr_at_fpr(r.scores, labels, 0.01)} for s, r in zip(sweep.sites, sweep.results)]
    out = Path(cfg.out_dir)
    plot = out / "plots" / "probe_auroc.png"
    best = sweep.best()
    provenance = Provenance(model=lm.name, data=f"Pang & Lee sentence polarity (bundled; {len(texts)} sentences, "
                                                f"seed {cfg.seed})", policy="off", site=best,
                            pooling=cfg.pooling + (" (BOS excluded)" if cfg.pooling != "last" else ""),
                            n_examples=len(texts), labels="positive sentiment (Pang & Lee __label__pos)")
    best_row = rows[sweep.sites.index(best)]
    artifact = save_probe(out / "probe", logistic(feats[best], labels, C=cfg.C, standardise=True), provenance=provenance,
                          meta={"cv_auroc": best_row["auroc"], "cv_folds": cfg.folds, "C": cfg.C})
    result = {"model": lm.name, "n_sentences": len(texts), "pooling": cfg.pooling, "best": best, "layers": rows,
              "plot": str(plot), "probe": str(artifact)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    _plot(rows, plot, f"{lm.name}: sentiment probe AUROC ({cfg.pooling} pooling)")
    _section(out, result, cfg)
    return result


def _section(out: Path, r: dict[str, Any], cfg: ProbeConfig) -> None:
    from assay.report import Plot, Section, Table, write_section

    rows = [[layer_number(x["site"], i), x["site"], round(x["auroc"], 4), f"[{x['auroc_low']:.3f}, {x['auroc_high']:.3f}]",
             round(x["accuracy"], 4), f"[{x['accuracy_low']:.3f}, {x['accuracy_high']:.3f}]",
             round(x["tpr_at_1pct_fpr"], 4)] for i, x in enumerate(r["layers"])]
    best = max(r["layers"], key=lambda x: x["auroc"])
    table = Table(f"Cross-validated sentiment probe per layer ({cfg.folds}-fold, {r['n_sentences']} sentences)",
                  ["layer", "site", "AUROC", "AUROC 95% CI (DeLong)", "accuracy", "accuracy 95% CI (Wilson)",
                   "TPR@1%FPR"], rows)
    notes = [f"{r['model']}: standardised logistic probe (C={cfg.C:g}) on {cfg.pooling}-pooled residuals "
             f"(BOS excluded) of the bundled Pang & Lee sentences, all layers captured in one forward pass per batch.",
             f"Best layer: {best['site']} with AUROC {best['auroc']:.3f} "
             f"[{best['auroc_low']:.3f}, {best['auroc_high']:.3f}]; its probe, refitted on all sentences, is saved "
             "as the artifact probe/ (load_probe; provenance: off-policy, human-written sentences)."]
    write_section(out, Section(f"Probe sweep: {r['model']} sentiment", [table],
                               [Plot("Cross-validated AUROC per layer (band: 95% DeLong interval)",
                                     Path(r["plot"]))], notes))


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    from assay.report import new_figure, save_figure

    x = [layer_number(r["site"], i) for i, r in enumerate(rows)]
    fig = new_figure((6, 3.5))
    ax = fig.subplots()
    ax.plot(x, [r["auroc"] for r in rows], marker="o")
    ax.fill_between(x, [r["auroc_low"] for r in rows], [r["auroc_high"] for r in rows], alpha=0.25)
    ax.set_xlabel("layer")
    ax.set_ylabel("cross-validated AUROC")
    ax.set_ylim(0.4, 1.0)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
