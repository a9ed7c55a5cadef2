"""``assay probe``, ``assay steer``, ``assay lens``: probes, steering and the logit lens on a real LM.

- ``probe``: cross-validated probe AUROC per layer for the bundled Pang & Lee sentiment sentences
  (all layers captured in one forward pass per batch), plotted with DeLong intervals.
- ``steer``: sentiment steering directions at one layer — CAA (mean BOS-free residual of positive minus
  negative sentences), the sign-fixed PCA of paired differences, and a logistic probe's weight — each
  rescaled to the CAA norm; per direction and strength, the effect (shift of the log-likelihood gap between held-out positive and
  negative continuations after a neutral prompt, with a paired-t interval; Pres et al. 2024 scores;
  a downstream sentiment probe's read-out shift) and the coherence cost (KL to the unsteered model
  and perplexity on held-out text); all directions' success-vs-coherence curves on the same axes
  (Bhalla et al. 2024, "Towards Unifying Interpretability and Control").
- ``lens``: the logit lens over layers at the prompt's positions (top token, KL to the final
  distribution), as a table and a heatmap.

Each command writes ``results.json``, its plot under ``out_dir/plots/`` and a report section
(``section.json`` + ``report.html``, :mod:`assay.report.section`) into ``out_dir``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer

from assay.cli import command
from assay.config import check_choice

__all__ = ["ProbeConfig", "SteerConfig", "LensConfig", "run_probe", "run_steer", "run_lens", "register"]


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
    """Where the plot and results.json go."""

    def __post_init__(self) -> None:
        if not 4 <= self.n_sentences <= 200:
            raise ValueError(f"n_sentences must be in 4..200, got {self.n_sentences}")
        if self.C <= 0 or self.folds < 2 or self.batch_size < 1:
            raise ValueError("C must be positive, folds >= 2 and batch_size >= 1")


def _balanced(texts: list[str], labels: Any, n: int, seed: int) -> tuple[list[str], Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    idx = []
    for cls in (1, 0):
        rows = (labels == cls).nonzero().flatten()
        idx.append(rows[torch.randperm(rows.numel(), generator=g)][: n // 2])
    order = torch.cat(idx)
    order = order[torch.randperm(order.numel(), generator=g)]
    return [texts[i] for i in order.tolist()], labels[order]


def _sites(lm: Any, layers: tuple[int, ...]) -> list[str]:
    n = len(lm.layer_sites)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"layer(s) {bad} do not exist; {lm.name} has layers 0..{n - 1}")
    return [lm.layer_sites[i] for i in layers] if layers else list(lm.layer_sites)


def run_probe(cfg: ProbeConfig, lm: Any = None) -> dict[str, Any]:
    """Run the sweep (``lm``: an already loaded model, else ``cfg.model`` is loaded); ends by writing
    the report section (``out_dir/section.json`` + ``report.html``)."""
    from assay.corpora import load_labelled_sentences
    from assay.lenses.probe_eval import tpr_at_fpr
    from assay.lenses.probes import logistic
    from assay.lenses.sweep import collect_features, probe_sweep
    from assay.lenses.text import batches
    from assay.models.offline import load

    lm = lm or load(cfg.model)
    texts, labels = load_labelled_sentences("pang_lee")
    texts, labels = _balanced(texts, labels, cfg.n_sentences, cfg.seed)
    sites = _sites(lm, cfg.layers)
    feats = collect_features(lm.model, sites, batches(lm.tokenizer, texts, cfg.batch_size), pooling=cfg.pooling,
                             skip_first=cfg.pooling != "last")
    sweep = probe_sweep(feats, labels, fit=lambda x, y: logistic(x, y, C=cfg.C), k=cfg.folds, seed=cfg.seed)
    rows = [{"site": s, "auroc": r.auroc.value, "auroc_low": r.auroc.low, "auroc_high": r.auroc.high,
             "accuracy": r.accuracy.value, "accuracy_low": r.accuracy.low, "accuracy_high": r.accuracy.high,
             "tpr_at_1pct_fpr": tpr_at_fpr(r.scores, labels, 0.01)} for s, r in zip(sweep.sites, sweep.results)]
    out = Path(cfg.out_dir)
    plot = out / "plots" / "probe_auroc.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    result = {"model": lm.name, "n_sentences": len(texts), "pooling": cfg.pooling, "best": sweep.best(), "layers": rows,
              "plot": str(plot)}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    _plot_probe(rows, plot, f"{lm.name}: sentiment probe AUROC ({cfg.pooling} pooling)")
    _probe_section(out, result, cfg)
    return result


def _layer(site: str, i: int) -> int:
    tail = site.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else i


def _probe_section(out: Path, r: dict[str, Any], cfg: ProbeConfig) -> None:
    from assay.report import Plot, Section, Table, write_section

    rows = [[_layer(x["site"], i), x["site"], round(x["auroc"], 4), f"[{x['auroc_low']:.3f}, {x['auroc_high']:.3f}]",
             round(x["accuracy"], 4), f"[{x['accuracy_low']:.3f}, {x['accuracy_high']:.3f}]",
             round(x["tpr_at_1pct_fpr"], 4)] for i, x in enumerate(r["layers"])]
    best = max(r["layers"], key=lambda x: x["auroc"])
    table = Table(f"Cross-validated sentiment probe per layer ({cfg.folds}-fold, {r['n_sentences']} sentences)",
                  ["layer", "site", "AUROC", "AUROC 95% CI (DeLong)", "accuracy", "accuracy 95% CI (Wilson)",
                   "TPR@1%FPR"], rows)
    notes = [f"{r['model']}: standardised logistic probe (C={cfg.C:g}) on {cfg.pooling}-pooled residuals "
             f"(BOS excluded) of the bundled Pang & Lee sentences, all layers captured in one forward pass per batch.",
             f"Best layer: {best['site']} with AUROC {best['auroc']:.3f} "
             f"[{best['auroc_low']:.3f}, {best['auroc_high']:.3f}]."]
    write_section(out, Section(f"Probe sweep: {r['model']} sentiment", [table],
                               [Plot("Cross-validated AUROC per layer (band: 95% DeLong interval)",
                                     Path(r["plot"]))], notes))


def _plot_probe(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    from assay.report import new_figure, save_figure

    x = [_layer(r["site"], i) for i, r in enumerate(rows)]
    fig = new_figure((6, 3.5))
    ax = fig.subplots()
    ax.plot(x, [r["auroc"] for r in rows], marker="o")
    ax.fill_between(x, [r["auroc_low"] for r in rows], [r["auroc_high"] for r in rows], alpha=0.25)
    ax.set_xlabel("layer")
    ax.set_ylabel("cross-validated AUROC")
    ax.set_ylim(0.4, 1.0)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


STEER_DIRECTIONS = ("caa", "pca", "probe")
DIRECTION_NAMES = {"caa": "CAA (difference of means)", "pca": "PCA of paired differences",
                   "probe": "logistic-probe direction"}


@dataclass(frozen=True, kw_only=True)
class SteerConfig:
    """Sentiment steering directions (CAA, PCA, probe): effect (Pres et al. scores, probe read-out) and coherence
    cost per strength."""

    model: str = "smollm2-135m"
    """Offline model name."""
    layer: int = 15
    """Residual layer to extract at and steer (SmolLM2 sweep over 6/9/12/15/18/24: 15 moves sentiment most
    per unit of coherence cost — docs/lenses.md)."""
    readout_layer: int | None = None
    """Layer whose sentiment probe (fitted on the training sentences) reads the effect (None: the last layer)."""
    n_train: int = 60
    """Sentences (balanced) used to extract the vector and fit the read-out probe; the rest are held out."""
    n_eval: int = 40
    """Held-out positive/negative sentence pairs scored as continuations."""
    directions: tuple[Literal["caa", "pca", "probe"], ...] = ("caa", "pca", "probe")
    """Steering directions to evaluate: caa (mean paired difference), pca (first principal component of the
    paired differences, sign-fixed), probe (weight of a logistic probe fitted at the steered layer); all
    rescaled to the CAA vector's norm so that α is the same size of edit for each."""
    strengths: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    """Multipliers α of each direction v (norm ‖CAA‖): h ← h + α·v at every position (the last one shows where
    the coherence cost outgrows the effect)."""
    prompt: str = "Here is my review of the film:"
    """Neutral prompt before each continuation (and for the sample generations)."""
    max_new_tokens: int = 20
    """Tokens generated per sample."""
    n_heldout: int = 8
    """Documents of the bundled ``lee`` corpus whose perplexity / KL to the unsteered model measure the coherence cost."""
    heldout_tokens: int = 64
    """Tokens per held-out document."""
    C: float = 1e-3
    """Inverse L2 strength of the read-out probe (standardised logistic)."""
    batch_size: int = 16
    """Sequences per forward pass."""
    seed: int = 0
    """Seed of the train/held-out split."""
    out_dir: Path = Path("runs/steer")
    """Where the plot, results.json and the report section go."""

    def __post_init__(self) -> None:
        if self.n_train < 4 or self.n_eval < 2 or self.n_train + 2 * self.n_eval > 200:
            raise ValueError("need n_train >= 4, n_eval >= 2 and n_train + 2*n_eval <= 200 sentences")
        if not self.strengths:
            raise ValueError("give at least one strength")
        if not self.directions:
            raise ValueError(f"give at least one direction (choices: {', '.join(STEER_DIRECTIONS)})")
        for d in self.directions:
            check_choice("directions", d, STEER_DIRECTIONS)
        if len(set(self.directions)) != len(self.directions):
            raise ValueError(f"directions must not repeat, got {self.directions}")
        if any(not math.isfinite(a) for a in self.strengths):
            raise ValueError(f"strengths must be finite numbers, got {self.strengths}")
        if self.C <= 0 or self.batch_size < 1 or self.n_heldout < 1 or self.heldout_tokens < 2:
            raise ValueError("C must be positive, batch_size and n_heldout >= 1, heldout_tokens >= 2")
        if self.readout_layer is not None and self.readout_layer < self.layer:
            raise ValueError(f"readout_layer ({self.readout_layer}) must be at or after the steered layer ({self.layer})")


def _drop_first(mask: Any) -> Any:
    """The attention mask without each row's first real token (the BOS)."""
    import torch

    pm = mask.bool().clone()
    pm[torch.arange(pm.shape[0]), pm.long().argmax(1)] = False
    return pm


def run_steer(cfg: SteerConfig, lm: Any = None) -> dict[str, Any]:
    """Extract, apply and evaluate the steering vector; ends by writing the report section."""
    import torch

    from assay.corpora import load_corpus, load_labelled_sentences
    from assay.evaluate.intervention import TradeoffCurve, mean_kl, perplexity, plot_tradeoffs
    from assay.evaluate.steering import continuation_loglik, paired_shift, pres_scores
    from assay.hooks import capture
    from assay.lenses.pooling import pool_mean
    from assay.lenses.probes import logistic
    from assay.lenses.steering import caa, pca_direction, probe_direction, steer
    from assay.lenses.sweep import collect_features
    from assay.lenses.text import batches, encode_texts
    from assay.models.offline import load

    lm = lm or load(cfg.model)
    model, tok = lm.model, lm.tokenizer
    ro_layer = cfg.readout_layer if cfg.readout_layer is not None else len(lm.layer_sites) - 1
    site, ro_site = _sites(lm, (cfg.layer, ro_layer))
    texts, labels = load_labelled_sentences("pang_lee")
    g = torch.Generator().manual_seed(cfg.seed)
    pos_idx = (labels == 1).nonzero().flatten()[torch.randperm(100, generator=g)]
    neg_idx = (labels == 0).nonzero().flatten()[torch.randperm(100, generator=g)]
    k = cfg.n_train // 2
    train = {"pos": [texts[i] for i in pos_idx[:k].tolist()], "neg": [texts[i] for i in neg_idx[:k].tolist()]}
    eval_pos = [texts[i] for i in pos_idx[k:k + cfg.n_eval].tolist()]
    eval_neg = [texts[i] for i in neg_idx[k:k + cfg.n_eval].tolist()]
    feats = collect_features(model, list(dict.fromkeys([site, ro_site])),
                             batches(tok, train["pos"] + train["neg"], cfg.batch_size), pooling="mean", skip_first=True)
    read = {"pos": {s: f[:k] for s, f in feats.items()}, "neg": {s: f[k:] for s, f in feats.items()}}
    v = caa(read["pos"][site], read["neg"][site])
    scale = float(feats[site].norm(dim=1).mean())
    y_ro = torch.cat([torch.ones(k, dtype=torch.long), torch.zeros(k, dtype=torch.long)])
    probe = logistic(feats[ro_site], y_ro, C=cfg.C)
    raw = {"caa": v}
    if "pca" in cfg.directions:
        raw["pca"] = pca_direction(read["pos"][site], read["neg"][site])
    if "probe" in cfg.directions:
        raw["probe"] = probe_direction(probe if ro_site == site else logistic(feats[site], y_ro, C=cfg.C))
    # every direction at the CAA norm: α is the same size of edit for all
    vecs = {d: (raw[d].double() * (v.double().norm() / raw[d].double().norm())).to(v.dtype) for d in cfg.directions}
    class_gap = float(probe.score(read["pos"][ro_site]).mean() - probe.score(read["neg"][ro_site]).mean())

    n_prompt = int(encode_texts(tok, [cfg.prompt]).attention_mask.sum())
    cont_batches = []
    conts = eval_pos + eval_neg  # one list: a batch may hold both, split again by index below
    for i in range(0, len(conts), cfg.batch_size):
        full = encode_texts(tok, [cfg.prompt + " " + c for c in conts[i:i + cfg.batch_size]])
        n_cont = full.attention_mask.sum(1) - n_prompt
        T = full.input_ids.shape[1]
        cont_batches.append((full, torch.arange(T)[None, :] >= (T - n_cont)[:, None]))
    docs = [d.text for d in load_corpus("lee")][: cfg.n_heldout]
    held = encode_texts(tok, docs, max_length=cfg.heldout_tokens)

    def measure() -> tuple[Any, Any, Any, Any]:
        """Continuation LLs (pos, neg), probe read-outs of every continuation, held-out logits."""
        lls, reads = [], []
        for full, cont in cont_batches:
            with torch.no_grad(), capture(model, [ro_site]) as cap:
                logits = model(input_ids=full.input_ids, attention_mask=full.attention_mask).logits
            lls.append(continuation_loglik(logits, full.input_ids, cont))
            reads.append(probe.score(pool_mean(cap[ro_site].float(), _drop_first(full.attention_mask))).double())
        with torch.no_grad():
            held_logits = model(input_ids=held.input_ids, attention_mask=held.attention_mask).logits
        ll = torch.cat(lls)
        return ll[:len(eval_pos)], ll[len(eval_pos):], torch.cat(reads) / class_gap, held_logits

    base_pos, base_neg, base_read, base_held = measure()
    sample_ids = encode_texts(tok, [cfg.prompt])

    def evaluate(vec: Any, a: float) -> dict[str, Any]:
        with steer(model, {site: vec}, strength=a):
            ll_pos, ll_neg, ro, held_logits = measure()
        with steer(model, {site: vec}, strength=a), torch.no_grad():
            gen = model.generate(sample_ids.input_ids, attention_mask=sample_ids.attention_mask, do_sample=False,
                                 max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.eos_token_id)
        scores = pres_scores(base_pos, base_neg, ll_pos, ll_neg)
        effect = paired_shift(base_pos - base_neg, ll_pos - ll_neg)
        shift = paired_shift(base_read, ro)
        return {"strength": a, "effect": effect.value, "effect_low": effect.low, "effect_high": effect.high,
                "pres_fractions": scores.fractions, "pres_pos": scores.pos, "pres_neg": scores.neg,
                "ll_gap": float((ll_pos - ll_neg).mean()),
                "probe_shift": shift.value, "probe_shift_low": shift.low, "probe_shift_high": shift.high,
                "heldout_kl": mean_kl(base_held, held_logits, held.attention_mask),
                "heldout_ppl": perplexity(held_logits, held.input_ids, held.attention_mask),
                "sample": tok.decode(gen[0, sample_ids.input_ids.shape[1]:], skip_special_tokens=True).strip()}

    zero: dict[str, Any] | None = None  # α = 0 is the same edit for every direction: evaluated once, shared
    by_dir: dict[str, list[dict[str, Any]]] = {}
    for d in cfg.directions:
        by_dir[d] = []
        for a in map(float, cfg.strengths):
            if a == 0.0:
                zero = zero or evaluate(vecs[d], 0.0)
                row = dict(zero)
            else:
                row = evaluate(vecs[d], a)
            by_dir[d].append({"direction": d, **row})
    out = Path(cfg.out_dir)
    plot = out / "plots" / "steer_tradeoff.png"
    curves = [TradeoffCurve(DIRECTION_NAMES[d], tuple(r["strength"] for r in rs), tuple(r["effect"] for r in rs),
                            tuple(r["heldout_kl"] for r in rs), tuple((r["effect_low"], r["effect_high"]) for r in rs))
              for d, rs in by_dir.items()]
    plot_tradeoffs(curves, plot, xlabel="coherence cost: held-out KL to unsteered (nats/token)",
                   ylabel="effect: Δ[LL(pos) − LL(neg)] (nats/token)", title=f"{lm.name} layer {cfg.layer}")
    unit_caa = v.double() / v.double().norm()
    directions = {d: {"raw_norm": float(raw[d].norm()),
                      "cosine_to_caa": float(raw[d].double() @ unit_caa / raw[d].double().norm()),
                      "rows": by_dir[d]} for d in cfg.directions}
    result = {"model": lm.name, "site": site, "readout_site": ro_site, "vector_norm": float(v.norm()),
              "mean_residual_norm": scale, "probe_class_gap": class_gap,
              "base_ppl": perplexity(base_held, held.input_ids, held.attention_mask),
              "directions": directions, "rows": [r for rs in by_dir.values() for r in rs], "plot": str(plot)}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    _steer_section(out, result, cfg)
    return result


def _steer_section(out: Path, r: dict[str, Any], cfg: SteerConfig) -> None:
    from assay.report import Plot, Section, Table, write_section

    rows = []
    for x in r["rows"]:
        rows.append([x["direction"], x["strength"], round(x["effect"], 4),
                     f"[{x['effect_low']:.3f}, {x['effect_high']:.3f}]",
                     *(f"{p:+.3f} / {n:+.3f}" for p, n in zip(x["pres_pos"], x["pres_neg"])),
                     round(x["probe_shift"], 4), f"[{x['probe_shift_low']:.3f}, {x['probe_shift_high']:.3f}]",
                     round(x["heldout_kl"], 4), round(x["heldout_ppl"], 3), x["sample"]])
    fr = r["rows"][0]["pres_fractions"]
    table = Table(f"Direction and strength → effect and coherence cost ({r['site']})",
                  ["direction", "α", "effect (Δ LL gap)", "effect 95% CI", *(f"Pres Pos/Neg @{q:g}" for q in fr),
                   "probe shift (× class gap)", "probe shift 95% CI", "KL held-out", "held-out ppl", "sample"], rows)
    half = cfg.n_train // 2
    described = {
        "caa": f"caa = mean BOS-free residual of {half} positive minus {half} negative Pang & Lee sentences",
        "pca": "pca = first principal component of the (centred) paired differences, sign-fixed so that positives "
               "project above their negatives",
        "probe": f"probe = weight of a standardised logistic probe (C={cfg.C:g}) fitted on the same training "
                 "sentences at the steered layer"}
    cos = ", ".join(f"{d} {x['cosine_to_caa']:+.3f}" for d, x in r["directions"].items() if d != "caa")
    notes = [f"{r['model']} at {r['site']}: " + "; ".join(described[d] for d in r["directions"]) + ". "
             f"Every direction is rescaled to the CAA vector's norm (‖v‖ = {r['vector_norm']:.2f}; mean residual "
             f"norm {r['mean_residual_norm']:.1f}), so α is the same size of edit for all; h ← h + α·v at every "
             "position." + (f" Cosine to CAA: {cos}." if cos else ""),
             f"Effect: change of the mean per-token log-likelihood gap LL(pos) − LL(neg) of {cfg.n_eval} held-out "
             f"positive/negative sentence pairs after the prompt {cfg.prompt!r} (paired-t 95% interval); Pres et "
             "al. 2024 Pos/Neg scores on the hardest fractions.",
             f"Probe shift: change of a sentiment probe's logit at {r['readout_site']} on the same continuations, in "
             f"units of its training class-mean gap ({r['probe_class_gap']:.3f}); 1 = a negative text read as positive.",
             f"Coherence cost: KL(unsteered ‖ steered) per token and perplexity on {cfg.n_heldout} held-out `lee` "
             f"documents ({cfg.heldout_tokens} tokens; unsteered perplexity {r['base_ppl']:.2f}). The unsteered "
             "baseline is computed once; α = 0 is the same (null) edit for every direction, evaluated once and shared."]
    names = ", ".join(d.upper() if d != "probe" else "probe" for d in r["directions"])
    write_section(out, Section(f"Steering: {r['model']} sentiment ({names}; layer {cfg.layer})", [table],
                               [Plot("Effect (with 95% interval) vs coherence cost, one curve per direction; "
                                     "labels are α", Path(r["plot"]))], notes))


@dataclass(frozen=True, kw_only=True)
class LensConfig:
    """The logit lens over layers on one prompt."""

    model: str = "smollm2-135m"
    """Offline model name."""
    prompt: str = "The capital of France is"
    """The prompt to read."""
    layers: tuple[int, ...] = ()
    """Layer indices (empty: all)."""
    positions: tuple[int, ...] = ()
    """Prompt positions to show (0 is the BOS; negative counts back from the end; empty: all)."""
    out_dir: Path = Path("runs/lens")
    """Where results.json, the heatmap and the report section go."""


def run_lens(cfg: LensConfig, lm: Any = None) -> dict[str, Any]:
    """Decode every layer at the chosen positions; ends by writing the report section."""
    from assay.lenses.logit_lens import logit_lens
    from assay.lenses.text import encode_texts
    from assay.models.offline import load

    lm = lm or load(cfg.model)
    sites = _sites(lm, cfg.layers)
    batch = encode_texts(lm.tokenizer, [cfg.prompt])
    T = batch.input_ids.shape[1]
    bad = [p for p in cfg.positions if not -T <= p < T]
    if bad:
        raise ValueError(f"position(s) {bad} do not exist; the prompt has {T} tokens (BOS included): use 0..{T - 1} "
                         f"or -{T}..-1")
    cols = sorted({p % T for p in cfg.positions}) if cfg.positions else list(range(T))
    res = logit_lens(lm.model, sites, input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    dec = lm.tokenizer.decode
    probs = res.logits[:, 0, cols].softmax(-1)
    top = probs.max(-1)
    rows = []
    for i, s in enumerate(sites):
        top3 = res.logits[i, 0, -1].topk(3)
        rows.append({"site": s, "top": [dec([t]) for t in top3.indices.tolist()],
                     "kl_to_final": float(res.kl[i, 0, -1]),
                     "top_at": [dec([t]) for t in top.indices[i].tolist()], "p_top_at": top.values[i].tolist(),
                     "kl_at": res.kl[i, 0, cols].tolist()})
    final_top = dec([int(res.final_logits[0, -1].argmax())])
    out = Path(cfg.out_dir)
    plot = out / "plots" / "logit_lens.png"
    tokens = [dec([t]) for t in batch.input_ids[0, cols].tolist()]
    _plot_lens(rows, tokens, cols, plot, f"{lm.name}: logit lens on {cfg.prompt!r}")
    result = {"model": lm.name, "prompt": cfg.prompt, "positions": cols, "tokens": tokens, "final_top": final_top,
              "final_top_at": [dec([int(t)]) for t in res.final_logits[0, cols].argmax(-1).tolist()],
              "layers": rows, "plot": str(plot)}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    _lens_section(out, result)
    return result


def _plot_lens(rows: list[dict[str, Any]], tokens: list[str], cols: list[int], path: Path, title: str) -> None:
    from assay.report import new_figure, save_figure

    grid = [r["p_top_at"] for r in rows]
    fig = new_figure((1.2 + 1.1 * len(cols), 1.2 + 0.28 * len(rows)))
    ax = fig.subplots()
    im = ax.imshow(grid, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0, origin="lower")
    for i, r in enumerate(rows):
        for j, t in enumerate(r["top_at"]):
            ax.text(j, i, repr(t)[1:-1][:10], ha="center", va="center", fontsize=6, parse_math=False,
                    color="white" if r["p_top_at"][j] > 0.6 else "black")
    ax.set_xticks(range(len(cols)), [f"{c}: {repr(t)[1:-1][:10]}" for c, t in zip(cols, tokens)], rotation=45,
                  ha="right", fontsize=7)
    for lab in ax.get_xticklabels():
        lab.set_parse_math(False)
    ax.set_yticks(range(len(rows)), [r["site"].rsplit(".", 1)[-1] for r in rows], fontsize=6)
    ax.set_xlabel("prompt position: input token")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="top-1 probability")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _lens_section(out: Path, r: dict[str, Any]) -> None:
    from assay.report import Plot, Section, Table, write_section

    head = [f"{c}: {t!r}" for c, t in zip(r["positions"], r["tokens"])]
    rows = [[_layer(x["site"], i), *x["top_at"], round(x["kl_to_final"], 4)] for i, x in enumerate(r["layers"])]
    rows.append(["model", *r["final_top_at"], 0.0])
    table = Table("Logit lens: top token per layer at each prompt position",
                  ["layer", *head, "KL to final (last position, nats)"], rows)
    notes = [f"{r['model']} on {r['prompt']!r}: each layer's residual decoded with the model's final norm and "
             "unembedding (nostalgebraist 2020). Columns are prompt positions (position: input token); cells are "
             "the lens's top next-token prediction there.", f"The model's own next token: {r['final_top']!r}."]
    write_section(out, Section(f"Logit lens: {r['model']}", [table],
                               [Plot("Top-1 token and its probability per layer and position", Path(r["plot"]))],
                               notes))


def register(app: typer.Typer) -> None:
    def probe(cfg: ProbeConfig) -> None:
        r = run_probe(cfg)
        for row in r["layers"]:
            typer.echo(f"{row['site']:20s} AUROC {row['auroc']:.3f} [{row['auroc_low']:.3f}, {row['auroc_high']:.3f}]"
                       f"  acc {row['accuracy']:.3f}")
        typer.echo(f"best: {r['best']}   plot: {r['plot']}   section: {Path(cfg.out_dir) / 'section.json'}")

    def steer_cmd(cfg: SteerConfig) -> None:
        r = run_steer(cfg)
        for row in r["rows"]:
            typer.echo(f"{row['direction']:5s} α={row['strength']:<5g} effect {row['effect']:+.3f} [{row['effect_low']:+.3f}, "
                       f"{row['effect_high']:+.3f}]  Pres pos/neg@50% {row['pres_pos'][1]:+.3f}/{row['pres_neg'][1]:+.3f}"
                       f"  probe shift {row['probe_shift']:+.3f}  KL {row['heldout_kl']:.4f}  ppl "
                       f"{row['heldout_ppl']:.2f}  | {row['sample']!r}")
        typer.echo(f"plot: {r['plot']}   section: {Path(cfg.out_dir) / 'section.json'}")

    def lens(cfg: LensConfig) -> None:
        r = run_lens(cfg)
        typer.echo(f"positions {r['positions']}: {r['tokens']}")
        for row in r["layers"]:
            typer.echo(f"{row['site']:20s} KL@last {row['kl_to_final']:7.3f}  top@last {row['top']}  "
                       f"top per position {row['top_at']}")
        typer.echo(f"final: {r['final_top']!r}   plot: {r['plot']}")

    command(app, "probe", ProbeConfig, probe)
    command(app, "steer", SteerConfig, steer_cmd)
    command(app, "lens", LensConfig, lens)
