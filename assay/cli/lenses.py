"""``assay probe``, ``assay steer``, ``assay lens``: probes, steering and the logit lens on a real LM.

- ``probe``: cross-validated probe AUROC per layer for the bundled Pang & Lee sentiment sentences
  (all layers captured in one forward pass per batch), plotted with DeLong intervals.
- ``steer``: a CAA sentiment steering vector (mean BOS-free residual of positive minus negative
  sentences); per strength, the effect (Pres et al. 2024 scores on held-out positive vs negative
  continuations after a neutral prompt) and the coherence cost (perplexity of held-out neutral text
  under steering); plotted as a success-vs-coherence curve.
- ``lens``: the logit lens over layers on a prompt (top token and KL to the final distribution).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer

from assay.cli import command

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
    """Run the sweep (``lm``: an already loaded model, else ``cfg.model`` is loaded)."""
    from assay.corpora import load_labelled_sentences
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
             "accuracy": r.accuracy.value} for s, r in zip(sweep.sites, sweep.results)]
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": lm.name, "n_sentences": len(texts), "pooling": cfg.pooling, "best": sweep.best(), "layers": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    _plot_probe(rows, out / "probe_auroc.png", f"{lm.name}: sentiment probe AUROC ({cfg.pooling} pooling)")
    result["plot"] = str(out / "probe_auroc.png")
    return result


def _plot_probe(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [int(r["site"].rsplit(".", 1)[-1]) if r["site"].rsplit(".", 1)[-1].isdigit() else i for i, r in enumerate(rows)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(x, [r["auroc"] for r in rows], marker="o")
    ax.fill_between(x, [r["auroc_low"] for r in rows], [r["auroc_high"] for r in rows], alpha=0.25)
    ax.set_xlabel("layer")
    ax.set_ylabel("cross-validated AUROC")
    ax.set_ylim(0.4, 1.0)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclass(frozen=True, kw_only=True)
class SteerConfig:
    """A CAA sentiment steering vector: effect (Pres et al. scores) and coherence cost per strength."""

    model: str = "smollm2-135m"
    """Offline model name."""
    layer: int = 12
    """Residual layer to extract at and steer."""
    n_train: int = 60
    """Sentences (balanced) used to extract the vector; the rest are held out for scoring."""
    n_eval: int = 40
    """Held-out positive/negative sentence pairs scored as continuations."""
    strengths: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    """Multipliers α of the CAA vector v: h ← h + α·v at every position."""
    prompt: str = "Here is my review of the film:"
    """Neutral prompt before each continuation (and for the sample generations)."""
    max_new_tokens: int = 20
    """Tokens generated per sample."""
    n_heldout: int = 8
    """Documents of the bundled ``lee`` corpus whose perplexity measures the coherence cost."""
    heldout_tokens: int = 64
    """Tokens per held-out document."""
    batch_size: int = 16
    """Sequences per forward pass."""
    seed: int = 0
    """Seed of the train/held-out split."""
    out_dir: Path = Path("runs/steer")
    """Where the plot and results.json go."""

    def __post_init__(self) -> None:
        if self.n_train < 4 or self.n_eval < 2 or self.n_train + 2 * self.n_eval > 200:
            raise ValueError("need n_train >= 4, n_eval >= 2 and n_train + 2*n_eval <= 200 sentences")
        if not self.strengths:
            raise ValueError("give at least one strength")


def run_steer(cfg: SteerConfig, lm: Any = None) -> dict[str, Any]:
    """Extract, apply and evaluate the steering vector."""
    import torch

    from assay.corpora import load_corpus, load_labelled_sentences
    from assay.evaluate.intervention import TradeoffCurve, perplexity, plot_tradeoffs
    from assay.evaluate.steering import continuation_loglik, pres_scores
    from assay.lenses.steering import caa, steer
    from assay.lenses.sweep import collect_features
    from assay.lenses.text import batches, encode_texts
    from assay.models.offline import load

    lm = lm or load(cfg.model)
    model, tok = lm.model, lm.tokenizer
    site = _sites(lm, (cfg.layer,))[0]
    texts, labels = load_labelled_sentences("pang_lee")
    g = torch.Generator().manual_seed(cfg.seed)
    pos_idx = (labels == 1).nonzero().flatten()[torch.randperm(100, generator=g)]
    neg_idx = (labels == 0).nonzero().flatten()[torch.randperm(100, generator=g)]
    k = cfg.n_train // 2
    train_pos = [texts[i] for i in pos_idx[:k].tolist()]
    train_neg = [texts[i] for i in neg_idx[:k].tolist()]
    eval_pos = [texts[i] for i in pos_idx[k:k + cfg.n_eval].tolist()]
    eval_neg = [texts[i] for i in neg_idx[k:k + cfg.n_eval].tolist()]
    read = {}
    for name, group in (("pos", train_pos), ("neg", train_neg)):
        read[name] = collect_features(model, [site], batches(tok, group, cfg.batch_size), pooling="mean",
                                      skip_first=True)[site]
    v = caa(read["pos"], read["neg"])
    scale = float(torch.cat([read["pos"], read["neg"]]).norm(dim=1).mean())

    def continuation_ll(conts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(conts), cfg.batch_size):
            prompt = encode_texts(tok, [cfg.prompt])
            full = encode_texts(tok, [cfg.prompt + " " + c for c in conts[i:i + cfg.batch_size]])
            n_cont = full.attention_mask.sum(1) - prompt.attention_mask.sum(1)
            T = full.input_ids.shape[1]
            cont = torch.arange(T)[None, :] >= (T - n_cont)[:, None]
            with torch.no_grad():
                logits = model(input_ids=full.input_ids, attention_mask=full.attention_mask).logits
            out.append(continuation_loglik(logits, full.input_ids, cont))
        return torch.cat(out)

    docs = [d.text for d in load_corpus("lee")][: cfg.n_heldout]
    held = encode_texts(tok, docs, max_length=cfg.heldout_tokens)
    sample_ids = encode_texts(tok, [cfg.prompt])
    rows = []
    base_pos = base_neg = None
    for a in cfg.strengths:
        with steer(model, {site: v}, strength=float(a)):
            ll_pos, ll_neg = continuation_ll(eval_pos), continuation_ll(eval_neg)
            with torch.no_grad():
                ppl = perplexity(model(input_ids=held.input_ids, attention_mask=held.attention_mask).logits,
                                 held.input_ids, held.attention_mask)
        with steer(model, {site: v}, strength=float(a)), torch.no_grad():
            gen = model.generate(sample_ids.input_ids, attention_mask=sample_ids.attention_mask, do_sample=False,
                                 max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.eos_token_id)
        if base_pos is None:
            base_pos, base_neg = ll_pos, ll_neg
        scores = pres_scores(base_pos, base_neg, ll_pos, ll_neg)
        rows.append({"strength": a, "pres_pos": scores.pos, "pres_neg": scores.neg,
                     "ll_gap": float((ll_pos - ll_neg).mean()), "heldout_ppl": ppl,
                     "sample": tok.decode(gen[0, sample_ids.input_ids.shape[1]:], skip_special_tokens=True)})
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curve = TradeoffCurve("CAA sentiment", tuple(r["strength"] for r in rows), tuple(r["ll_gap"] for r in rows),
                          tuple(r["heldout_ppl"] for r in rows))
    plot_tradeoffs([curve], out / "steer_tradeoff.png", xlabel="held-out perplexity (coherence cost)",
                   ylabel="mean LL(pos) − LL(neg) continuation", title=f"{lm.name} layer {cfg.layer}")
    result = {"model": lm.name, "site": site, "vector_norm": float(v.norm()), "mean_residual_norm": scale, "rows": rows,
              "plot": str(out / "steer_tradeoff.png")}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return result


@dataclass(frozen=True, kw_only=True)
class LensConfig:
    """The logit lens over layers on one prompt."""

    model: str = "smollm2-135m"
    """Offline model name."""
    prompt: str = "The capital of France is"
    """The prompt to read."""
    layers: tuple[int, ...] = ()
    """Layer indices (empty: all)."""
    out_dir: Path = Path("runs/lens")
    """Where results.json goes."""


def run_lens(cfg: LensConfig, lm: Any = None) -> dict[str, Any]:
    """Decode every layer at the prompt's last position."""
    from assay.lenses.logit_lens import logit_lens
    from assay.lenses.text import encode_texts
    from assay.models.offline import load

    lm = lm or load(cfg.model)
    sites = _sites(lm, cfg.layers)
    batch = encode_texts(lm.tokenizer, [cfg.prompt])
    res = logit_lens(lm.model, sites, input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    rows = []
    for i, s in enumerate(sites):
        top = res.logits[i, 0, -1].topk(3)
        rows.append({"site": s, "top": [lm.tokenizer.decode([t]) for t in top.indices.tolist()],
                     "kl_to_final": float(res.kl[i, 0, -1])})
    final_top = lm.tokenizer.decode([int(res.final_logits[0, -1].argmax())])
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": lm.name, "prompt": cfg.prompt, "final_top": final_top, "layers": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return result


def register(app: typer.Typer) -> None:
    def probe(cfg: ProbeConfig) -> None:
        r = run_probe(cfg)
        for row in r["layers"]:
            typer.echo(f"{row['site']:20s} AUROC {row['auroc']:.3f} [{row['auroc_low']:.3f}, {row['auroc_high']:.3f}]"
                       f"  acc {row['accuracy']:.3f}")
        typer.echo(f"best: {r['best']}   plot: {r['plot']}")

    def steer_cmd(cfg: SteerConfig) -> None:
        r = run_steer(cfg)
        for row in r["rows"]:
            typer.echo(f"α={row['strength']:<5g} LL gap {row['ll_gap']:+.3f}  Pres pos/neg@50% "
                       f"{row['pres_pos'][1]:+.3f}/{row['pres_neg'][1]:+.3f}  held-out ppl {row['heldout_ppl']:.2f}"
                       f"  | {row['sample']!r}")
        typer.echo(f"plot: {r['plot']}")

    def lens(cfg: LensConfig) -> None:
        r = run_lens(cfg)
        for row in r["layers"]:
            typer.echo(f"{row['site']:20s} KL {row['kl_to_final']:7.3f}  top {row['top']}")
        typer.echo(f"final: {r['final_top']!r}")

    command(app, "probe", ProbeConfig, probe)
    command(app, "steer", SteerConfig, steer_cmd)
    command(app, "lens", LensConfig, lens)
