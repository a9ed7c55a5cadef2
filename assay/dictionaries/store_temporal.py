"""Train a temporal SAE on whole windows of one store site and evaluate it on held-out windows: the function
behind ``assay sae train --architecture temporal``.

Lubana, Rager, Hindupur et al. 2025, "Priors in Time: Missing Inductive Biases for Language Model
Interpretability" (the model :class:`assay.dictionaries.temporal.TemporalSAE`). Training reads the store's
first windows through :class:`assay.store.SequenceReader` (whole windows in a seeded order; the BOS and
padding masked out of the loss) with :func:`~assay.dictionaries.temporal.train_temporal_sae`; the last
``holdout_windows`` windows are never trained on. On them: FVU over the document tokens, L0 of the novel
code, and the paper's two figures (:mod:`assay.evaluate.temporal`): the predictable share of the
reconstruction energy and the mean tortuosity of the predictable code's trajectory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from assay.dictionaries.store_run import StoreSAEConfig, trainer_config
from assay.dictionaries.temporal import TemporalSAE
from assay.dictionaries.trainer import TrainResult
from assay.evaluate.reconstruction import ReconstructionMetrics
from assay.evaluate.sparsity import SparsityMetrics

__all__ = ["StoreTemporalResult", "TemporalHeldout", "train_temporal_on_store"]


class TemporalHeldout(NamedTuple):
    """Held-out figures of a temporal SAE over the document tokens of the held-out windows."""

    reconstruction: ReconstructionMetrics
    """FVU and the rest of the reconstruction metrics."""
    sparsity: SparsityMetrics
    """L0 and dead fraction of the novel code (the predictable code is dense over the latents it uses)."""
    predictable_share: float
    """Σ‖z_p D‖² / (Σ‖z_p D‖² + Σ‖z_n D‖²) (the paper reports ~0.8 on Gemma-2-2B)."""
    tortuosity: float
    """Mean arc–chord ratio of the predictable code's trajectory per window (the paper: ≈ 2, vs 25–30 for SAEs)."""


class StoreTemporalResult(NamedTuple):
    """What :func:`train_temporal_on_store` returns."""

    sae: TemporalSAE
    """The trained temporal SAE (takes raw windows)."""
    train: TrainResult
    """Steps, input scale and the last training step's figures."""
    heldout: TemporalHeldout | None
    """Held-out figures (None when ``holdout_windows`` = 0)."""
    windows_per_batch: int
    """Whole windows per step: ``batch_size // window length`` (at least 1)."""
    train_seconds: float
    """Wall-clock seconds of training."""

    def figures(self) -> dict[str, Any]:
        """The figures ``assay sae train`` prints, rounded."""
        out: dict[str, Any] = {"steps": self.train.steps, "train_s": round(self.train_seconds, 1),
                               "windows_per_batch": self.windows_per_batch}
        if self.heldout is not None:
            h = self.heldout
            out |= {"heldout_tokens": h.reconstruction.n_tokens, "heldout_fvu": round(h.reconstruction.fvu, 4),
                    "heldout_l0": round(h.sparsity.l0, 2), "heldout_dead": round(h.sparsity.dead_fraction, 4),
                    "predictable_share": round(h.predictable_share, 4), "tortuosity": round(h.tortuosity, 3)}
        return out


def train_temporal_on_store(store: Any, site: str, cfg: StoreSAEConfig, *, out: str | Path | None = None,
                            checkpoint: str | Path | None = None, log: Callable[[str], None] | None = None
                            ) -> StoreTemporalResult:
    """Train a temporal SAE (``cfg.architecture="temporal"``; d_sae = expansion × d, ``k``, ``heads``,
    ``temporal_context``, ``dense_context``) on ``site`` of ``store`` (an :class:`assay.store.ActivationStore` or its folder).
    ``cfg.batch_size`` counts tokens: each step reads ``batch_size // T`` whole windows of T tokens. A store
    without window boundaries, or windows shorter than ``temporal_context``, is refused by name. With ``out``
    the SAE is saved as an artifact (``load_sae`` reloads it)."""
    from assay.dictionaries.registry import save_sae
    from assay.dictionaries.temporal import TemporalConfig, train_temporal_sae
    from assay.store import ActivationStore, SequenceReader

    if cfg.architecture != "temporal":
        raise ValueError(f"train_temporal_on_store trains architecture='temporal'; got {cfg.architecture!r}")
    if not hasattr(store, "batch_rows"):
        store = ActivationStore.open(store)
    reader = SequenceReader(store)
    n_train = reader.n_windows - cfg.holdout_windows
    if n_train <= 0:
        raise ValueError(f"holdout_windows={cfg.holdout_windows} leaves no training window of the store's "
                         f"{reader.n_windows}")
    per_batch = max(1, cfg.batch_size // reader.window)
    if per_batch > n_train:
        raise ValueError(f"batch_size={cfg.batch_size} asks for {per_batch} windows of {reader.window} per step but "
                         f"only {n_train} windows are for training; lower --batch-size or --holdout-windows")
    d = store.d(site)
    sae = TemporalSAE(TemporalConfig(d_in=d, d_sae=cfg.expansion * d, k=cfg.k, n_heads=cfg.heads or 4,
                                     context=cfg.temporal_context, dense_context=cfg.dense_context, seed=cfg.seed))
    t0 = time.perf_counter()
    trained, result = train_temporal_sae(sae, trainer_config(cfg), reader, site, batch_size=per_batch, seed=cfg.seed,
                                         checkpoint=checkpoint, windows=n_train)
    train_s = time.perf_counter() - t0
    heldout = None
    if cfg.holdout_windows > 0:
        say = log or (lambda line: None)
        say(f"held-out metrics: FVU, L0, predictable share, tortuosity on the last {cfg.holdout_windows} windows ...")
        heldout = _heldout(trained, reader, site, n_train)
        say(f"held-out metrics: FVU {heldout.reconstruction.fvu:.4f}, predictable share "
            f"{heldout.predictable_share:.3f}, tortuosity {heldout.tortuosity:.2f}")
    if out is not None:
        h = heldout
        save_sae(out, trained, meta={
            "store": str(store.path), "site": site, "model": store.config.get("model"), "steps": result.steps,
            "input_scale": result.input_scale, "last": result.last[0], "windows_per_batch": per_batch,
            "heldout_fvu": h.reconstruction.fvu if h else None, "heldout_l0": h.sparsity.l0 if h else None,
            "predictable_share": h.predictable_share if h else None, "tortuosity": h.tortuosity if h else None})
    return StoreTemporalResult(trained, result, heldout, per_batch, train_s)


@torch.no_grad()
def _heldout(sae: TemporalSAE, reader: Any, site: str, first: int, chunk: int = 4) -> TemporalHeldout:
    from assay.evaluate.reconstruction import ReconstructionAccumulator
    from assay.evaluate.sparsity import SparsityAccumulator
    from assay.evaluate.temporal import predictable_share, tortuosity

    rec, spars = ReconstructionAccumulator(), SparsityAccumulator(sae.d_sae)
    pred: list[Tensor] = []
    novel: list[Tensor] = []
    tort: list[Tensor] = []
    for a in range(first, reader.n_windows, chunk):
        w = reader.read_windows(site, range(a, min(a + chunk, reader.n_windows)))
        if not bool(w.mask.any()):
            continue
        c = sae.codes(w.acts, w.mask)
        rec.update(w.acts[w.mask], c.recon[w.mask])
        spars.update(c.novel[w.mask])
        pred.append(c.predictable_recon[w.mask])
        novel.append(c.novel_recon[w.mask])
        tort.append(tortuosity(c.predictable, w.mask))
    if rec.n == 0:
        raise ValueError("the held-out windows hold no document tokens to evaluate (all BOS/padding?)")
    t = torch.cat(tort)
    t = t[~t.isnan()]
    share = predictable_share(torch.cat(pred)[None], torch.cat(novel)[None])
    return TemporalHeldout(rec.result(), spars.result(), share, float(t.mean()) if t.numel() else float("nan"))
