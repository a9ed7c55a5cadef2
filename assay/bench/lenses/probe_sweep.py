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
    probe: Literal["logistic", "mean_then_linear", "linear_then_agg", "attention"] = "logistic"
    """The probe (McKenzie et al. 2025): ``logistic`` on pooled residuals (``--pooling``), or a sequence probe
    trained with BCE on every token: ``mean_then_linear``, ``linear_then_agg`` (score each token, then
    ``--aggregation``) or ``attention`` (a learned softmax over tokens)."""
    pooling: Literal["mean", "last", "max"] = "mean"
    """Sequence pooling of each sentence's residuals for the logistic probe (BOS excluded)."""
    aggregation: Literal["mean", "max", "last", "rolling_max", "softmax"] = "softmax"
    """Token-score aggregation of the ``linear_then_agg`` probe."""
    epochs: int = 50
    """Training passes of a sequence probe."""
    C: float = 1e-3
    """Inverse L2 strength of the standardised logistic probe."""
    cascade_fraction: float = 0.0
    """Cascade monitor: send this share of sentences, those the best layer's probe is least sure of, to the
    model itself prompted as a sentiment judge, and average the two (0: no cascade)."""
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
        if self.C <= 0 or self.folds < 2 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("C must be positive, folds >= 2, batch_size >= 1 and epochs >= 1")
        if not 0.0 <= self.cascade_fraction <= 1.0:
            raise ValueError(f"cascade_fraction must lie in [0, 1], got {self.cascade_fraction}")

    @property
    def readout(self) -> str:
        """How each sentence became a score, in words (for provenance and the report)."""
        if self.probe == "logistic":
            return self.pooling + (" (BOS excluded)" if self.pooling != "last" else "")
        agg = f" ({self.aggregation})" if self.probe == "linear_then_agg" else ""
        return f"{self.probe}{agg} over tokens (BOS excluded)"


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
    from assay.lenses.artifacts import Provenance, save_probe, save_sequence_probe
    from assay.lenses.pooling import SequenceProbeConfig, fit_sequence_probe
    from assay.lenses.probe_eval import tpr_at_fpr
    from assay.lenses.probes import logistic
    from assay.lenses.sweep import collect_features, probe_sweep
    from assay.lenses.text import batches
    from assay.models.offline import load

    lm = lm or load(cfg.model)
    texts, labels = load_labelled_sentences("pang_lee")
    texts, labels = balanced_subsample(texts, labels, cfg.n_sentences, cfg.seed)
    sites = layer_sites(lm, cfg.layers)
    sequence = cfg.probe != "logistic"
    feats = collect_features(lm.model, sites, batches(lm.tokenizer, texts, cfg.batch_size),
                             pooling="tokens" if sequence else cfg.pooling, skip_first=sequence or cfg.pooling != "last")
    if sequence:
        seq_cfg = SequenceProbeConfig(kind=cfg.probe, aggregation=cfg.aggregation, epochs=cfg.epochs, seed=cfg.seed)

        def fit(x: Any, y: Any) -> Any:
            return fit_sequence_probe(x.h, x.mask, y, seq_cfg)
    else:
        def fit(x: Any, y: Any) -> Any:
            return logistic(x, y, C=cfg.C, standardise=True)
    sweep = probe_sweep(feats, labels, fit=fit, k=cfg.folds, seed=cfg.seed)
    rows = [{"site": s, "auroc": r.auroc.value, "auroc_low": r.auroc.low, "auroc_high": r.auroc.high,
             "accuracy": r.accuracy.value, "accuracy_low": r.accuracy.low, "accuracy_high": r.accuracy.high,
             "tpr_at_1pct_fpr": tpr_at_fpr(r.scores, labels, 0.01)} for s, r in zip(sweep.sites, sweep.results)]
    out = Path(cfg.out_dir)
    plot = out / "plots" / "probe_auroc.png"
    best = sweep.best()
    provenance = Provenance(model=lm.name, data=f"Pang & Lee sentence polarity (bundled; {len(texts)} sentences, "
                                                f"seed {cfg.seed})", policy="off", site=best,
                            pooling=cfg.readout, n_examples=len(texts),
                            labels="positive sentiment (Pang & Lee __label__pos)")
    best_row = rows[sweep.sites.index(best)]
    meta = {"cv_auroc": best_row["auroc"], "cv_folds": cfg.folds} | ({} if sequence else {"C": cfg.C})
    save = save_sequence_probe if sequence else save_probe
    artifact = save(out / "probe", fit(feats[best], labels), provenance=provenance, meta=meta)
    result = {"model": lm.name, "n_sentences": len(texts), "probe_kind": cfg.probe, "readout": cfg.readout,
              "pooling": cfg.pooling, "best": best, "layers": rows, "plot": str(plot), "probe": str(artifact)}
    if cfg.cascade_fraction > 0:
        result["cascade"] = _cascade(lm, texts, labels, sweep.results[sweep.sites.index(best)].scores, cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    _plot(rows, plot, f"{lm.name}: sentiment probe AUROC ({cfg.probe}, {cfg.readout})")
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
    what = (f"standardised logistic probe (C={cfg.C:g}) on {cfg.readout}-pooled residuals" if cfg.probe == "logistic"
            else f"sequence probe {cfg.readout}, BCE + Adam, {cfg.epochs} epochs")
    loader = "load_probe" if cfg.probe == "logistic" else "load_sequence_probe"
    notes = [f"{r['model']}: {what}, on the bundled Pang & Lee sentences; all layers captured in one forward pass "
             "per batch.",
             f"Best layer: {best['site']} with AUROC {best['auroc']:.3f} "
             f"[{best['auroc_low']:.3f}, {best['auroc_high']:.3f}]; its probe, refitted on all sentences, is saved "
             f"as the artifact probe/ ({loader}; provenance: off-policy, human-written sentences)."]
    tables = [table]
    if "cascade" in r:
        c = r["cascade"]
        tables.append(Table("Cascade monitor: the best layer's out-of-fold probe scores, with the least certain "
                            "sentences sent to the model prompted as a judge (McKenzie et al. 2025)",
                            ["share escalated", "judge calls", "AUROC", "accuracy"],
                            [[row["fraction"], row["calls"], round(row["auroc"], 4), round(row["accuracy"], 4)]
                             for row in c["curve"]]))
        notes.append(f"Judge prompt: {c['prompt']!r}, scored as p(' positive') vs p(' negative') at the next token. "
                     f"Judge alone: AUROC {c['judge_auroc']:.3f}. The chosen share {cfg.cascade_fraction:g} "
                     f"made {c['calls']} judge calls; its AUROC is {c['auroc']:.3f} against {c['probe_auroc']:.3f} for "
                     "the probe alone.")
    write_section(out, Section(f"Probe sweep: {r['model']} sentiment", tables,
                               [Plot("Cross-validated AUROC per layer (band: 95% DeLong interval)",
                                     Path(r["plot"]))], notes))


JUDGE_PROMPT = "Review: {text}\nIs the sentiment of this review positive or negative? Answer:"
"""The prompt of the cascade's expensive monitor (the probed model itself, read at the next token)."""


def judge_probabilities(lm: Any, texts: list[str], batch_size: int) -> Any:
    """p(positive) per text from the model's next-token logits for " positive" vs " negative" after
    :data:`JUDGE_PROMPT` (the first token of each word)."""
    import torch

    from assay.lenses.pooling import last_index
    from assay.lenses.text import batches

    pos, neg = (lm.tokenizer.encode(w, add_special_tokens=False)[0] for w in (" positive", " negative"))
    out = []
    prompts = [JUDGE_PROMPT.format(text=t) for t in texts]
    with torch.no_grad():
        for ids, mask in batches(lm.tokenizer, prompts, batch_size):
            logits = lm.model(input_ids=ids, attention_mask=mask).logits
            last = logits[torch.arange(ids.shape[0]), last_index(mask)]
            out.append(torch.softmax(last[:, [pos, neg]].double(), -1)[:, 0])
    return torch.cat(out)


def _cascade(lm: Any, texts: list[str], labels: Any, probe_scores: Any, cfg: ProbeConfig) -> dict[str, Any]:
    """The cascade at ``cfg.cascade_fraction`` and at a grid of shares, from out-of-fold probe scores. The judge
    is run on every sentence once (to also report it alone); each share's ``calls`` is what a deployment at
    that share would pay."""
    from assay.lenses.cascade import cascade_scores
    from assay.stats import auroc

    judge = judge_probabilities(lm, texts, cfg.batch_size)

    def at(fraction: float) -> dict[str, Any]:
        res = cascade_scores(probe_scores, lambda idx: judge[idx], fraction=fraction)
        acc = float(((res.scores > 0.5) == labels.bool()).double().mean())
        return {"fraction": fraction, "calls": res.n_calls, "auroc": float(auroc(res.scores, labels)), "accuracy": acc}

    grid = sorted({0.0, 0.05, 0.1, 0.2, 0.5, 1.0, cfg.cascade_fraction})
    chosen = at(cfg.cascade_fraction)
    return {"prompt": JUDGE_PROMPT, "judge_auroc": float(auroc(judge, labels)), "probe_auroc": at(0.0)["auroc"],
            "calls": chosen["calls"], "auroc": chosen["auroc"], "curve": [at(f) for f in grid]}


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
