"""The model zoo: the default tiny transformer of each sequence world, trained once and cached.

``world_model("dyck")`` builds the world from the registry (:mod:`assay.worlds.registry`), reads
its ``reference_model()`` settings (a dict whose keys are :class:`TransformerConfig` and
:class:`TrainConfig` fields, plus ``betas``), trains the model with :func:`assay.models.train.train`
on first use and saves it as an artifact (kind ``"world_model"``) under
``$ASSAY_CACHE/world_models/<name>-<key>``, where::

    key = sha256(json(world name, world class, world config, model config, train config, seed,
                      assay version))[:16]

so any change of configuration, seed or library version trains a fresh model, and later calls
load the weights in well under a second. Saving is atomic (:func:`assay.artifact.save_artifact`);
two processes training the same key at once both finish and the first one to save wins. Training
writes checkpoints to a ``.partial-<key>`` folder and resumes from it after an interruption.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from assay import __version__
from assay.artifact import ArtifactError, load_artifact, save_artifact
from assay.config import ConfigError, to_dict
from assay.models.train import TrainConfig, latest_checkpoint, train
from assay.models.transformer import Transformer, TransformerConfig
from assay.worlds.base import make_generator

__all__ = ["WorldModel", "world_model", "reference_configs", "cache_key", "cache_root"]

KIND = "world_model"


class WorldModel(NamedTuple):
    """A trained default model of a world."""

    model: Transformer
    """The trained transformer, in eval mode."""
    world: Any
    """The world it was trained on."""
    metrics: dict[str, float]
    """Held-out metrics at the end of training (``eval_loss`` and the world's task metrics)."""
    path: Path
    """The cached artifact folder."""
    trained: bool
    """True when this call trained the model, False when it was loaded from the cache."""
    train_config: TrainConfig
    """How it was trained (also how its training batches are drawn: :func:`assay.models.train.batch_sampler`)."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$ASSAY_CACHE``, else ``~/.cache/assay`` — plus ``world_models``."""
    base = cache_dir or os.environ.get("ASSAY_CACHE") or Path.home() / ".cache" / "assay"
    return Path(base).expanduser() / "world_models"


def _world_dict(world: Any) -> dict[str, Any]:
    cfg = getattr(world, "config", None)
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise ConfigError(f"world {type(world).__name__} needs a dataclass .config to be cached by the zoo")
    return to_dict(cfg)


def reference_configs(
    world: Any,
    *,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[TransformerConfig, TrainConfig]:
    """The model and training configs of ``world``'s default tiny model, with overrides applied.

    ``vocab_size`` comes from the world's vocabulary; the training seed defaults to ``seed``.
    """
    ref = world.reference_model() if hasattr(world, "reference_model") else {}
    settings = to_dict(ref) if dataclasses.is_dataclass(ref) else dict(ref)
    settings.update(model_overrides or {})
    settings.update(train_overrides or {})
    if "betas" in settings:
        settings["beta1"], settings["beta2"] = (float(b) for b in settings.pop("betas"))
    model_fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - model_fields - train_fields)
    if unknown:
        raise ConfigError(
            f"unknown model/training setting(s) {', '.join(unknown)} for world {type(world).__name__}; "
            f"model settings: {', '.join(sorted(model_fields))}; training settings: {', '.join(sorted(train_fields))}"
        )
    model_kw = {k: v for k, v in settings.items() if k in model_fields}
    model_kw.setdefault("vocab_size", len(world.vocab))
    train_kw = {k: v for k, v in settings.items() if k in train_fields}
    train_kw.setdefault("seed", seed)
    train_cfg = TrainConfig(**train_kw)
    if train_cfg.checkpoint_every is None:  # checkpoints let an interrupted first use resume
        train_cfg = dataclasses.replace(train_cfg, checkpoint_every=max(100, train_cfg.steps // 5))
    return TransformerConfig(**model_kw), train_cfg


def _model_key(cfg: TransformerConfig) -> dict[str, Any]:
    """The model config as keyed: the options ``norm``, ``act`` and ``causal`` only when they differ
    from their defaults, so models cached before those options existed keep their keys."""
    d = to_dict(cfg)
    for f in dataclasses.fields(TransformerConfig):
        if f.name in ("norm", "act", "causal") and d[f.name] == f.default:
            del d[f.name]
    return d


def cache_key(name: str, world: Any, model_cfg: TransformerConfig, train_cfg: TrainConfig, seed: int) -> str:
    """16 hex digits identifying a trained model (see the module docstring)."""
    doc = {"world": name, "world_class": f"{type(world).__module__}.{type(world).__qualname__}",
           "world_config": _world_dict(world), "model": _model_key(model_cfg), "train": to_dict(train_cfg),
           "seed": int(seed), "version": __version__}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _build_world(world: str | Any, world_overrides: dict[str, Any] | None) -> tuple[str, Any]:
    if not isinstance(world, str):
        if world_overrides:
            raise ConfigError("world_overrides only apply when the world is given by name")
        return type(world).__name__.lower(), world
    from assay.worlds import registry

    try:
        return world, registry.make(world, **(world_overrides or {}))
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None


def _load(path: Path, world: Any) -> tuple[Transformer, dict[str, float]]:
    art = load_artifact(path, kind=KIND)
    model = Transformer(TransformerConfig(**art.config["model"]), generator=make_generator(0))  # overwritten
    model.load_state_dict(art.tensors["weights"])
    return model.eval(), dict(art.meta.get("metrics", {}))


def world_model(
    world: str | Any,
    *,
    world_overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    retrain: bool = False,
) -> WorldModel:
    """The default tiny model of ``world`` (a registry name, or a world object), trained on first use.

    ``world_overrides`` change fields of the world's config; ``model_overrides`` and
    ``train_overrides`` change :class:`TransformerConfig` / :class:`TrainConfig` fields of the
    world's ``reference_model()``. ``seed`` seeds the initial weights and (unless overridden) the
    data stream. ``retrain=True`` ignores a cached model and trains again.
    """
    name, w = _build_world(world, world_overrides)
    model_cfg, train_cfg = reference_configs(w, model_overrides=model_overrides,
                                             train_overrides=train_overrides, seed=seed)
    key = cache_key(name, w, model_cfg, train_cfg, seed)
    root = cache_root(cache_dir)
    path = root / f"{name}-{key}"
    if path.is_dir() and not retrain:
        try:
            model, metrics = _load(path, w)
            return WorldModel(model, w, metrics, path, False, train_cfg)
        except ArtifactError:
            pass  # corrupted or half-deleted cache entry: train again
    partial = root / f".partial-{name}-{key}"
    if retrain:
        shutil.rmtree(partial, ignore_errors=True)
    resume = latest_checkpoint(partial)
    model = Transformer(model_cfg, generator=make_generator(seed))
    start = time.perf_counter()
    res = train(model, w, train_cfg, checkpoint_dir=partial, resume=resume, progress=progress)
    seconds = time.perf_counter() - start
    meta = {"metrics": res.metrics, "history": list(res.history), "train_seconds": seconds,
            "torch_threads": torch.get_num_threads(), "n_params": model.n_params(),
            "acceptance": list(getattr(w, "acceptance", ()) or ())}
    config = {"world_name": name, "world": _world_dict(w), "model": to_dict(model_cfg),
              "train": to_dict(train_cfg), "seed": seed}
    try:
        save_artifact(path, kind=KIND, config=config, tensors=model.state_dict(), meta=meta, overwrite=retrain)
    except (ArtifactError, OSError):
        if not path.is_dir():  # not a lost race with another process: a real failure
            raise
    shutil.rmtree(partial, ignore_errors=True)
    return WorldModel(model.eval(), w, dict(res.metrics), path, True, train_cfg)
