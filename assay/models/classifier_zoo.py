"""Default classifiers of the image and tabular worlds, trained once and cached.

``world_classifier("digits")`` trains :class:`~assay.models.cnn.SmallCNN` on the signal–distractor
digits world, ``world_classifier("tabular")`` an :class:`~assay.models.mlp.MLP` on the tabular
signal world, each with :func:`~assay.models.fit.fit_classifier`, and caches the weights as an
artifact (kind ``"world_classifier"``) beside the sequence models of :mod:`assay.models.zoo`,
keyed by sha256(world config, recipe, seed, library version). Later calls load in milliseconds.

The digits recipe uses three conv stages with BatchNorm: the composites' random colours and
positions make the two-stage CNN of the spec learn slowly on CPU (measured in
``benchmarks/world_models.py``'s digits row).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from assay import __version__
from assay.artifact import ArtifactError, load_artifact, save_artifact
from assay.config import ConfigError, to_dict
from assay.models.cnn import SmallCNN
from assay.models.fit import accuracy, fit_classifier
from assay.models.mlp import MLP
from assay.models.zoo import cache_root
from assay.worlds.base import make_generator

__all__ = ["ClassifierRecipe", "WorldClassifier", "world_classifier", "RECIPES"]

KIND = "world_classifier"


@dataclass(frozen=True, kw_only=True)
class ClassifierRecipe:
    """How the default classifier of a world is built and trained."""

    n_train: int = 10_000
    """Training examples drawn from the world (train split)."""
    n_test: int = 1_000
    """Held-out examples for the reported accuracy (test split where the world has one)."""
    epochs: int = 8
    """Passes over the training examples."""
    batch_size: int = 64
    """Minibatch size."""
    lr: float = 3e-3
    """AdamW learning rate."""
    hidden: tuple[int, ...] = (16, 32, 64)
    """Conv channels per stage (digits) or hidden widths (tabular)."""

    def __post_init__(self) -> None:
        if min(self.n_train, self.n_test, self.epochs, self.batch_size) <= 0 or self.lr <= 0:
            raise ConfigError("n_train, n_test, epochs, batch_size and lr must all be positive")


RECIPES: dict[str, ClassifierRecipe] = {
    "digits": ClassifierRecipe(),
    "tabular": ClassifierRecipe(n_train=5_000, epochs=20, batch_size=128, lr=1e-3, hidden=(64, 64)),
}


class WorldClassifier(NamedTuple):
    """A trained default classifier of a world."""

    model: nn.Module
    """The classifier in eval mode."""
    world: Any
    """The (train-split) world it was trained on."""
    test_accuracy: float
    """Accuracy on ``recipe.n_test`` held-out examples."""
    path: Path
    """The cached artifact folder."""
    trained: bool
    """True when this call trained the model, False when it came from the cache."""


def _worlds(name: str, world_config: Any) -> tuple[Any, Any, Any]:
    if name == "digits":
        from assay.worlds.digits import DigitsConfig, SignalDistractorDigits

        cfg = world_config or DigitsConfig()
        return cfg, SignalDistractorDigits(replace(cfg, split="train")), SignalDistractorDigits(replace(cfg, split="test"))
    if name == "tabular":
        from assay.worlds.tabular import TabularConfig, TabularSignalWorld

        cfg = world_config or TabularConfig()
        world = TabularSignalWorld(cfg)
        return cfg, world, world
    raise ConfigError(f"no default classifier for world {name!r}; choose one of {', '.join(RECIPES)}")


def _build(name: str, world: Any, recipe: ClassifierRecipe, seed: int) -> nn.Module:
    if name == "digits":
        return SmallCNN(channels=recipe.hidden, batch_norm=True, generator=make_generator(seed))
    return MLP(world.config.d, recipe.hidden, 2, generator=make_generator(seed))


def world_classifier(
    name: str,
    *,
    world_config: Any = None,
    recipe: ClassifierRecipe | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    retrain: bool = False,
) -> WorldClassifier:
    """The default classifier of ``name`` (``"digits"`` or ``"tabular"``), trained on first use."""
    cfg, train_world, test_world = _worlds(name, world_config)
    recipe = recipe or RECIPES[name]
    doc = {"world": name, "world_config": to_dict(cfg), "recipe": to_dict(recipe), "seed": seed,
           "version": __version__}
    key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / f"{name}-classifier-{key}"
    if path.is_dir() and not retrain:
        try:
            art = load_artifact(path, kind=KIND)
            model = _build(name, train_world, recipe, seed)
            model.load_state_dict(art.tensors["weights"])
            return WorldClassifier(model.eval(), train_world, float(art.meta["test_accuracy"]), path, False)
        except (ArtifactError, KeyError, RuntimeError):
            pass  # a corrupted or stale entry: train again
    train = train_world.sample(recipe.n_train, generator=make_generator(seed))
    test = test_world.sample(recipe.n_test, generator=make_generator(seed + 10_000))
    model = _build(name, train_world, recipe, seed)
    start = time.perf_counter()
    fit_classifier(model, train.inputs, train.targets, epochs=recipe.epochs, batch_size=recipe.batch_size,
                   lr=recipe.lr, seed=seed)
    acc = accuracy(model, test.inputs, test.targets)
    meta = {"test_accuracy": acc, "train_seconds": time.perf_counter() - start,
            "torch_threads": torch.get_num_threads()}
    save_artifact(path, kind=KIND, config=doc, tensors=model.state_dict(), meta=meta)
    return WorldClassifier(model, train_world, acc, path, True)
