"""The sentiment-steering experiment behind ``assay steer``: directions, their effect and their coherence cost.

Directions at one layer (Panickssery et al. 2023 CAA; Zou et al. 2023 PCA of paired differences; a
logistic probe's weight, Bhalla et al. 2024 §4), extracted from mean BOS-free residuals of positive and
negative Pang & Lee sentences and rescaled to the CAA norm (:func:`assay.lenses.steering.contrast_direction`,
:func:`~assay.lenses.steering.rescale`), so α is the same size of edit for each. Per direction and
strength α (h ← h + α·v at every position):

- effect: the change of the log-likelihood gap LL(pos) − LL(neg) of held-out positive/negative sentences
  continuing a neutral prompt, with a paired-t interval; Pres et al. 2024 Pos/Neg scores;
- probe read-out shift: a downstream sentiment probe's logit on the same continuations, in units of its
  training class-mean gap;
- coherence cost: KL(unsteered ‖ steered) per token and perplexity on held-out ``lee`` documents.

All directions' effect-vs-KL curves go on the same axes (Bhalla et al. 2024, "Towards Unifying
Interpretability and Control"). The vectors used and the read-out probe are saved as artifacts
(``vectors/``, ``readout_probe/``; :mod:`assay.lenses.artifacts`), with off-policy provenance.
The data pieces (:func:`sentiment_split`, :func:`continuation_batches`, :func:`heldout_batch`,
:func:`continuation_scores`) are shared with the lenses family's ``smollm2`` world.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from assay.bench.lenses.lm import layer_sites
from assay.config import check_choice

__all__ = ["SteerConfig", "run_steer", "STEER_DIRECTIONS", "SentimentSplit", "sentiment_split", "continuation_batches",
           "heldout_batch", "continuation_scores"]

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
    """Where the plot, results.json, the artifacts (vectors/, readout_probe/) and the report section go."""

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


class SentimentSplit(NamedTuple):
    """Pang & Lee sentences split into training (for extraction) and held-out continuations."""

    train_pos: list[str]
    """Positive training sentences (n_train // 2)."""
    train_neg: list[str]
    """Negative training sentences (n_train // 2)."""
    eval_pos: list[str]
    """Held-out positive sentences (n_eval), paired by index with ``eval_neg``."""
    eval_neg: list[str]
    """Held-out negative sentences (n_eval)."""


def sentiment_split(n_train: int, n_eval: int, seed: int) -> SentimentSplit:
    """A seeded split of the 100 positive and 100 negative bundled sentences."""
    import torch

    from assay.corpora import load_labelled_sentences

    texts, labels = load_labelled_sentences("pang_lee")
    g = torch.Generator().manual_seed(seed)
    pos_idx = (labels == 1).nonzero().flatten()[torch.randperm(100, generator=g)].tolist()
    neg_idx = (labels == 0).nonzero().flatten()[torch.randperm(100, generator=g)].tolist()
    k = n_train // 2
    return SentimentSplit([texts[i] for i in pos_idx[:k]], [texts[i] for i in neg_idx[:k]],
                          [texts[i] for i in pos_idx[k:k + n_eval]], [texts[i] for i in neg_idx[k:k + n_eval]])


def drop_first(mask: Any) -> Any:
    """The attention mask without each row's first real token (the BOS)."""
    import torch

    pm = mask.bool().clone()
    pm[torch.arange(pm.shape[0]), pm.long().argmax(1)] = False
    return pm


def continuation_batches(tok: Any, prompt: str, texts: list[str], batch_size: int) -> list[tuple[Any, Any]]:
    """``(TokenBatch of prompt + " " + text, continuation mask [B, T])`` per batch of ``texts``."""
    import torch

    from assay.lenses.text import encode_texts

    n_prompt = int(encode_texts(tok, [prompt]).attention_mask.sum())
    out = []
    for i in range(0, len(texts), batch_size):
        full = encode_texts(tok, [prompt + " " + c for c in texts[i:i + batch_size]])
        n_cont = full.attention_mask.sum(1) - n_prompt
        T = full.input_ids.shape[1]
        out.append((full, torch.arange(T)[None, :] >= (T - n_cont)[:, None]))
    return out


def heldout_batch(tok: Any, n_docs: int, max_tokens: int) -> Any:
    """The first ``n_docs`` documents of the bundled ``lee`` corpus, ``max_tokens`` each (a TokenBatch)."""
    from assay.corpora import load_corpus
    from assay.lenses.text import encode_texts

    return encode_texts(tok, [d.text for d in load_corpus("lee")][:n_docs], max_length=max_tokens)


def continuation_scores(model: Any, batches: list[tuple[Any, Any]], *, probe: Any = None,
                        site: str | None = None) -> tuple[Any, Any]:
    """Per-token mean log-likelihood of every continuation ``[N]``, and (with ``probe`` at ``site``) the probe's
    score of each whole text's BOS-free mean residual ``[N]`` (else None), from one forward pass per batch."""
    import torch

    from assay.evaluate.steering import continuation_loglik
    from assay.hooks import capture
    from assay.lenses.pooling import pool_mean

    lls, reads = [], []
    for full, cont in batches:
        with torch.no_grad(), capture(model, [site] if probe is not None else []) as cap:
            logits = model(input_ids=full.input_ids, attention_mask=full.attention_mask).logits
        lls.append(continuation_loglik(logits, full.input_ids, cont))
        if probe is not None:
            reads.append(probe.score(pool_mean(cap[site].float(), drop_first(full.attention_mask))).double())
    return torch.cat(lls), (torch.cat(reads) if probe is not None else None)


def run_steer(cfg: SteerConfig, lm: Any = None) -> dict[str, Any]:
    """Extract, apply and evaluate the steering directions; saves them and the read-out probe as artifacts and
    ends by writing the report section."""
    import torch

    from assay.evaluate.intervention import TradeoffCurve, mean_kl, perplexity, plot_tradeoffs
    from assay.evaluate.steering import paired_shift, pres_scores
    from assay.lenses.artifacts import Provenance, save_probe, save_steering_vectors
    from assay.lenses.probes import logistic
    from assay.lenses.steering import contrast_direction, rescale, steer
    from assay.lenses.sweep import collect_features
    from assay.lenses.text import batches, encode_texts
    from assay.models.offline import load

    lm = lm or load(cfg.model)
    model, tok = lm.model, lm.tokenizer
    ro_layer = cfg.readout_layer if cfg.readout_layer is not None else len(lm.layer_sites) - 1
    site, ro_site = layer_sites(lm, (cfg.layer, ro_layer))
    split = sentiment_split(cfg.n_train, cfg.n_eval, cfg.seed)
    k = cfg.n_train // 2
    feats = collect_features(model, list(dict.fromkeys([site, ro_site])),
                             batches(tok, split.train_pos + split.train_neg, cfg.batch_size), pooling="mean",
                             skip_first=True)
    pos, neg = feats[site][:k], feats[site][k:]
    v = contrast_direction("caa", pos, neg)
    scale = float(feats[site].norm(dim=1).mean())
    y_ro = torch.cat([torch.ones(k, dtype=torch.long), torch.zeros(k, dtype=torch.long)])
    probe = logistic(feats[ro_site], y_ro, C=cfg.C, standardise=True)
    raw = {d: contrast_direction(d, pos, neg, C=cfg.C) for d in cfg.directions}
    vecs = {d: rescale(raw[d], float(v.double().norm())) for d in cfg.directions}  # α: the same size of edit for all
    class_gap = float(probe.score(feats[ro_site][:k]).mean() - probe.score(feats[ro_site][k:]).mean())

    cont_batches = continuation_batches(tok, cfg.prompt, split.eval_pos + split.eval_neg, cfg.batch_size)
    held = heldout_batch(tok, cfg.n_heldout, cfg.heldout_tokens)
    n_pos = len(split.eval_pos)

    def measure() -> tuple[Any, Any, Any, Any]:
        """Continuation LLs (pos, neg), probe read-outs of every continuation, held-out logits."""
        ll, reads = continuation_scores(model, cont_batches, probe=probe, site=ro_site)
        with torch.no_grad():
            held_logits = model(input_ids=held.input_ids, attention_mask=held.attention_mask).logits
        return ll[:n_pos], ll[n_pos:], reads / class_gap, held_logits

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
    data = f"Pang & Lee sentence polarity (bundled; training split of seed {cfg.seed}: {k} positive, {k} negative)"
    vectors = save_steering_vectors(
        out / "vectors", vecs, meta={"caa_norm": float(v.norm()), "raw_norms": {d: x["raw_norm"] for d, x in directions.items()},
                                     "strengths": list(cfg.strengths), "operator": "add"},
        provenance=Provenance(model=lm.name, data=data, policy="off", site=site, pooling="mean (BOS excluded)",
                              n_examples=2 * k, labels="positive minus negative sentiment"))
    readout = save_probe(out / "readout_probe", probe, meta={"C": cfg.C, "class_gap": class_gap},
                         provenance=Provenance(model=lm.name, data=data, policy="off", site=ro_site,
                                               pooling="mean (BOS excluded)", n_examples=2 * k,
                                               labels="positive sentiment (Pang & Lee __label__pos)"))
    result = {"model": lm.name, "site": site, "readout_site": ro_site, "vector_norm": float(v.norm()),
              "mean_residual_norm": scale, "probe_class_gap": class_gap,
              "base_ppl": perplexity(base_held, held.input_ids, held.attention_mask),
              "directions": directions, "rows": [r for rs in by_dir.values() for r in rs], "plot": str(plot),
              "vectors": str(vectors), "readout_probe": str(readout)}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    _section(out, result, cfg)
    return result


def _section(out: Path, r: dict[str, Any], cfg: SteerConfig) -> None:
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
             "baseline is computed once; α = 0 is the same (null) edit for every direction, evaluated once and shared.",
             "Artifacts: vectors/ (the rescaled directions, load_steering_vectors) and readout_probe/ (load_probe); "
             "provenance: off-policy (human-written sentences read by the model)."]
    names = ", ".join(d.upper() if d != "probe" else "probe" for d in r["directions"])
    write_section(out, Section(f"Steering: {r['model']} sentiment ({names}; layer {cfg.layer})", [table],
                               [Plot("Effect (with 95% interval) vs coherence cost, one curve per direction; "
                                     "labels are α", Path(r["plot"]))], notes))
