"""What every compiled program shares: the embedded variables, the readout scale and entries, the input check.

Used by the hand-written programs (:mod:`~assay.circuits.compile.programs`) and the RASP front end
(:mod:`~assay.circuits.compile.rasp`); tracr's conventions (Lindner et al. 2023, "Tracr: Compiled Transformers as a
Laboratory for Interpretability"): token ids follow :mod:`assay.worlds.vocab` (PAD 0, BOS 1, EOS 2, SEP 3, symbols
from 4), every input starts with BOS and holds no other BOS.
"""

from __future__ import annotations

from collections.abc import Sequence

from assay.circuits.compile.space import ONE, Layout, Variable
from assay.worlds.vocab import BOS, SPECIALS

__all__ = ["SCALE", "N_SPECIAL", "check_input", "base_layout", "readout_entries"]

SCALE = 10.0
"""Readout weight: a selected output gets logit SCALE (the top-1 margin of one-hot outputs)."""

N_SPECIAL = len(SPECIALS)


def check_input(tokens: Sequence[int], vocab: int) -> None:
    """Refuse an input that does not start with BOS, holds another BOS, or has ids outside the vocabulary."""
    if not tokens or tokens[0] != BOS or BOS in tokens[1:]:
        raise ValueError(f"inputs must start with BOS ({BOS}) and hold no other BOS, got {list(tokens)}")
    if any(not 0 <= t < vocab for t in tokens):
        raise ValueError(f"token ids must lie in [0, {vocab}), got {list(tokens)}")


def base_layout(n_tokens: int, max_seq_len: int, *, position: bool) -> tuple[Layout, Variable, Variable, Variable | None]:
    """The embedded variables every program starts from: ``token`` (ids 0..n_tokens−1), ``one`` and, if asked,
    ``position`` (0..max_seq_len−1)."""
    layout = Layout()
    token = layout.categorical("token", range(n_tokens))
    one = layout.numerical(ONE)
    pos = layout.categorical("position", range(max_seq_len)) if position else None
    return layout, token, one, pos


def readout_entries(var: Variable) -> tuple[tuple[int, int, float], ...]:
    """Unembedding entries giving output index i logit SCALE when categorical ``var`` holds its i-th value."""
    return tuple((var.dim(v), i, SCALE) for i, v in enumerate(var.values))
