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
                    eval_size: int | None = None, on_eval: Callable[[dict[str, float]], None] | None = None,
                    train_overrides: dict[str, Any] | None = None,
                    probe: Callable[[Any], dict[str, float]] | None = None) -> Any:
    """Train ``world``'s default tiny transformer for ``steps`` updates (initial weights and data from ``seed``),
    evaluating every ``eval_every`` updates (None: at the end only) on ``eval_size`` held-out rows (None: the
    trainer's default); returns :class:`assay.models.train.TrainResult` (``model``, ``history``, ``metrics``).
    ``train_overrides`` replace further training settings (e.g. ``lr``); ``probe(model)`` runs at every
    evaluation and its values join that evaluation's history entry (before ``on_eval`` sees it)."""
    from assay.models.train import train
    from assay.models.transformer import Transformer
    from assay.models.zoo import reference_configs
    from assay.worlds.base import make_generator

    overrides: dict[str, Any] = {**(train_overrides or {}), "steps": steps, "eval_every": eval_every}
    if eval_size is not None:
        overrides["eval_size"] = eval_size
    model_cfg, train_cfg = reference_configs(world, train_overrides=overrides, seed=seed)
    train_cfg = dataclasses.replace(train_cfg, checkpoint_every=None, warmup=min(train_cfg.warmup, max(1, steps // 10)))
    model = Transformer(model_cfg, generator=make_generator(seed))

    def observe(entry: dict[str, float]) -> None:
        if probe is not None:
            entry.update(probe(model))  # the trainer's history holds this same dict
        if on_eval is not None:
            on_eval(entry)

    return train(model, world, train_cfg, on_eval=observe)
