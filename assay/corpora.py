"""Corpora: the English text that ships inside installed packages, with document boundaries kept.

No download is ever made. Sources (each line of a ``.cor`` file is one document):

- ``"lee_background"`` — 300 Australian news articles (Lee, Pincombe & Welsh, 2005, *An empirical
  evaluation of models of text document similarity*), ``gensim/test/test_data/lee_background.cor``;
- ``"lee"`` — the 50 Lee et al. evaluation articles, ``lee.cor``;
- ``"pang_lee"`` — 200 movie-review sentences labelled positive/negative (Pang & Lee, 2005, *Seeing
  stars: exploiting class relationships for sentiment categorization*), ``pang_lee_polarity.cor``,
  labels stripped (use :func:`load_labelled_sentences` for them);
- ``"pydoc_topics"`` — Python's own ``pydoc_data.topics`` (79 reference-manual sections in 3.11),
  sorted by topic key.

The gensim files are read as plain files, without importing gensim. Their encodings differ: bytes
are decoded as UTF-8 where valid, else as Windows-1252 (``pang_lee_polarity.cor`` holds cp1252 em
dashes), falling back to Latin-1 for the five bytes cp1252 leaves undefined.

**Stable document ids.** A document's id does not depend on which corpus name loaded it:
``doc_id = base(source) + index``, with bases ``lee_background`` 0, ``lee`` 1000, ``pang_lee`` 2000,
``pydoc_topics`` 3000 (``index`` counts the non-empty lines, or the sorted topic keys).

**Windows** (:func:`token_windows`). Documents are *not* packed: each document is tokenised on its
own (no special tokens) and cut into consecutive chunks of ``length - 1`` tokens (``length`` without a
BOS); each window is ``[BOS] + chunk``, so no window spans two documents and ``doc_ids`` is one id
per window. ``positions[i, t]`` is the index of that token in its document's token sequence
(``0, 1, 2, ...`` continuing across the windows of one document), and ``-1`` for tokens that do not
come from the document (the BOS of every window, and padding). A document's last chunk, when shorter
than a window, is dropped (``remainder="drop"``, the default, so every row is a real token or a BOS)
or padded with the pad token (``remainder="pad"``; padded positions are ``-1``).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

__all__ = [
    "CORPORA",
    "Document",
    "TokenWindows",
    "LabelledSentences",
    "CorpusError",
    "load_corpus",
    "token_windows",
    "load_labelled_sentences",
]

GENSIM_PIP = "pip install gensim  (or: pip install 'assay[data]')"
_GENSIM_FILES = {
    "lee_background": "lee_background.cor",
    "lee": "lee.cor",
    "pang_lee": "pang_lee_polarity.cor",
}
_BASES = {"lee_background": 0, "lee": 1000, "pang_lee": 2000, "pydoc_topics": 3000}
_BLOCK = 1000
CORPORA = ("bundled", *_BASES)
"""Valid corpus names; ``"bundled"`` is all the sources, in the order listed."""


class CorpusError(ValueError):
    """An unknown corpus name, or a corpus whose files cannot be found."""


class Document(NamedTuple):
    """One document of a corpus."""

    doc_id: int
    """Stable id: the same whichever corpus name loaded it (see the module docstring)."""
    source: str
    """The source it came from: ``"lee_background"``, ``"lee"``, ``"pang_lee"`` or ``"pydoc_topics"``."""
    text: str
    """The document text, stripped of surrounding whitespace."""


class TokenWindows(NamedTuple):
    """Fixed-length token windows cut from documents (see the module docstring for the layout)."""

    tokens: torch.Tensor
    """Token ids, ``[n_windows, length]`` long."""
    doc_ids: torch.Tensor
    """The document each window comes from, ``[n_windows]`` long."""
    positions: torch.Tensor
    """Index of each token in its document's token sequence, ``[n_windows, length]`` long; ``-1`` for
    the BOS and for padding."""


class LabelledSentences(NamedTuple):
    """Sentences with binary labels."""

    texts: list[str]
    """The sentences."""
    labels: torch.Tensor
    """``[n]`` long, 1 for positive and 0 for negative."""


def _gensim_data_dir() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "the bundled text corpora (lee_background, lee, pang_lee) are read from the gensim package's "
            f"test data, and gensim is not installed. Install it with: {GENSIM_PIP}"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"


def _decode(raw: bytes) -> str:
    """UTF-8 where valid, else Windows-1252 with Latin-1 for the bytes cp1252 leaves undefined."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    parts = re.split(rb"([\x81\x8d\x8f\x90\x9d])", raw)
    return "".join(p.decode("latin-1") if i % 2 else p.decode("cp1252") for i, p in enumerate(parts))


def _read_lines(source: str) -> list[str]:
    path = _gensim_data_dir() / _GENSIM_FILES[source]
    if not path.is_file():
        raise CorpusError(
            f"corpus {source!r}: {path} is missing from the installed gensim (some builds strip test data). "
            f"Reinstall it with: {GENSIM_PIP}"
        )
    return [line.strip() for line in _decode(path.read_bytes()).splitlines() if line.strip()]


def _pang_lee_rows() -> list[tuple[str, str]]:
    rows = []
    for line in _read_lines("pang_lee"):
        label, _, text = line.partition(" ")
        if label not in ("__label__pos", "__label__neg"):
            raise CorpusError(f"pang_lee: unexpected label {label!r} in line {line[:60]!r}")
        rows.append((label, text.strip()))
    return rows


def _source_texts(source: str) -> list[str]:
    if source == "pydoc_topics":
        from pydoc_data.topics import topics

        return [topics[k].strip() for k in sorted(topics)]
    if source == "pang_lee":
        return [text for _, text in _pang_lee_rows()]
    return _read_lines(source)


def load_corpus(name: str = "bundled") -> list[Document]:
    """The documents of corpus ``name`` (one of :data:`CORPORA`), in a fixed order with stable ids."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; valid names: {', '.join(CORPORA)}")
    sources = list(_BASES) if name == "bundled" else [name]
    docs: list[Document] = []
    for source in sources:
        texts = _source_texts(source)
        if len(texts) >= _BLOCK:
            raise CorpusError(f"corpus {source!r} has {len(texts)} documents; ids allow at most {_BLOCK - 1}")
        docs.extend(Document(_BASES[source] + i, source, t) for i, t in enumerate(texts))
    return docs


def load_labelled_sentences(name: str = "pang_lee") -> LabelledSentences:
    """Sentences and binary labels; only ``"pang_lee"`` (200 sentences, 100 positive, 100 negative)."""
    if name != "pang_lee":
        raise CorpusError(f"unknown labelled corpus {name!r}; valid names: pang_lee")
    rows = _pang_lee_rows()
    labels = torch.tensor([label == "__label__pos" for label, _ in rows], dtype=torch.long)
    return LabelledSentences([text for _, text in rows], labels)


def _start_token(tokenizer: Any) -> int:
    for attr in ("bos_token_id", "cls_token_id"):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a BOS nor a CLS token; pass add_bos=False")


def _pad_token(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a pad nor an EOS token; use remainder='drop'")


def token_windows(
    tokenizer: Any,
    docs: Sequence[Document],
    length: int,
    *,
    add_bos: bool = True,
    remainder: Literal["drop", "pad"] = "drop",
) -> TokenWindows:
    """Cut documents into fixed-length windows, never spanning two documents (no packing).

    ``tokenizer`` is a Hugging Face tokenizer (called as ``tokenizer(texts, add_special_tokens=False)``).
    With ``add_bos`` each window starts with the tokenizer's BOS (or CLS) token and holds
    ``length - 1`` document tokens. See the module docstring for ``positions`` and ``remainder``.
    """
    if not isinstance(length, int) or length < 1 + int(add_bos):
        raise ValueError(f"length must be an int >= {1 + int(add_bos)} (with add_bos={add_bos}), got {length!r}")
    if remainder not in ("drop", "pad"):
        raise ValueError(f"remainder must be 'drop' or 'pad', got {remainder!r}")
    docs = list(docs)
    if not all(isinstance(d, Document) for d in docs):
        raise TypeError("docs must be Document tuples, as returned by assay.corpora.load_corpus")
    bos = _start_token(tokenizer) if add_bos else None
    pad = _pad_token(tokenizer) if remainder == "pad" else None
    chunk = length - int(add_bos)
    ids = tokenizer([d.text for d in docs], add_special_tokens=False, verbose=False)["input_ids"] if docs else []
    rows, row_pos, row_doc = [], [], []
    for doc, toks in zip(docs, ids, strict=True):
        for start in range(0, len(toks), chunk):
            piece = list(toks[start : start + chunk])
            pos = list(range(start, start + len(piece)))
            if len(piece) < chunk:
                if remainder == "drop":
                    break
                n_pad = chunk - len(piece)
                piece += [pad] * n_pad  # type: ignore[list-item]
                pos += [-1] * n_pad
            if bos is not None:
                piece = [bos, *piece]
                pos = [-1, *pos]
            rows.append(piece)
            row_pos.append(pos)
            row_doc.append(doc.doc_id)
    if not rows:
        empty = torch.empty(0, length, dtype=torch.long)
        return TokenWindows(empty, torch.empty(0, dtype=torch.long), empty.clone())
    return TokenWindows(
        torch.tensor(rows, dtype=torch.long),
        torch.tensor(row_doc, dtype=torch.long),
        torch.tensor(row_pos, dtype=torch.long),
    )
