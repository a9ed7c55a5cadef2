"""``assay concepts`` (SpLiCE, Bhalla et al. 2024, on MiniLM sentence embeddings of the bundled corpora): a small
run through the command line writes its section; the L0-vs-cosine curve has SpLiCE's shape (larger λ: sparser
and lower cosine); the vocabulary and sentences follow their stated rules.

Measured at full size (2000 words, 200 sentences, 1000 reference sentences), λ → L0 / cosine, centred:
0.1 → 80.9 / 0.865, 0.15 → 45.1 / 0.811, 0.2 → 26.9 / 0.767, 0.25 → 17.2 / 0.733, 0.3 → 11.9 / 0.703,
0.35 → 8.5 / 0.677, 0.4 → 6.5 / 0.652; uncentred: 9.8 / 0.565 at 0.1 down to 4.0 / 0.536 at 0.4.
"""

import json

import pytest
from typer.testing import CliRunner

from assay.bench.concepts_real import corpus_sentences, corpus_vocabulary
from assay.cli import app
from assay.report import read_section

pytestmark = pytest.mark.usefixtures("one_thread")


def test_vocabulary_and_sentences_follow_their_rules():
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = corpus_vocabulary("lee", 50)
    assert len(words) == 50 == len(set(words))
    assert all(w.isalpha() and w.islower() and len(w) >= 3 and w not in ENGLISH_STOP_WORDS for w in words)
    sents = corpus_sentences("pang_lee")
    assert sents and all(6 <= len(s.split()) <= 40 for s in sents)


def test_cli_writes_the_section_and_the_curve_has_splices_shape(minilm, tmp_path):
    out = tmp_path / "concepts"
    res = CliRunner().invoke(app, ["concepts", "--corpus", "lee", "--n-documents", "24", "--n-reference", "100",
                                   "--vocabulary", "300", "--lams", "0.2", "--lams", "0.4", "--lam", "0.3",
                                   "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "results.json").read_text())
    c = {(p["lam"], p["dictionary"]): p for p in r["curve"]}
    for name in ("centred", "uncentred"):
        assert c[(0.4, name)]["l0"] < c[(0.2, name)]["l0"] and c[(0.4, name)]["cosine"] < c[(0.2, name)]["cosine"]
    assert len(r["documents"]) == 24 and all(d["top"] and d["l0"] >= len(d["top"]) for d in r["documents"])
    assert 0 < r["cosine"] <= 1 and r["cosine"] > r["mean_only_cosine"]  # the concepts add to the mean alone
    sec = read_section(out)
    assert [t.title.split(" ")[0] for t in sec.tables] == ["L0", "Top"] and sec.plots
    assert (out / "dictionary" / "config.json").exists()
