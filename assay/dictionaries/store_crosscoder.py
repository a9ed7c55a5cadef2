"""Train a crosscoder across several sites of one activation store (layers of one model: acausal cross-layer
features) or one site of several stores cached from the same token stream (models: model diffing) and evaluate
it on held-out windows: the function behind ``assay sae train --architecture crosscoder``.

Lindsey, Templeton, Marcus, Conerly, Batson & Olah 2024, "Sparse Crosscoders for Cross-Layer Features and
Model Diffing" (the model :class:`assay.dictionaries.crosscoder.Crosscoder`). The sources (sites cached
together in one pass, or stores whose token ids and positions are checked equal) are read at the same rows:
the store's seeded order, minus BOS/padding rows and the last ``holdout_windows`` windows, as
:func:`assay.dictionaries.store_run.train_sae_on_store`. Each source is scaled to
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

__all__ = ["StoreCrosscoderResult", "train_crosscoder_on_store", "check_crosscoder_sources"]


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


def check_crosscoder_sources(sources: Sequence[tuple[Any, str]]) -> int:
    """The common width d of the (store, site) ``sources``; refuses fewer than two sources, repeats, unknown
    sites (the store names what it holds), sources of different widths, and stores whose rows are not the
    same tokens (row count, window length, token ids and positions must all be equal)."""
    if len(sources) < 2:
        raise ValueError(f"a crosscoder needs at least two sources; got {len(sources)} (give --site and one or "
                         "more --cross-site, or --cross-store)")
    keys = [(str(st.path), site) for st, site in sources]
    if len(set(keys)) != len(keys):
        raise ValueError(f"crosscoder sources repeat: {keys}; give each (store, site) once")
    widths = {f"{p}:{site}": st.d(site) for (st, site), (p, _) in zip(sources, keys, strict=True)}
    if len(set(widths.values())) != 1:
        raise ValueError(f"crosscoder sources have different widths {widths}; a crosscoder needs one width per "
                         "source: choose sites of one width (e.g. residual streams), or project them to one width "
                         "and use assay.dictionaries.crosscoder.crosscoder_batches(projections=...)")
    first = sources[0][0]
    for st, _ in sources[1:]:
        if st is first:
            continue
        if st.n_rows != first.n_rows or st.config.get("context_length") != first.config.get("context_length"):
            raise ValueError(f"stores {first.path} and {st.path} differ in rows ({first.n_rows} vs {st.n_rows}) or "
                             "window length; a crosscoder across models needs both cached from the same token stream "
                             "(the same corpus, --n-tokens and --context-length)")
        for col in ("tokens", "positions"):
            a, b = getattr(first, col)[0:first.n_rows], getattr(st, col)[0:st.n_rows]
            if not torch.equal(a, b):
                row = int((a != b).nonzero()[0, 0])
                raise ValueError(f"stores {first.path} and {st.path} hold different {col} (first at row {row}: "
                                 f"{int(a[row])} vs {int(b[row])}); a crosscoder across models reads both at the "
                                 "same rows, so they must be cached from the same token stream (same corpus, "
                                 "tokenizer, --n-tokens and --context-length)")
    return next(iter(widths.values()))


def train_crosscoder_on_store(sources: Sequence[tuple[Any, str]], cfg: StoreSAEConfig, *,
                              out: str | Path | None = None, checkpoint: str | Path | None = None,
                              log: Callable[[str], None] | None = None) -> StoreCrosscoderResult:
    """Train a crosscoder over ``sources``, (store, site) pairs — several sites of one store (layers of one
    model), or one site of several stores cached from the same token stream (models) — under ``cfg``
    (``architecture="crosscoder"``; d_sae = expansion × d, d one source's width). A store is an
    :class:`assay.store.ActivationStore` or its folder. Evaluates on the held-out windows and (with ``out``)
    saves an assay artifact (meta: sources, source scales, held-out FVU overall and per source).
    ``checkpoint``: a folder for exact resume."""
    from assay.dictionaries.batches import store_batches
    from assay.dictionaries.crosscoder import source_scales
    from assay.dictionaries.registry import build_sae, save_sae
    from assay.dictionaries.trainer import train_saes
    from assay.store import ActivationStore
    from assay.store.prefetch import prefetch

    if cfg.architecture != "crosscoder":
        raise ValueError(f"train_crosscoder_on_store trains architecture='crosscoder'; got {cfg.architecture!r}")
    opened: dict[str, Any] = {}

    def open_store(st: Any) -> Any:
        if hasattr(st, "batch_rows"):
            return st
        if str(st) not in opened:
            opened[str(st)] = ActivationStore.open(st)
        return opened[str(st)]

    sources = [(open_store(st), site) for st, site in sources]
    d = check_crosscoder_sources(sources)
    store = sources[0][0]
    _, cut = layout(store, cfg)

    def source_batches(st: Any, site: str, start: int) -> tuple[Iterator[Any], Callable[[int], Tensor]]:
        return store_batches(st, site, batch_size=cfg.batch_size, seed=cfg.seed, start_batch=start,
                             n_batches=max(cfg.steps, start), exclude_special=cfg.exclude_special,
                             keep_rows=lambda rows: rows < cut, prefetch=0)

    rows0 = source_batches(store, sources[0][1], 0)[1](0)
    scales = source_scales(torch.stack([st.read_rows(site, rows0).float() for st, site in sources], dim=1))

    def data(start: int) -> Iterator[Tensor]:
        streams = [source_batches(st, site, start)[0] for st, site in sources]
        return prefetch((torch.cat([x * s for x, s in zip(xs, scales.tolist(), strict=True)], dim=-1)
                         for xs in zip(*streams, strict=True)), 2)

    kind = {"activation": "topk", "k": cfg.k} if cfg.crosscoder_topk else {"l1_coef": cfg.l1_coef or 1.0}
    sae = build_sae("crosscoder", d_in=len(sources) * d, d_sae=cfg.expansion * d, n_sources=len(sources),
                    seed=cfg.seed, **kind)
    t0 = time.perf_counter()
    named = [[str(st.path), site] for st, site in sources]
    identity = {"sources": named, "batch_size": cfg.batch_size,
                "seed": cfg.seed, "exclude_special": cfg.exclude_special, "train_rows": cut}
    trained, result = train_saes(sae, trainer_config(cfg), data, checkpoint=checkpoint, data_identity=identity)
    train_s = time.perf_counter() - t0
    trained.fold_source_scales(scales)  # type: ignore[operator]
    rec = per = spars = None
    if cfg.holdout_windows > 0:
        say = log or (lambda line: None)
        say(f"held-out metrics: FVU per source and overall, L0 on the last {cfg.holdout_windows} windows ...")
        rec, per, spars = _heldout(trained, sources, cut, cfg.exclude_special)
        say(f"held-out metrics: FVU {rec.fvu:.4f} ({', '.join(f'{m.fvu:.4f}' for m in per)} per source), "
            f"L0 {spars.l0:.2f} on {rec.n_tokens} tokens")
    if out is not None:
        save_sae(out, trained, meta={
            "sources": named,
            "models": [st.config.get("model") for st, _ in sources], "source_scales": scales.tolist(),
            "steps": result.steps, "last": result.last[0], "heldout_fvu": rec.fvu if rec else None,
            "heldout_fvu_per_source": [m.fvu for m in per] if per else None,
            "heldout_l0": spars.l0 if spars else None})
    return StoreCrosscoderResult(trained, result, scales, rec, per, spars, train_s)


@torch.no_grad()
def _heldout(cc: SAE, sources: list[tuple[Any, str]], cut: int, exclude_special: bool, chunk: int = 4096
             ) -> tuple[ReconstructionMetrics, list[ReconstructionMetrics], SparsityMetrics]:
    from assay.evaluate.reconstruction import ReconstructionAccumulator
    from assay.evaluate.sparsity import SparsityAccumulator

    whole, per = ReconstructionAccumulator(), [ReconstructionAccumulator() for _ in sources]
    spars = SparsityAccumulator(cc.d_sae)
    d = cc.d_in // len(sources)
    store = sources[0][0]
    for a in range(cut, store.n_rows, chunk):
        b = min(a + chunk, store.n_rows)
        keep = store.positions[a:b] >= 0 if exclude_special else slice(None)
        x = torch.cat([st.read(site, a, b)[keep].float() for st, site in sources], dim=-1)
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
