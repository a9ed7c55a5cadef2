"""Train a crosscoder across several sites of one activation store (layers of one model: acausal cross-layer
features) and evaluate it on held-out windows: the function behind ``assay sae train --architecture crosscoder``.

Lindsey, Templeton, Marcus, Conerly, Batson & Olah 2024, "Sparse Crosscoders for Cross-Layer Features and
Model Diffing" (the model :class:`assay.dictionaries.crosscoder.Crosscoder`). The sites, cached together in
one pass, are read at the same store rows — the store's seeded order, minus BOS/padding rows and the last
``holdout_windows`` windows, as :func:`assay.dictionaries.store_run.train_sae_on_store` — each scaled to
E‖a^m‖ = √d (:func:`~assay.dictionaries.crosscoder.source_scales`, measured on the first training batch)
and concatenated; the one SAE trainer trains the crosscoder and the scales are folded back
(:meth:`~assay.dictionaries.crosscoder.Crosscoder.fold_source_scales`), so the saved crosscoder takes raw
activations. Held-out FVU is reported per source and over the concatenated raw sources.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from assay.dictionaries.base import SAE
from assay.dictionaries.store_run import StoreSAEConfig, layout, trainer_config
from assay.dictionaries.trainer import TrainResult
from assay.evaluate.reconstruction import ReconstructionMetrics
from assay.evaluate.sparsity import SparsityMetrics

__all__ = ["StoreCrosscoderResult", "train_crosscoder_on_store", "check_crosscoder_sites"]


class StoreCrosscoderResult(NamedTuple):
    """What :func:`train_crosscoder_on_store` returns."""

    sae: SAE
    """The trained :class:`~assay.dictionaries.crosscoder.Crosscoder` (takes the raw sources concatenated)."""
    train: TrainResult
    """Steps, input scale and the last training step's figures (on the scaled sources)."""
    source_scales: Tensor
    """s_m of each source (E‖s_m·a^m‖ = √d on the first training batch), ``[M]``; folded into ``sae``."""
    reconstruction: ReconstructionMetrics | None
    """Held-out reconstruction of the concatenated raw sources (None when ``holdout_windows`` = 0)."""
    per_source: list[ReconstructionMetrics] | None
    """Held-out reconstruction of each source, in the order of the sites."""
    sparsity: SparsityMetrics | None
    """Held-out sparsity of the shared code."""
    train_seconds: float
    """Wall-clock seconds of training."""

    def figures(self) -> dict[str, Any]:
        """The figures ``assay sae train`` prints, rounded."""
        out: dict[str, Any] = {"steps": self.train.steps, "train_s": round(self.train_seconds, 1),
                               "source_scales": [round(s, 4) for s in self.source_scales.tolist()]}
        if self.reconstruction is not None and self.per_source is not None and self.sparsity is not None:
            out |= {"heldout_tokens": self.reconstruction.n_tokens, "heldout_fvu": round(self.reconstruction.fvu, 4),
                    "heldout_fvu_per_source": [round(m.fvu, 4) for m in self.per_source],
                    "heldout_l0": round(self.sparsity.l0, 2), "heldout_dead": round(self.sparsity.dead_fraction, 4)}
        return out


def check_crosscoder_sites(store: Any, sites: Sequence[str]) -> int:
    """The common width d of ``sites`` of ``store``; refuses fewer than two sites, repeats, unknown sites
    (the store names what it holds) and sites of different widths."""
    if len(sites) < 2:
        raise ValueError(f"a crosscoder across layers needs at least two sites; got {list(sites)} "
                         "(give --site and one or more --cross-site)")
    if len(set(sites)) != len(sites):
        raise ValueError(f"crosscoder sites repeat: {list(sites)}; give each site once")
    widths = {s: store.d(s) for s in sites}
    if len(set(widths.values())) != 1:
        raise ValueError(f"crosscoder sites have different widths {widths}; a crosscoder needs one width per "
                         "source: choose sites of one width (e.g. residual streams), or project them to one width "
                         "and use assay.dictionaries.crosscoder.crosscoder_batches(projections=...)")
    return next(iter(widths.values()))


def train_crosscoder_on_store(store: Any, sites: Sequence[str], cfg: StoreSAEConfig, *,
                              out: str | Path | None = None, checkpoint: str | Path | None = None,
                              log: Callable[[str], None] | None = None) -> StoreCrosscoderResult:
    """Train a crosscoder over ``sites`` of ``store`` (an :class:`assay.store.ActivationStore` or its folder)
    under ``cfg`` (``architecture="crosscoder"``; d_sae = expansion × d, d one site's width), evaluate it
    on the held-out windows and (with ``out``) save it as an assay artifact (meta: sites, source scales,
    held-out FVU overall and per source). ``checkpoint``: a folder for exact resume."""
    from assay.dictionaries.batches import store_batches
    from assay.dictionaries.registry import build_sae, save_sae
    from assay.dictionaries.trainer import train_saes
    from assay.store import ActivationStore
    from assay.store.prefetch import prefetch

    if cfg.architecture != "crosscoder":
        raise ValueError(f"train_crosscoder_on_store trains architecture='crosscoder'; got {cfg.architecture!r}")
    if not hasattr(store, "batch_rows"):
        store = ActivationStore.open(store)
    sites = list(sites)
    d = check_crosscoder_sites(store, sites)
    _, cut = layout(store, cfg)

    def site_batches(site: str, start: int) -> tuple[Iterator[Any], Callable[[int], Tensor]]:
        return store_batches(store, site, batch_size=cfg.batch_size, seed=cfg.seed, start_batch=start,
                             n_batches=max(cfg.steps, start), exclude_special=cfg.exclude_special,
                             keep_rows=lambda rows: rows < cut, prefetch=0)

    rows0 = site_batches(sites[0], 0)[1](0)
    from assay.dictionaries.crosscoder import source_scales

    scales = source_scales(torch.stack([store.read_rows(s, rows0).float() for s in sites], dim=1))

    def data(start: int) -> Iterator[Tensor]:
        streams = [site_batches(s, start)[0] for s in sites]
        return prefetch((torch.cat([x * s for x, s in zip(xs, scales.tolist(), strict=True)], dim=-1)
                         for xs in zip(*streams, strict=True)), 2)

    kind = {"activation": "topk", "k": cfg.k} if cfg.crosscoder_topk else {"l1_coef": cfg.l1_coef or 1.0}
    sae = build_sae("crosscoder", d_in=len(sites) * d, d_sae=cfg.expansion * d, n_sources=len(sites),
                    seed=cfg.seed, **kind)
    t0 = time.perf_counter()
    trained, result = train_saes(sae, trainer_config(cfg), data, checkpoint=checkpoint)
    train_s = time.perf_counter() - t0
    trained.fold_source_scales(scales)  # type: ignore[operator]
    rec = per = spars = None
    if cfg.holdout_windows > 0:
        say = log or (lambda line: None)
        say(f"held-out metrics: FVU per source and overall, L0 on the last {cfg.holdout_windows} windows ...")
        rec, per, spars = _heldout(trained, store, sites, cut, cfg.exclude_special)
        say(f"held-out metrics: FVU {rec.fvu:.4f} ({', '.join(f'{m.fvu:.4f}' for m in per)} per source), "
            f"L0 {spars.l0:.2f} on {rec.n_tokens} tokens")
    if out is not None:
        save_sae(out, trained, meta={
            "store": str(store.path), "sites": sites, "model": store.config.get("model"),
            "source_scales": scales.tolist(), "steps": result.steps, "last": result.last[0],
            "heldout_fvu": rec.fvu if rec else None, "heldout_fvu_per_source": [m.fvu for m in per] if per else None,
            "heldout_l0": spars.l0 if spars else None})
    return StoreCrosscoderResult(trained, result, scales, rec, per, spars, train_s)


@torch.no_grad()
def _heldout(cc: SAE, store: Any, sites: list[str], cut: int, exclude_special: bool, chunk: int = 4096
             ) -> tuple[ReconstructionMetrics, list[ReconstructionMetrics], SparsityMetrics]:
    from assay.evaluate.reconstruction import ReconstructionAccumulator
    from assay.evaluate.sparsity import SparsityAccumulator

    whole, per = ReconstructionAccumulator(), [ReconstructionAccumulator() for _ in sites]
    spars = SparsityAccumulator(cc.d_sae)
    d = cc.d_in // len(sites)
    for a in range(cut, store.n_rows, chunk):
        b = min(a + chunk, store.n_rows)
        keep = store.positions[a:b] >= 0 if exclude_special else slice(None)
        x = torch.cat([store.read(s, a, b)[keep].float() for s in sites], dim=-1)
        if x.shape[0] == 0:
            continue
        z = cc.encode(x)
        x_hat = cc.decode(z)
        whole.update(x, x_hat)
        for m, acc in enumerate(per):
            acc.update(x[:, m * d:(m + 1) * d], x_hat[:, m * d:(m + 1) * d])
        spars.update(z)
    if whole.n == 0:
        raise ValueError("the held-out windows hold no rows to evaluate (all BOS/padding?)")
    return whole.result(), [acc.result() for acc in per], spars.result()
