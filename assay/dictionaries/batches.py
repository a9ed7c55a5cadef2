"""Where a dictionary's training rows come from: activations computed live from a model's hooks, or read from an
activation store in its seeded, resumable order (:mod:`assay.dictionaries.trainer` consumes both)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from assay.store.ranks import rank_and_world

__all__ = ["live_batches", "store_batches"]


def live_batches(model: torch.nn.Module, site: str | Sequence[str], token_batches: Iterable[Tensor], *,
                 batch_size: int, drop_first: bool = True, output_site: str | Sequence[str] | None = None
                 ) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
    """Activations of ``site`` computed on the fly (no storage), regrouped into ``[batch_size, d]`` rows.

    Each item of ``token_batches`` is a model input ``[n, T]``; position 0 (BOS) is dropped by default.
    With ``output_site`` (transcoders) both sites are captured in the same forward pass (which stops after
    ``output_site``) and each item is the pair (``site`` rows, ``output_site`` rows). A sequence of sites
    (a cross-layer transcoder's MLP inputs and outputs, in forward order) is captured in one pass and
    concatenated along the last dimension in the order given; the pass stops after the last output site.
    """
    from assay.hooks import capture

    ins = [site] if isinstance(site, str) else list(site)
    outs = [] if output_site is None else [output_site] if isinstance(output_site, str) else list(output_site)
    sites = ins + outs
    last = sites[-1]
    buf: list[Tensor] = []
    have = 0
    for tokens in token_batches:
        with torch.no_grad(), capture(model, sites, stop_at=last) as cap:
            model(tokens)
        missing = [s for s in sites if s not in cap]
        if missing:
            raise RuntimeError(f"site(s) {missing} did not run before {last!r} stopped the forward pass; the input "
                               "site must run before the output site (e.g. blocks.0.ln2 → blocks.0.mlp)")
        h = torch.cat([cap[s] for s in sites], dim=-1)
        if drop_first and h.dim() == 3:
            h = h[:, 1:]
        h = h.reshape(-1, h.shape[-1])
        buf.append(h)
        have += h.shape[0]
        while have >= batch_size:
            flat = torch.cat(buf)
            rows, rest = flat[:batch_size], flat[batch_size:]
            if output_site is None:
                yield rows
            else:
                d_in = sum(cap[s].shape[-1] for s in ins)
                yield rows[:, :d_in], rows[:, d_in:]
            buf, have = [rest], rest.shape[0]


def store_batches(store: Any, site: str, *, batch_size: int, seed: int, start_batch: int, n_batches: int,
                  exclude_special: bool = True, keep_rows: Callable[[Tensor], Tensor] | None = None,
                  prefetch: int = 2, output_site: str | None = None
                  ) -> tuple[Iterator[Tensor | tuple[Tensor, Tensor]], Callable[[int], Tensor]]:
    """Batches ``start_batch .. n_batches-1`` of ``site`` in the store's seeded order (epochs past the
    first continue the order), and ``rows_of(step)``: the global store rows of that step's batch.

    ``exclude_special`` drops BOS and padding rows (store position −1: their norms are outliers,
    SAELens#333); ``keep_rows(rows) -> bool mask`` drops more rows (e.g. held-out windows). A batch then
    holds the kept rows only (trimmed to a multiple of the data-parallel world size). Batch b depends
    only on (store, batch_size, seed, b), so a resumed run reads exactly the batches it would have.
    With ``output_site`` (transcoders) each batch is the pair (``site`` rows, ``output_site`` rows) read at
    the same store rows: the two sites were cached together in one pass.
    """
    from assay.store.prefetch import prefetch as _prefetch

    world = rank_and_world()[1]

    def rows_of(step: int) -> Tensor:
        rows = store.batch_rows(step, batch_size=batch_size, seed=seed)
        if exclude_special:
            rows = rows[store.positions[rows] >= 0]
        if keep_rows is not None:
            rows = rows[keep_rows(rows)]
        return rows[: rows.shape[0] - rows.shape[0] % world]

    def gen() -> Iterator[Tensor]:
        for b in range(start_batch, n_batches):
            rows = rows_of(b)
            if rows.numel() == 0:
                raise ValueError(f"batch {b} of the store keeps no rows after filtering; use a larger batch_size")
            x = store.read_rows(site, rows)
            yield x if output_site is None else (x, store.read_rows(output_site, rows))

    return _prefetch(gen(), prefetch), rows_of
