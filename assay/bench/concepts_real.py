"""The experiment behind ``assay concepts``: SpLiCE decompositions of MiniLM sentence embeddings of the bundled
corpora onto a word vocabulary drawn from the same corpora.

Bhalla, Oesterling, Srinivas, Calmon & Lakkaraju 2024, "Interpreting CLIP with Sparse Linear Concept
Embeddings (SpLiCE)" (arXiv 2402.10376). Offline there is no CLIP, so the two "modalities" are single words
(the concepts) and sentences (the queries), both embedded by all-MiniLM-L6-v2 (:mod:`assay.models.offline`):
their embeddings still sit around different means, which the centring step removes. The vocabulary is the
``vocabulary`` most frequent words of the bundled corpora (letters only, at least 3 long, scikit-learn's
English stop words removed); queries are sentences cut from the corpus documents (6–40 words), an evenly
spaced sample of ``n_documents`` decomposed and the rest (up to ``n_reference``) used for the query mean.

Reported: the L0-vs-cosine trade-off as λ varies (centred, and uncentred for contrast) — the qualitative
shape of SpLiCE's figures (fewer concepts, lower cosine) — and, at ``lam``, each sentence's L0, recomposition
cosine and top concepts. Outputs in ``out_dir``: ``results.json``, ``plots/concepts_tradeoff.svg``, the
concept dictionary artifact (``dictionary/``) and the report section (``section.json`` + ``report.html``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RealConceptsConfig", "run_real_concepts", "corpus_sentences", "corpus_vocabulary"]

_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True, kw_only=True)
class RealConceptsConfig:
    """SpLiCE on MiniLM embeddings of the bundled corpus sentences."""

    corpus: str = "bundled"
    """Corpus the sentences and the vocabulary come from (:data:`assay.corpora.CORPORA`)."""
    n_documents: int = 200
    """Sentences decomposed."""
    n_reference: int = 1000
    """Other sentences the query-side mean is computed from."""
    vocabulary: int = 2000
    """Concepts: the most frequent words of the corpus."""
    lams: tuple[float, ...] = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
    """λ values of the L0-vs-cosine curve (small λ is slow: at λ = 0.1 the codes hold ~80 of 384 dimensions)."""
    lam: float = 0.25
    """λ of the per-sentence table."""
    top: int = 5
    """Concepts listed per sentence."""
    n_show: int = 12
    """Sentences shown in the report table."""
    out_dir: Path = Path("runs/concepts")
    """Output folder (results.json, plots/, dictionary/, section.json, report.html)."""

    def __post_init__(self) -> None:
        if self.n_documents < 1 or self.n_reference < 1 or self.vocabulary < 2 or self.top < 1:
            raise ValueError("n_documents, n_reference and top must be >= 1 and vocabulary >= 2")
        if not self.lams or min(self.lams) < 0 or self.lam < 0:
            raise ValueError(f"give λ values >= 0, got lams={self.lams}, lam={self.lam}")


def corpus_sentences(corpus: str, *, min_words: int = 6, max_words: int = 40) -> list[str]:
    """Sentences of the corpus documents (split after . ! ?), with ``min_words``–``max_words`` words."""
    from assay.corpora import load_corpus

    out = []
    for doc in load_corpus(corpus):
        for s in re.split(r"(?<=[.!?])\s+", doc.text):
            s = " ".join(s.split())
            if min_words <= len(s.split()) <= max_words:
                out.append(s)
    return out


def corpus_vocabulary(corpus: str, size: int) -> list[str]:
    """The ``size`` most frequent lower-cased words (letters only, >= 3 long, not English stop words)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from assay.corpora import load_corpus

    counts = Counter(w.lower() for doc in load_corpus(corpus) for w in _WORD.findall(doc.text))
    words = [w for w, _ in counts.most_common() if len(w) >= 3 and w not in ENGLISH_STOP_WORDS]
    return sorted(words[:size], key=lambda w: -counts[w])


def run_real_concepts(config: RealConceptsConfig, *, loaded: Any = None, log: Any = None) -> dict[str, Any]:
    """Run the experiment (module docstring); ``loaded`` is a loaded ``minilm-l6`` (loaded here if None).
    Returns the results dict (also written to ``results.json``) with the section written to ``out_dir``."""
    import torch

    from assay.artifact import atomic_write_text
    from assay.concepts.dictionary import from_text_model, modality_mean, normalise, save_dictionary
    from assay.concepts.splice import Splice, SpliceConfig
    from assay.evaluate.sparsity import sparsity_metrics
    from assay.models.offline import encode_sentences, load
    from assay.report import write_section

    say = log or (lambda s: None)
    out = Path(config.out_dir)
    loaded = loaded if loaded is not None else load("minilm-l6")
    sentences = corpus_sentences(config.corpus)
    if len(sentences) < config.n_documents + 1:
        raise ValueError(f"corpus {config.corpus!r} has {len(sentences)} usable sentences; lower n_documents")
    step = len(sentences) / config.n_documents
    pick = sorted({int(i * step) for i in range(config.n_documents)})
    docs = [sentences[i] for i in pick]
    chosen = set(pick)
    reference = [s for i, s in enumerate(sentences) if i not in chosen][: config.n_reference]
    words = corpus_vocabulary(config.corpus, config.vocabulary)
    say(f"embedding {len(words)} words, {len(docs)} sentences and {len(reference)} reference sentences")
    query_mean = modality_mean(encode_sentences(loaded, reference))
    z = encode_sentences(loaded, docs)
    centred = from_text_model(words, loaded, query_mean=query_mean)
    plain = from_text_model(words, loaded, centred=False)
    save_dictionary(out / "dictionary", centred)

    def measure(lens: Splice) -> tuple[Any, dict[str, float]]:
        code = lens.encode(z)
        cos = (lens.decode(code) * normalise(z)).sum(-1)
        return code, {"l0": sparsity_metrics(code).l0, "cosine": float(cos.mean()), "per_doc_cosine": cos}

    curve = []
    for lam in config.lams:
        for name, dic, centre in (("centred", centred, True), ("uncentred", plain, False)):
            _, m = measure(Splice(dic, SpliceConfig(lam=lam, centre=centre)))
            curve.append({"lam": lam, "dictionary": name, "l0": m["l0"], "cosine": m["cosine"]})
            say(f"λ {lam:g} {name}: L0 {m['l0']:.2f}, cosine {m['cosine']:.3f}")
    code, m = measure(Splice(centred, SpliceConfig(lam=config.lam)))
    rows = []
    for i, text in enumerate(docs):
        w = code[i]
        vals, idx = w.topk(min(config.top, len(words)))
        top = [(words[j], float(v)) for v, j in zip(vals.tolist(), idx.tolist()) if v > 0]
        rows.append({"text": text, "l0": int((w > 0).sum()), "cosine": float(m["per_doc_cosine"][i]), "top": top})
    result = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(config).items()},
              "curve": curve, "documents": rows, "l0": m["l0"], "cosine": m["cosine"],
              "modality_gap": float(torch.dot(normalise(centred.concept_mean), normalise(query_mean))),
              "mean_only_cosine": float((normalise(z) @ normalise(query_mean)).mean())}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(result, indent=1))
    write_section(out, _section(config, result, _plot(out, curve)))
    return result


def _plot(out: Path, curve: list[dict[str, Any]]) -> Path:
    from assay.report import new_figure, save_figure

    fig = new_figure((5, 3.6))
    ax = fig.subplots()
    for name in ("centred", "uncentred"):
        pts = [c for c in curve if c["dictionary"] == name]
        ax.plot([c["l0"] for c in pts], [c["cosine"] for c in pts], marker="o", label=name)
        for c in pts:
            ax.annotate(f"{c['lam']:g}", (c["l0"], c["cosine"]), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set(xlabel="L0 (concepts per sentence)", ylabel="cosine(sentence, recomposition)",
           title="SpLiCE on MiniLM: sparsity vs fidelity (labels: λ)")
    ax.legend(fontsize=8)
    return save_figure(fig, out / "plots" / "concepts_tradeoff.svg", tight=True)


def _section(config: RealConceptsConfig, result: dict[str, Any], plot: Path) -> Any:
    from assay.report import Plot, Section, Table

    curve = Table("L0 and recomposition cosine as λ varies", ["λ", "dictionary", "L0", "cosine"],
                  [[c["lam"], c["dictionary"], c["l0"], c["cosine"]] for c in result["curve"]])
    docs = Table(f"Top concepts per sentence (λ = {config.lam}; first {config.n_show})",
                 ["sentence", "L0", "cosine", "top concepts"],
                 [[d["text"][:120], d["l0"], d["cosine"], ", ".join(f"{w} ({v:.2f})" for w, v in d["top"])]
                  for d in result["documents"][: config.n_show]])
    notes = [f"{config.n_documents} sentences of the {config.corpus!r} corpus decomposed onto its {config.vocabulary} "
             f"most frequent words, both embedded by all-MiniLM-L6-v2; the sentence mean from {config.n_reference} "
             f"other sentences. At λ = {config.lam}: mean L0 {result['l0']:.2f}, mean cosine {result['cosine']:.3f}.",
             f"Modality gap: cosine between the word mean and the sentence mean = {result['modality_gap']:.3f}. "
             f"The centred recomposition adds the sentence mean back; the mean alone (w = 0) has cosine "
             f"{result['mean_only_cosine']:.3f} with the sentences.",
             "Larger λ gives sparser codes and lower cosine: the trade-off of SpLiCE's figures (CLIP, LAION "
             "vocabulary). The uncentred curve decomposes the raw normalised embeddings onto the raw word rows."]
    return Section("Concept decomposition (SpLiCE) of MiniLM sentence embeddings", [curve, docs],
                   [Plot("L0 vs cosine as λ varies, centred and uncentred", plot)], notes)
