"""Per-latent data for the report's feature browser: top-activating contexts, histogram, best-matching
ground-truth concept and top logit effects — plain JSON-ready dicts.

For each latent i over the evaluation rows: the ``top_n`` rows with the largest code z_i, each shown
as its token context (``radius`` tokens before, 2 after) with z_i at every shown token (sequence data)
or as the example's active ground-truth features (planted worlds); a 20-bin histogram of its positive
codes; the concept c maximising AUROC(z_i, concept c) (:func:`assay.stats.auroc_matrix`);
and for language models the direct logit effect W_U · D_i (the atom read by the unembedding, as in
"Towards Monosemanticity", Bricken et al. 2023), top tokens by value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["feature_browser_data", "logit_effects", "token_contexts"]


def logit_effects(unembed: Tensor, atoms: Tensor, decode: Callable[[int], str], *, top: int = 6) -> list[list]:
    """Per atom, the ``top`` tokens with the largest W_U·D_i as ``[[token, value], …]``."""
    with torch.no_grad():
        eff = atoms.float() @ unembed.float().t()  # [n, V]
        v, i = eff.topk(min(top, eff.shape[1]), dim=1)
    return [[[decode(int(t)), round(float(x), 4)] for t, x in zip(ti, vi)] for ti, vi in zip(i.tolist(), v.tolist())]


def token_contexts(z_col: Tensor, rows: Sequence[int], token_rows: Tensor, row_index: Tensor, pos_of: Tensor,
                   to_str: Callable[[int], str], *, radius: int = 8) -> list[dict[str, Any]]:
    """Contexts of the evaluation rows ``rows`` (indices into ``z_col``): tokens around each and the
    latent's code at every token shown (0 where a token has no evaluation row)."""
    out = []
    for j in rows:
        r, t = (int(v) for v in row_index[j])
        a, b = max(0, t - radius), min(token_rows.shape[1], t + 3)
        ids = token_rows[r, a:b].tolist()
        idx = pos_of[r, a:b]
        acts = torch.where(idx >= 0, z_col[idx.clamp(min=0)], torch.zeros(b - a)).tolist()
        out.append({"tokens": [to_str(i) for i in ids], "acts": [round(float(x), 4) for x in acts], "focus": t - a})
    return out


def feature_browser_data(lens, data, *, concept_best: dict[str, int] | None = None, top_n: int = 6,
                         radius: int = 8, max_rows: int = 4096, unembed: Tensor | None = None,
                         token_str: Callable[[int], str] | None = None, title: str = "") -> dict[str, Any]:
    """The browser's data for every latent of ``lens`` on ``data`` (a :class:`assay.bench.worlds.WorldData`
    or anything with ``eval``, ``concepts``, ``concept_names``, ``token_rows``, ``row_index``, ``vocab``,
    ``acts``; the last five may be None)."""
    from assay.stats import auroc_matrix

    with torch.no_grad():
        x = data.eval[:max_rows].float()
        z = lens.encode(x).float()
    n = z.shape[1]
    concept, concept_auc = [None] * n, [None] * n
    if getattr(data, "concepts", None) is not None:
        auc = torch.nan_to_num(auroc_matrix(z, data.concepts[:max_rows]), nan=0.0)
        v, c = auc.max(1)
        concept = [data.concept_names[int(ci)] for ci in c]
        concept_auc = [round(float(vi), 4) for vi in v]
    tokens = getattr(data, "token_rows", None)
    to_str = token_str or (lambda i: data.vocab[i] if getattr(data, "vocab", None) else str(i))
    pos_of = None
    if tokens is not None:
        ri = data.row_index[:max_rows]
        pos_of = torch.full(tokens.shape, -1, dtype=torch.long)
        pos_of[ri[:, 0], ri[:, 1]] = torch.arange(ri.shape[0])
    logits = None
    if unembed is not None:
        from assay.bench.methods import atoms_of

        atoms = atoms_of(lens)
        if atoms is not None:
            logits = logit_effects(unembed, atoms, to_str)
    best_of = {}
    for name, i in (concept_best or {}).items():
        best_of.setdefault(int(i), []).append(name)
    top_v, top_i = z.topk(min(top_n, z.shape[0]), dim=0)  # [top_n, n]
    latents = []
    fires = (z > 0).double().mean(0)
    for i in range(n):
        col = z[:, i]
        pos = col[col > 0]
        hist, hi = [], 0.0
        if pos.numel():
            hi = float(pos.max())
            hist = torch.histc(pos, bins=20, min=0.0, max=hi).int().tolist()
        rows = [int(j) for j, v in zip(top_i[:, i], top_v[:, i]) if v > 0]
        if tokens is not None:
            ctx = token_contexts(col, rows, tokens, data.row_index[:max_rows], pos_of, to_str, radius=radius)
        else:
            ctx = []
            for j in rows:
                on = (data.acts[j] > 0).nonzero().squeeze(1).tolist() if getattr(data, "acts", None) is not None else []
                names = [data.concept_names[c] for c in on]
                ctx.append({"tokens": [f"#{j}"] + names, "acts": [round(float(col[j]), 4)] + [0.0] * len(names),
                            "focus": 0})
        latents.append({"id": i, "freq": round(float(fires[i]), 5), "max": round(hi, 4), "hist": hist,
                        "concept": concept[i], "concept_auroc": concept_auc[i], "best_for": best_of.get(i, []),
                        "contexts": ctx, "logits": logits[i] if logits is not None else []})
    return {"title": title, "n_latents": n, "latents": latents}
