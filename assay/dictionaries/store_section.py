"""The report section of an SAE trained on an activation store (``assay sae train``): its held-out figures
and a feature browser over the held-out windows (:func:`assay.dictionaries.features.store_browser_data`;
the browser after Bricken et al. 2023, "Towards Monosemanticity", and Neuronpedia), written as
``section.json`` + ``report.html`` in the SAE's folder so ``assay report`` shows it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from assay.dictionaries.store_run import StoreSAEConfig, StoreSAEResult

__all__ = ["write_store_sae_section"]


def write_store_sae_section(out: Path, store: Any, site: str, cfg: StoreSAEConfig, res: StoreSAEResult,
                            facts: dict[str, Any], loaded: Any = None,
                            log: Callable[[str], None] | None = None) -> None:
    """Write the report section of an SAE trained by :func:`~assay.dictionaries.store_run.train_sae_on_store`
    into its folder ``out``: the ``facts`` (numbers become the table) and a feature browser over the held-out
    windows. ``loaded``: the store's :class:`assay.models.offline.LoadedModel`, for token strings and logit
    effects (None: neither). ``log``: called with a line before and after the browser (e.g. ``print``)."""
    from assay.dictionaries.features import store_browser_data
    from assay.report import Section, Table, write_section

    say = log or (lambda line: None)
    T = int(store.config["context_length"])
    where = f"the {cfg.holdout_windows} held-out windows" if cfg.holdout_windows else "the first windows of the store"
    say(f"feature browser: top contexts of the {res.sae.d_sae} latents on {where} ...")
    t0 = time.perf_counter()
    token_str, unembed = None, None
    if loaded is not None:
        tok = loaded.tokenizer
        token_str = lambda i: tok.decode([int(i)])  # noqa: E731
        head = loaded.model.get_output_embeddings()
        if head is not None and head.weight.shape[1] == res.sae.d_in:  # logit effects: residual-stream sites
            unembed = head.weight.detach()
    model_name = store.config.get("model")
    title = f"SAE ({res.sae.architecture}, {res.sae.d_sae} latents) on {model_name} {site}"
    start = store.n_rows - cfg.holdout_windows * T if cfg.holdout_windows else 0
    features = store_browser_data(res.sae, store, site, start=start,
                                  exclude_special=cfg.exclude_special, token_str=token_str, unembed=unembed,
                                  top_n=6, radius=10, title=title)
    say(f"feature browser: done ({time.perf_counter() - t0:.1f} s)")
    rows = [[k, v] for k, v in facts.items() if isinstance(v, int | float) and k != "steps"]
    notes = [f"assay sae train: store {store.path}, site {site}, {res.train.steps} steps of batch "
             f"{cfg.batch_size}; BOS/padding rows {'left out' if cfg.exclude_special else 'kept'}.",
             f"Held-out figures and the feature browser use {where} (never trained on)."
             if cfg.holdout_windows else "No windows were held out: no held-out figures; the browser shows "
             "training windows."]
    write_section(out, Section(title, [Table("Held-out figures", ["metric", "value"], rows)], notes=notes,
                               features=features))
