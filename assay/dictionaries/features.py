"""What a dictionary's latents respond to: top-activating examples and per-latent feature-browser data,
on activations in memory or in an activation store.

For latent i with codes z_i (any Lens: ``encode(h) -> z``): the rows with the largest z_i, each shown as
its token context (``radius`` tokens before, 2 after) with z_i at every token shown — the top-activating
examples of "Towards Monosemanticity" (Bricken et al. 2023); a 20-bin histogram of its positive codes;
its firing frequency; and for language models the direct logit effect W_U · D_i (the atom D_i read by
the unembedding W_U), top tokens by value. The feature browser of :mod:`assay.report` shows these.

BOS and padding rows of a store (position −1) are left out by default: their activations have outlier
norms (SAELens#333) and would top every latent's list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["Example", "top_examples", "latent_browser_data", "store_browser_data", "logit_effects"]


class Example(NamedTuple):
    """One top-activating example of a latent."""

    row: int
    """The row: a store row, or an index into the activations flattened to ``[n·T, d]`` (seq·T + t)."""
    value: float
    """The latent's code z_i at the row."""
    tokens: tuple[str, ...]
    """The row's token context (empty when no token ids are known)."""
    acts: tuple[float, ...]
    """z_i at each token of ``tokens`` (0 at left-out BOS/padding positions)."""
    focus: int
    """Index of the row's own token in ``tokens``."""


def _context(ids: Sequence[int], acts: Sequence[float], t: int, radius: int, to_str: Callable[[int], str]
             ) -> tuple[list[str], list[float], int]:
    """Tokens ``t − radius .. t + 2`` of one window (ids and codes given for the whole window)."""
    a, b = max(0, t - radius), min(len(ids), t + 3)
    return [to_str(int(i)) for i in ids[a:b]], [round(float(v), 4) for v in acts[a:b]], t - a


def _default_str(i: int) -> str:
    return str(i)


@torch.no_grad()
def top_examples(sae: Any, source: Any, latent: int, *, k: int = 10, site: str | None = None,
                 tokens: Tensor | None = None, token_str: Callable[[int], str] | None = None, radius: int = 8,
                 exclude_special: bool = True, chunk: int = 4096) -> list[Example]:
    """The (at most) ``k`` rows where ``latent`` of ``sae`` fires most, largest first, with token contexts.

    ``source``: an :class:`assay.store.ActivationStore` (give ``site``; scanned in chunks of ``chunk``
    rows; its BOS/padding rows are left out unless ``exclude_special=False``), or activations
    ``[n, T, d]`` with optional ``tokens [n, T]`` for the contexts, or ``[N, d]`` (no contexts).
    ``token_str(id) -> str`` names tokens (e.g. ``lambda i: tok.decode([i])``; default: the id).
    Rows where the latent is 0 are never examples, so fewer than ``k`` come back for a rare latent.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    to_str = token_str or _default_str
    if hasattr(source, "batch_rows"):
        if site is None:
            raise ValueError("top_examples on a store needs site=")
        T = int(source.config.get("context_length", 0)) or None
        n = source.n_rows

        def read(a: int, b: int) -> Tensor:
            return source.read(site, a, b)

        def special(a: int, b: int) -> Tensor:
            return source.positions[a:b] < 0 if exclude_special else torch.zeros(b - a, dtype=torch.bool)

        def window_ids(w: int) -> list[int]:
            return source.tokens[w * T:(w + 1) * T].tolist()
    else:
        acts = torch.as_tensor(source)
        if acts.dim() not in (2, 3):
            raise ValueError(f"activations must be [N, d] or [n, T, d], got shape {tuple(acts.shape)}")
        if tokens is not None and (acts.dim() != 3 or tuple(tokens.shape) != tuple(acts.shape[:2])):
            raise ValueError(f"tokens must be [n, T] = {tuple(acts.shape[:-1])} for activations "
                             f"{tuple(acts.shape)} ([N, d] activations take no tokens)")
        T = acts.shape[1] if tokens is not None else None
        flat = acts.reshape(-1, acts.shape[-1])
        n = flat.shape[0]

        def read(a: int, b: int) -> Tensor:
            return flat[a:b]

        def special(a: int, b: int) -> Tensor:
            return torch.zeros(b - a, dtype=torch.bool)

        def window_ids(w: int) -> list[int]:
            return tokens[w].tolist()  # type: ignore[index]

    best_v = torch.empty(0)
    best_r = torch.empty(0, dtype=torch.long)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        z = sae.encode(read(a, b).float())[:, latent].float().masked_fill(special(a, b), float("-inf"))
        v = torch.cat([best_v, z])
        r = torch.cat([best_r, torch.arange(a, b)])
        top = v.topk(min(k, v.numel()))
        best_v, best_r = top.values, r[top.indices]
    out = []
    for v, r in zip(best_v.tolist(), best_r.tolist()):
        if not v > 0:
            break
        if T is None:
            out.append(Example(r, v, (), (), 0))
            continue
        w, t = divmod(r, T)
        z = sae.encode(read(w * T, (w + 1) * T).float())[:, latent].float()
        z = z.masked_fill(special(w * T, (w + 1) * T), 0.0)
        toks, zs, focus = _context(window_ids(w), z.tolist(), t, radius, to_str)
        out.append(Example(r, v, tuple(toks), tuple(zs), focus))
    return out


def logit_effects(unembed: Tensor, atoms: Tensor, decode: Callable[[int], str], *, top: int = 6) -> list[list]:
    """Per atom, the ``top`` tokens with the largest W_U·D_i as ``[[token, value], …]``."""
    with torch.no_grad():
        eff = atoms.float() @ unembed.float().t()  # [n, V]
        v, i = eff.topk(min(top, eff.shape[1]), dim=1)
    return [[[decode(int(t)), round(float(x), 4)] for t, x in zip(ti, vi)] for ti, vi in zip(i.tolist(), v.tolist())]


@torch.no_grad()
def latent_browser_data(lens: Any, x: Tensor, *, token_rows: Tensor | None = None, row_index: Tensor | None = None,
                        token_str: Callable[[int], str] | None = None, atoms: Tensor | None = None,
                        unembed: Tensor | None = None, top_n: int = 6, radius: int = 8,
                        title: str = "") -> dict[str, Any]:
    """The feature browser's data (``{"title", "n_latents", "latents"}``, JSON-ready) for every latent of
    ``lens`` on the rows ``x [M, d]``.

    Per latent: ``id``, ``freq`` (share of rows it fires on), ``max``, ``hist`` (20 bins of its positive
    codes up to the max), ``contexts`` (its ``top_n`` rows, each ``{"row", "tokens", "acts", "focus"}``)
    and ``logits`` (with ``atoms [n, d]`` and ``unembed [V, d]``: the top tokens of W_U·D_i).
    With ``token_rows [R, T]`` and ``row_index [M, 2]`` (each row's (token row, position)) a context is
    the tokens around the row, with the code at every token shown (0 where a token has no row in ``x``);
    without them, the row number ``#j``.
    """
    to_str = token_str or _default_str
    z = lens.encode(x.float()).float()
    n = z.shape[1]
    pos_of = None
    if token_rows is not None:
        if row_index is None:
            raise ValueError("token_rows needs row_index: each row's (token row, position)")
        pos_of = torch.full(token_rows.shape, -1, dtype=torch.long)
        pos_of[row_index[:, 0], row_index[:, 1]] = torch.arange(row_index.shape[0])
    logits = logit_effects(unembed, atoms, to_str) if unembed is not None and atoms is not None else None
    top_v, top_i = z.topk(min(top_n, z.shape[0]), dim=0)  # [top_n, n]
    fires = (z > 0).double().mean(0)
    latents = []
    for i in range(n):
        col = z[:, i]
        pos = col[col > 0]
        hist, hi = [], 0.0
        if pos.numel():
            hi = float(pos.max())
            hist = torch.histc(pos, bins=20, min=0.0, max=hi).int().tolist()
        contexts = []
        for j, v in zip(top_i[:, i].tolist(), top_v[:, i].tolist()):
            if not v > 0:
                continue
            if pos_of is None:
                contexts.append({"row": j, "tokens": [f"#{j}"], "acts": [round(v, 4)], "focus": 0})
                continue
            r, t = (int(u) for u in row_index[j])  # type: ignore[index]
            idx = pos_of[r]
            acts = torch.where(idx >= 0, col[idx.clamp(min=0)], torch.zeros(idx.shape[0]))
            toks, zs, focus = _context(token_rows[r].tolist(), acts.tolist(), t, radius, to_str)  # type: ignore[index]
            contexts.append({"row": j, "tokens": toks, "acts": zs, "focus": focus})
        latents.append({"id": i, "freq": round(float(fires[i]), 5), "max": round(hi, 4), "hist": hist,
                        "contexts": contexts, "logits": logits[i] if logits is not None else []})
    return {"title": title, "n_latents": n, "latents": latents}


def store_browser_data(sae: Any, store: Any, site: str, *, start: int = 0, stop: int | None = None,
                       max_rows: int = 4096, exclude_special: bool = True,
                       token_str: Callable[[int], str] | None = None, unembed: Tensor | None = None,
                       top_n: int = 6, radius: int = 8, title: str = "") -> dict[str, Any]:
    """:func:`latent_browser_data` of ``sae`` on the store rows ``start .. stop`` (whole windows; at most
    ``max_rows`` rows, rounded down to whole windows), BOS/padding rows left out unless
    ``exclude_special=False``. Logit effects need ``unembed [V, d_model]`` (the model's output embedding)
    and an SAE on the residual stream."""
    T = int(store.config.get("context_length", 0))
    stop = store.n_rows if stop is None else stop
    if T <= 0 or start % T or stop % T or not 0 <= start < stop <= store.n_rows:
        raise ValueError(f"rows {start}..{stop} are not whole windows of the store (window length {T}, "
                         f"{store.n_rows} rows); pass multiples of the window length")
    stop = min(stop, start + max(1, max_rows // T) * T)
    x = store.read(site, start, stop)
    rows = torch.arange(stop - start)
    if exclude_special:
        rows = rows[store.positions[start:stop] >= 0]
    token_rows = store.tokens[start:stop].reshape(-1, T)
    atoms = getattr(sae, "W_dec", None)
    return latent_browser_data(sae, x[rows], token_rows=token_rows, row_index=torch.stack([rows // T, rows % T], 1),
                               token_str=token_str, atoms=atoms.detach() if atoms is not None else None,
                               unembed=unembed, top_n=top_n, radius=radius, title=title)
