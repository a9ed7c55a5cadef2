"""Feature-browser data for a fitted method on a world: the per-latent data of
:func:`assay.dictionaries.features.latent_browser_data` (top-activating contexts, histogram, logit
effects; "Towards Monosemanticity", Bricken et al. 2023) plus what only a world knows — each latent's
best-matching ground-truth concept, the concept c maximising AUROC(z_i, concept c)
(:func:`assay.stats.auroc_matrix`), the concepts it is the best latent for, and, on planted worlds
(no tokens), each top example's active ground-truth features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["feature_browser_data"]


def feature_browser_data(lens, data, *, concept_best: dict[str, int] | None = None, top_n: int = 6,
                         radius: int = 8, max_rows: int = 4096, unembed: Tensor | None = None,
                         token_str: Callable[[int], str] | None = None, title: str = "") -> dict[str, Any]:
    """The browser's data for every latent of ``lens`` on ``data`` (a :class:`assay.bench.worlds.WorldData`
    or anything with ``eval``, ``concepts``, ``concept_names``, ``token_rows``, ``row_index``, ``vocab``,
    ``acts``; the last five may be None)."""
    from assay.bench.methods import atoms_of
    from assay.dictionaries.features import latent_browser_data
    from assay.stats import auroc_matrix

    x = data.eval[:max_rows]
    tokens = getattr(data, "token_rows", None)
    vocab = getattr(data, "vocab", None)
    to_str = token_str or (lambda i: vocab[i] if vocab else str(i))
    fd = latent_browser_data(lens, x, token_rows=tokens, row_index=data.row_index[:max_rows] if tokens is not None
                             else None, token_str=to_str, atoms=atoms_of(lens), unembed=unembed, top_n=top_n,
                             radius=radius, title=title)
    n = fd["n_latents"]
    concept, concept_auc = [None] * n, [None] * n
    if getattr(data, "concepts", None) is not None:
        with torch.no_grad():
            z = lens.encode(x.float()).float()
        auc = torch.nan_to_num(auroc_matrix(z, data.concepts[:max_rows]), nan=0.0)
        v, c = auc.max(1)
        concept = [data.concept_names[int(ci)] for ci in c]
        concept_auc = [round(float(vi), 4) for vi in v]
    best_of: dict[int, list[str]] = {}
    for name, i in (concept_best or {}).items():
        best_of.setdefault(int(i), []).append(name)
    acts = getattr(data, "acts", None)
    for lat in fd["latents"]:
        i = lat["id"]
        lat.update(concept=concept[i], concept_auroc=concept_auc[i], best_for=best_of.get(i, []))
        if tokens is None and acts is not None:  # planted worlds: name the example's active features
            for ctx in lat["contexts"]:
                names = [data.concept_names[c] for c in (acts[ctx["row"]] > 0).nonzero().squeeze(1).tolist()]
                ctx["tokens"] += names
                ctx["acts"] += [0.0] * len(names)
    return fd
