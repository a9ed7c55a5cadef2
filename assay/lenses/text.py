"""Tokenising sentences for probes, steering and lenses on a causal LM (left padding, BOS first).

Left padding keeps the last real token in the last column, which is what generation and
"last-token" read-outs need (CAA reads the last token, Panickssery et al. 2023); the attention mask
marks the real tokens, and every pooling in :mod:`assay.lenses.pooling` honours it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["TokenBatch", "encode_texts", "batches"]


class TokenBatch(NamedTuple):
    """Left-padded token ids and their attention mask."""

    input_ids: Tensor
    """Token ids ``[B, T]`` (long), padding on the left."""
    attention_mask: Tensor
    """1 for real tokens, 0 for padding ``[B, T]`` (long)."""


def encode_texts(tokenizer: Any, texts: Sequence[str], *, add_bos: bool = True, max_length: int | None = None) -> TokenBatch:
    """Tokenise ``texts`` one by one (BOS prepended once), truncate to ``max_length`` and left-pad."""
    if not texts:
        raise ValueError("no texts to encode")
    bos = getattr(tokenizer, "bos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else (getattr(tokenizer, "eos_token_id", None) or 0)
    rows = []
    for t in texts:
        ids = list(tokenizer(t, add_special_tokens=False)["input_ids"])
        if add_bos and bos is not None:
            ids = [bos, *ids]
        if max_length is not None:
            ids = ids[:max_length]
        if not ids:
            raise ValueError(f"text {t!r} encodes to no tokens")
        rows.append(ids)
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), int(pad), dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return TokenBatch(input_ids, mask)


def batches(tokenizer: Any, texts: Sequence[str], batch_size: int, **kw: Any) -> Iterator[tuple[Tensor, Tensor]]:
    """``(input_ids, attention_mask)`` batches of ``batch_size`` texts (each batch padded on its own)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i in range(0, len(texts), batch_size):
        b = encode_texts(tokenizer, texts[i:i + batch_size], **kw)
        yield b.input_ids, b.attention_mask
