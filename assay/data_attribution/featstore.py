"""A resumable, memory-mapped store of per-example gradient features (one folder per checkpoint).

Like TRAK's ``MmapSaver`` (Park et al. 2023, ``MadryLab/trak``): ``features.npy`` ``[n, k]`` and
``out_to_loss.npy`` ``[n]`` are memory-mapped ``.npy`` files, and ``done.npy`` holds a per-example
"featurised" flag that is set only after the batch's rows are flushed, so an interrupted
featurisation resumes at the first unfinished batch and never recomputes finished ones. A
``meta.json`` records what was featurised (n, k, dtype and a caller-given identity); reopening with
a different identity is an error. (assay's activation store is keyed by token rows of a corpus, so
per-example gradient features get this small writer instead.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["FeatureStore", "featurize_to_store"]


class FeatureStore:
    """Memory-mapped features with per-example completion flags."""

    def __init__(self, path: str | Path, *, n: int, k: int, identity: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        meta = {"n": int(n), "k": int(k), "dtype": "float32", "identity": identity or {}}
        mf = self.path / "meta.json"
        if mf.exists():
            old = json.loads(mf.read_text())
            if old != meta:
                raise ValueError(f"{self.path} holds features of a different run: {old} vs {meta}; use another folder")
            mode = "r+"
        else:
            mode = "w+"
        self.features = np.lib.format.open_memmap(self.path / "features.npy", mode=mode, dtype=np.float32, shape=(n, k))
        self.out_to_loss = np.lib.format.open_memmap(self.path / "out_to_loss.npy", mode=mode, dtype=np.float32, shape=(n,))
        self.done = np.lib.format.open_memmap(self.path / "done.npy", mode=mode, dtype=np.bool_, shape=(n,))
        if mode == "w+":
            self.done[:] = False
            self.done.flush()
            mf.write_text(json.dumps(meta))

    @property
    def complete(self) -> bool:
        """Whether every example is featurised."""
        return bool(self.done.all())

    def write(self, start: int, features: torch.Tensor, out_to_loss: torch.Tensor | None = None) -> None:
        """Store rows ``start .. start + len(features)`` and then mark them done."""
        stop = start + features.shape[0]
        self.features[start:stop] = features.detach().float().cpu().numpy()
        if out_to_loss is not None:
            self.out_to_loss[start:stop] = out_to_loss.detach().float().cpu().numpy()
        self.features.flush()
        self.out_to_loss.flush()
        self.done[start:stop] = True
        self.done.flush()

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All features ``[n, k]`` and out-to-loss weights ``[n]`` (error if incomplete)."""
        if not self.complete:
            missing = int((~self.done).sum())
            raise ValueError(f"{self.path}: {missing} examples are not featurised yet; resume featurisation first")
        return torch.from_numpy(np.array(self.features)), torch.from_numpy(np.array(self.out_to_loss))


def featurize_to_store(
    store: FeatureStore,
    compute: Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]],
    *,
    batch_size: int,
    max_batches: int | None = None,
) -> int:
    """Fill ``store`` batch by batch with ``compute(start, stop) -> (features, out_to_loss)``, skipping
    batches already done; ``max_batches`` stops early (to test resumption). Returns batches computed."""
    n = store.features.shape[0]
    computed = 0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if store.done[start:stop].all():
            continue
        if max_batches is not None and computed >= max_batches:
            break
        feats, q = compute(start, stop)
        store.write(start, feats, q)
        computed += 1
    return computed
