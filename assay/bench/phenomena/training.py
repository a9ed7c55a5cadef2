"""Train a sequence world's default tiny transformer for a phenomenon, at a budget of steps.

The world's ``reference_model()`` settings (:func:`assay.models.zoo.reference_configs`) with ``steps`` and the
evaluation interval overridden (and the warmup capped at a tenth of the steps), trained by :func:`assay.models.train.train` without
checkpoints (the runs of
the ``dynamics`` family and of the benchmark scripts behind it are minutes long; the bench caches their
results, not their weights). Unlike :func:`assay.models.zoo.world_model` it keeps the evaluation history (the
curves) and writes nothing to the model cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["train_reference"]


def train_reference(world: Any, *, steps: int, seed: int, eval_every: int | None = None,
                    eval_size: int | None = None, on_eval: Callable[[dict[str, float]], None] | None = None) -> Any:
    """Train ``world``'s default tiny transformer for ``steps`` updates (initial weights and data from ``seed``),
    evaluating every ``eval_every`` updates (None: at the end only) on ``eval_size`` held-out rows (None: the
    trainer's default); returns :class:`assay.models.train.TrainResult` (``model``, ``history``, ``metrics``)."""
    from assay.models.train import train
    from assay.models.transformer import Transformer
    from assay.models.zoo import reference_configs
    from assay.worlds.base import make_generator

    overrides: dict[str, Any] = {"steps": steps, "eval_every": eval_every}
    if eval_size is not None:
        overrides["eval_size"] = eval_size
    model_cfg, train_cfg = reference_configs(world, train_overrides=overrides, seed=seed)
    train_cfg = dataclasses.replace(train_cfg, checkpoint_every=None, warmup=min(train_cfg.warmup, max(1, steps // 10)))
    model = Transformer(model_cfg, generator=make_generator(seed))
    return train(model, world, train_cfg, on_eval=on_eval)
