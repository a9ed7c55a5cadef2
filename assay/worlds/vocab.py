"""Vocabularies, documents, padding and packing shared by the sequence worlds.

Every sequence world builds *documents*: ``<bos> w_1 … w_m <eos>`` with, for each token, the ground
truth describing the state **after reading that token** (so the label at position t is aligned with
the input token at t and describes what the model has seen when it predicts token t + 1). A batch is
the causal-LM view of documents::

    inputs[t] = doc[t],   targets[t] = doc[t + 1] if loss[t] else -100,   labels[...][t] = label[t]

- :meth:`DocWorld.sample` gives one document per row, right-padded with ``<pad>`` (labels -1, NaN
  for float labels, False for set-valued labels) to the longest row.
- :meth:`DocWorld.pack` concatenates documents into rows of exactly T inputs (Menon et al. 2025
  pack short samples into long contexts): ``<bos> d_1 <eos> d_2 <eos> …``, the ``<eos>`` of one
  document acting as the separator (its labels are the start state of the next document, whose
  ``<bos>`` is dropped); position-valued labels are shifted to row coordinates.

Randomness: a ``numpy.random.Generator`` seeded from one draw of the caller's ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from assay.worlds.base import Batch

__all__ = [
    "SPECIALS", "PAD", "BOS", "EOS", "SEP", "IGNORE",
    "make_vocab", "numpy_rng", "Doc", "collate", "pack_docs", "DocWorld",
    "check_logits", "masked_mean", "argmax_in_set", "valid_mass", "token_accuracy", "masked_cross_entropy",
]

SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>")
PAD, BOS, EOS, SEP = 0, 1, 2, 3
IGNORE = -100
"""Target value for positions without loss (PyTorch's cross-entropy ``ignore_index``)."""


def make_vocab(tokens: Iterable[str]) -> tuple[str, ...]:
    """The special tokens (pad, bos, eos, sep at ids 0–3) followed by ``tokens``; names must be unique."""
    vocab = SPECIALS + tuple(tokens)
    if len(set(vocab)) != len(vocab):
        dup = sorted({t for t in vocab if vocab.count(t) > 1})
        raise ValueError(f"duplicate token names in vocabulary: {dup}")
    return vocab


def numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy Generator seeded from one draw of ``generator`` (advances it by one draw)."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return np.random.default_rng(seed)


@dataclass
class Doc:
    """One document: tokens, per-token labels (state after each token), loss flags, per-example truth."""

    tokens: list[int]
    """Token ids, ``<bos>`` first."""
    labels: dict[str, list[Any]]
    """Per-token labels, each a list as long as ``tokens``: ints, floats, or (set labels) id tuples."""
    loss: list[bool]
    """``loss[t]``: predicting ``tokens[t + 1]`` at position t is trained and scored."""
    example: dict[str, Any] = field(default_factory=dict)
    """Per-example ground truth (scalars or equal-shaped arrays across documents)."""


def _fill(kind: str) -> Any:
    return {"int": -1, "float": math.nan, "set": False}[kind]


def collate(
    rows: Sequence[Doc],
    length: int,
    *,
    kinds: dict[str, str],
    set_sizes: dict[str, int],
    with_example: bool,
) -> Batch:
    """Stack documents into a :class:`Batch` of ``length`` inputs per row (see module docstring).

    A row of m tokens fills ``min(m - 1, length)`` input positions; the rest is padding.
    ``kinds`` maps each label to ``"int"``, ``"float"`` or ``"set"`` (bool ``[n, T, size]``).
    """
    n = len(rows)
    inputs = torch.full((n, length), PAD, dtype=torch.long)
    targets = torch.full((n, length), IGNORE, dtype=torch.long)
    labels: dict[str, torch.Tensor] = {}
    for name, kind in kinds.items():
        if kind == "set":
            labels[name] = torch.zeros(n, length, set_sizes[name], dtype=torch.bool)
        elif kind == "float":
            labels[name] = torch.full((n, length), math.nan, dtype=torch.float32)
        else:
            labels[name] = torch.full((n, length), -1, dtype=torch.long)
    masks: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    def mask(name: str, ids: tuple[int, ...]) -> np.ndarray:
        m = masks.get((name, ids))
        if m is None:
            m = masks[(name, ids)] = np.zeros(set_sizes[name], dtype=bool)
            m[list(ids)] = True
        return m

    for i, d in enumerate(rows):
        k = min(len(d.tokens) - 1, length)  # the last token of a document is only ever a target
        inputs[i, :k] = torch.tensor(d.tokens[:k], dtype=torch.long)
        keep = torch.tensor(d.loss[:k], dtype=torch.bool)
        targets[i, :k] = torch.where(keep, torch.tensor(d.tokens[1 : k + 1], dtype=torch.long), IGNORE)
        for name, kind in kinds.items():
            values = d.labels[name][:k]
            if kind == "set":
                if k:
                    labels[name][i, :k] = torch.from_numpy(np.stack([mask(name, tuple(v)) for v in values]))
            else:
                labels[name][i, :k] = torch.tensor(values, dtype=labels[name].dtype)
    if with_example and rows and rows[0].example:
        for name in rows[0].example:
            labels[name] = torch.as_tensor(np.asarray([d.example[name] for d in rows]))
    return Batch(inputs=inputs, targets=targets, labels=labels)


def pack_docs(docs: Iterable[Doc], length: int, *, position_labels: Iterable[str] = ()) -> Doc:
    """Concatenate documents into one row of at least ``length + 1`` tokens (module docstring).

    ``docs`` is consumed lazily until the row is long enough; position-valued labels (indices into
    the document) are shifted to row coordinates.
    """
    pos = set(position_labels)
    out: Doc | None = None
    for d in docs:
        if out is None:
            out = Doc(list(d.tokens), {k: list(v) for k, v in d.labels.items()}, list(d.loss))
        else:
            shift = len(out.tokens) - 1  # doc index j (>= 1) lands at row index shift + j
            for k, v in d.labels.items():
                v0 = v[0] if k not in pos or v[0] < 0 else v[0] + shift
                out.labels[k][-1] = v0
                out.labels[k].extend(x + shift if (k in pos and x >= 0) else x for x in v[1:])
            out.loss[-1] = d.loss[0]
            out.tokens.extend(d.tokens[1:])
            out.loss.extend(d.loss[1:])
        if len(out.tokens) >= length + 1:
            return out
    raise RuntimeError("document stream ended before the packed row was full")


class DocWorld:
    """Mixin for sequence worlds built from :class:`Doc` s: vocabulary, ``sample``, ``pack``, ``decode``.

    A subclass sets ``vocab`` and the class attributes ``label_kinds`` / ``position_labels`` and
    implements ``_doc(rng) -> Doc``.
    """

    vocab: tuple[str, ...]
    pad_id: int = PAD
    bos_id: int = BOS
    eos_id: int = EOS
    sep_id: int = SEP
    label_kinds: ClassVar[dict[str, str]] = {}
    """Per-token label name → ``"int"`` / ``"float"`` / ``"set"`` (set labels are masks over the vocab
    unless :meth:`_set_sizes` says otherwise)."""
    position_labels: ClassVar[tuple[str, ...]] = ()
    """Labels holding token positions (shifted when packing)."""

    def _doc(self, rng: np.random.Generator) -> Doc:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_sizes(self) -> dict[str, int]:
        return {k: len(self.vocab) for k, kind in self.label_kinds.items() if kind == "set"}

    def token_id(self, token: str) -> int:
        """The id of a token string."""
        try:
            return self._index[token]
        except AttributeError:
            self._index = {t: i for i, t in enumerate(self.vocab)}
            return self.token_id(token)
        except KeyError:
            raise KeyError(f"unknown token {token!r}; the vocabulary has {len(self.vocab)} tokens") from None

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Token strings → ids."""
        return [self.token_id(t) for t in tokens]

    def decode(self, ids: torch.Tensor | Sequence[int]) -> list[str]:
        """Token ids ``[T]`` → token strings (padding dropped)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return [self.vocab[i] for i in ids if i != self.pad_id]

    def docs(self, n: int, *, generator: torch.Generator) -> list[Doc]:
        """``n`` raw documents (tokens with ``<bos>``/``<eos>`` and per-token labels)."""
        _check_n(n)
        rng = numpy_rng(generator)
        return [self._doc(rng) for _ in range(n)]

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        """``n`` documents, one per row, right-padded to the longest (per-example truth included)."""
        docs = self.docs(n, generator=generator)
        length = max((len(d.tokens) - 1 for d in docs), default=0)
        return collate(docs, length, kinds=self.label_kinds, set_sizes=self._set_sizes(), with_example=True)

    def pack(self, n: int, length: int, *, generator: torch.Generator) -> Batch:
        """``n`` rows of exactly ``length`` inputs, each packed from consecutive documents."""
        _check_n(n)
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        rng = numpy_rng(generator)

        def stream() -> Iterable[Doc]:
            while True:
                yield self._doc(rng)

        rows = [pack_docs(stream(), length, position_labels=self.position_labels) for _ in range(n)]
        return collate(rows, length, kinds=self.label_kinds, set_sizes=self._set_sizes(), with_example=False)


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")


# ----------------------------------------------------------------------------- shared metrics


def check_logits(logits: torch.Tensor, batch: Batch) -> None:
    if logits.ndim != 3 or logits.shape[:2] != batch.inputs.shape:
        raise ValueError(
            f"logits must be [n, T, V] matching inputs {tuple(batch.inputs.shape)}, got {tuple(logits.shape)}"
        )


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``values`` over ``mask`` (NaN when the mask is empty)."""
    k = int(mask.sum())
    return float(values[mask].double().sum() / k) if k else math.nan


def argmax_in_set(logits: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of positions in ``mask`` ([n, T]) whose argmax token is in ``valid`` ([n, T, V] bool)."""
    top = logits.argmax(-1, keepdim=True)
    hit = valid.gather(-1, top).squeeze(-1)
    return masked_mean(hit.float(), mask)


def valid_mass(logits: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean softmax probability placed on ``valid`` tokens over positions in ``mask``."""
    p = torch.softmax(logits.double(), -1)
    return masked_mean((p * valid).sum(-1), mask)


def token_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Argmax accuracy on positions whose target is not ignored."""
    mask = targets != IGNORE
    return masked_mean((logits.argmax(-1) == targets).float(), mask)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy ``[n, T]`` (float64; 0 where the target is ignored)."""
    logp = torch.log_softmax(logits.double(), -1)
    mask = targets != IGNORE
    ce = -logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, ce, torch.zeros_like(ce))
