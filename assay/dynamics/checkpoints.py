"""Checkpoint series as data: training writes log-spaced checkpoints into one artifact; any metric over
the series is a curve.

The instrumentation of the learning-dynamics studies of Lubana et al. 2025 ("A Percolation Model of
Emergence", repo ``EkdeepSLubana/ConceptPercolation``), Park et al. 2024 ("Emergence of Hidden
Capabilities", repo ``cfpark00/concept-learning``) and Park et al.'s Markov-mixture configs (50
near-geometric checkpoints), in assay's form::

    log_steps(n_steps, n_ckpt, first) = {0} ∪ unique(round(geomspace(first, n_steps, n_ckpt)))
    log_steps(3000, 20, 10) = 0, 10, 14, 18, 25, 33, 45, 61, 82, 110, 149, 201, 272, 367, 495, 669,
                              903, 1219, 1646, 2222, 3000

:func:`train_series` trains through :func:`assay.models.train.train` with a full training checkpoint
(weights, AdamW state, data-generator state) at every series step in a working folder
``.partial-<name>`` next to the output, so a run killed at any point resumes from its last checkpoint
and continues bit for bit; at the end the weights of every step are gathered into ONE artifact (kind
``"dynamics.series"``, atomic and checksummed by :mod:`assay.artifact`): one safetensors file per step
(``step-XXXXXXX``) and a manifest in ``config.json`` (the steps, the model, training and world
configs; the training losses and evaluation history in the metadata). Every checkpoint of a series
must have the same parameter names, shapes and dtypes. :func:`evaluate_series` evaluates a metric in
a separate pass over every checkpoint (eval mode) and returns the curve ``[(step, value), …]``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from assay.artifact import ArtifactError, load_artifact, save_artifact
from assay.config import ConfigError, to_dict
from assay.dynamics.connectivity import check_same_architecture

__all__ = ["SERIES_KIND", "log_steps", "CheckpointSeries", "make_series", "save_series", "load_series",
           "train_series", "map_series", "evaluate_series", "build_model"]

SERIES_KIND = "dynamics.series"


def log_steps(n_steps: int, n_ckpt: int, first: int = 10) -> tuple[int, ...]:
    """{0} ∪ unique(round(geomspace(first, n_steps, n_ckpt))): log-spaced checkpoint steps."""
    if not 1 <= first <= n_steps or n_ckpt < 1:
        raise ConfigError(f"log_steps needs 1 <= first <= n_steps and n_ckpt >= 1, got first={first}, "
                          f"n_steps={n_steps}, n_ckpt={n_ckpt}")
    steps = np.unique(np.round(np.geomspace(first, n_steps, n_ckpt)).astype(int))
    return (0, *(int(s) for s in steps))


@dataclass(frozen=True)
class CheckpointSeries:
    """Model weights at increasing training steps."""

    steps: tuple[int, ...]
    """Training steps of the checkpoints (strictly increasing)."""
    states: tuple[dict[str, Tensor], ...]
    """The model's ``state_dict()`` at each step."""
    config: dict[str, Any] = field(default_factory=dict)
    """Manifest: ``model`` (model config), ``train`` (training config), ``world`` and ``world_name``, when known."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Training ``losses`` (every update) and evaluation ``history``, when known."""

    def __len__(self) -> int:
        return len(self.steps)


def make_series(steps: Sequence[int], states: Sequence[Mapping[str, Tensor]], *,
                config: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None) -> CheckpointSeries:
    """A validated series: steps strictly increasing, one state per step, every model of the same shape."""
    steps = tuple(int(s) for s in steps)
    if len(steps) != len(states) or not steps:
        raise ValueError(f"a checkpoint series needs one state per step, got {len(steps)} steps and {len(states)} states")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"checkpoint steps must be strictly increasing, got {list(steps)}")
    for s, st in zip(steps[1:], states[1:]):
        try:
            check_same_architecture(states[0], st, names=(f"step {steps[0]}", f"step {s}"))
        except ValueError as e:
            raise ValueError(f"checkpoint series: every checkpoint must have the same shapes; {e}") from None
    return CheckpointSeries(steps, tuple(dict(st) for st in states), dict(config or {}), dict(meta or {}))


def _file(step: int) -> str:
    return f"step-{step:07d}"


def save_series(path: str | Path, series: CheckpointSeries, *, overwrite: bool = True) -> Path:
    """Write the series as one artifact (see the module docstring); returns its path."""
    series = make_series(series.steps, series.states, config=series.config, meta=series.meta)
    return save_artifact(path, kind=SERIES_KIND, config={**series.config, "steps": list(series.steps)},
                         tensors={_file(s): st for s, st in zip(series.steps, series.states)}, meta=series.meta,
                         overwrite=overwrite)


def load_series(path: str | Path) -> CheckpointSeries:
    """Read and validate a series artifact (checksums, one file per step, equal shapes)."""
    art = load_artifact(path, kind=SERIES_KIND)
    steps = art.config.get("steps")
    if not isinstance(steps, list):
        raise ArtifactError(f"{path}: the series manifest lacks its list of steps")
    missing = [s for s in steps if _file(s) not in art.tensors]
    if missing:
        raise ArtifactError(f"{path}: checkpoint files for steps {missing} are missing")
    config = {k: v for k, v in art.config.items() if k != "steps"}
    try:
        return make_series(steps, [art.tensors[_file(s)] for s in steps], config=config, meta=art.meta)
    except ValueError as e:
        raise ArtifactError(f"{path}: {e}") from None


def train_series(
    model: nn.Module, world: Any, cfg: Any, path: str | Path, *, steps: Sequence[int],
    world_name: str | None = None, on_eval: Callable[[dict[str, float]], None] | None = None,
) -> CheckpointSeries:
    """Train ``model`` on ``world`` with ``cfg`` (a :class:`assay.models.train.TrainConfig`), saving the
    weights at ``steps`` (and at the end), and write the series artifact at ``path``.

    An interrupted call (killed, or an exception from ``on_eval``) leaves its checkpoints in
    ``.partial-<name>`` next to ``path``; calling again with the same arguments resumes from the last one
    and produces the identical series. ``model`` must be freshly initialised the same way each time.
    """
    from assay.models.train import CHECKPOINT_KIND, latest_checkpoint, train

    path = Path(path)
    wanted = sorted(set(int(s) for s in steps) | {cfg.steps})
    partial = path.parent / f".partial-{path.name}"
    train(model, world, cfg, checkpoint_dir=partial, resume=latest_checkpoint(partial), checkpoint_steps=wanted,
          on_eval=on_eval)
    states = []
    for s in wanted:
        states.append(load_artifact(partial / _file(s), kind=CHECKPOINT_KIND).tensors["model"])
    last = load_artifact(partial / _file(cfg.steps), kind=CHECKPOINT_KIND)
    world_cfg = getattr(world, "config", None)
    config = {"model": to_dict(model.config) if hasattr(model, "config") else None, "train": to_dict(cfg),
              "world": to_dict(world_cfg) if world_cfg is not None else None, "world_name": world_name}
    series = make_series(wanted, states, config=config,
                         meta={"losses": last.meta["losses"], "history": last.meta["history"]})
    save_series(path, series)
    shutil.rmtree(partial, ignore_errors=True)
    return series


def build_model(series: CheckpointSeries) -> nn.Module:
    """An :class:`assay.models.transformer.Transformer` of the series's model config (weights not loaded)."""
    from assay.models.transformer import Transformer, TransformerConfig
    from assay.worlds.base import make_generator

    cfg = series.config.get("model")
    if not cfg:
        raise ValueError("this series records no transformer config; pass the model to evaluate it in (model=...)")
    return Transformer(TransformerConfig(**cfg), generator=make_generator(0))


@torch.no_grad()
def map_series(
    series: CheckpointSeries, fn: Callable[[nn.Module], Any], *, model: nn.Module | None = None,
) -> list[tuple[int, Any]]:
    """``[(step, fn(model at step)), …]`` over every checkpoint, the model in eval mode.

    ``model`` is the module each checkpoint is loaded into (default: :func:`build_model`)."""
    vessel = model if model is not None else build_model(series)
    check_same_architecture(dict(vessel.state_dict()), series.states[0], names=("the model", "the series"))
    was_training = vessel.training
    vessel.eval()
    out = []
    try:
        for step, state in zip(series.steps, series.states):
            vessel.load_state_dict(state)
            out.append((step, fn(vessel)))
    finally:
        vessel.train(was_training)
    return out


def evaluate_series(
    series: CheckpointSeries, metric_fn: Callable[[nn.Module], float], *, model: nn.Module | None = None,
) -> list[tuple[int, float]]:
    """The curve ``[(step, metric_fn(model at step)), …]`` of a scalar metric (see :func:`map_series`)."""
    return [(step, float(v)) for step, v in map_series(series, metric_fn, model=model)]
