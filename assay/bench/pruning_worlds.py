"""The worlds of the pruning bench family, each with its trained model and its truth.

- ``sparse_teacher`` — a planted sparse teacher MLP (:mod:`assay.worlds.sparse_teacher`) and a dense
  student of its shape trained on its outputs; the truth is the teacher's support.
- ``redundancy`` — the planted-redundancy MLP (:mod:`assay.models.planted_redundancy`): hidden units that
  are exact, scaled and noisy copies of others; the truth is the planted pairs. No training (it is the
  model to prune); Gaussian inputs for scoring.
- ``digits_mlp`` — the spec's CPU classifier (``pruning.md`` §8: 64→128→64→10) on scikit-learn's 8×8
  digits, its 70/30 split (:func:`assay.worlds.digits.digit_split`); also the state after a few early
  steps, for the gradient-flow claim (Lubana & Dick 2021).

Students are trained with Adam by :func:`train_steps`, batches drawn from a seeded generator.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from assay.config import ConfigError

__all__ = ["WORLD_NAMES", "PreparedPruning", "DigitsMLP", "prepare_world", "train_steps", "task_loss", "digits_mlp"]

WORLD_NAMES = ("sparse_teacher", "redundancy", "digits_mlp")
"""World names of the pruning family."""


class PreparedPruning(NamedTuple):
    """One world at one seed: the trained model, its data and its truth."""

    name: str
    """World name."""
    model: nn.Module
    """The model to prune (eval mode)."""
    init_state: dict[str, torch.Tensor] | None
    """The model's weights at initialisation (pruning at init: SNIP); None when the model was not trained."""
    early_state: dict[str, torch.Tensor] | None
    """Weights after the first ``early_steps`` training steps (digits only)."""
    train: tuple[torch.Tensor, torch.Tensor]
    """Training inputs and targets (class ids, or float targets for a regression world)."""
    test: tuple[torch.Tensor, torch.Tensor]
    """Held-out inputs and targets."""
    loss: str
    """``"cross_entropy"`` or ``"mse"``."""
    truth: Any
    """The world's truth: a SparseTeacherWorld, a RedundancyTruth, or None (digits)."""
    default_sparsity: float
    """Unstructured sparsity when a method gives none (the teacher's true sparsity; 0.9 on digits)."""
    default_share: float | None
    """Share of hidden units removed when a structured method gives none (the planted copies' share)."""


def task_loss(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of a world's targets."""
    return F.cross_entropy if kind == "cross_entropy" else F.mse_loss


def train_steps(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], loss: str, *, steps: int, lr: float,
                batch_size: int, generator: torch.Generator, extra: Callable[[], torch.Tensor] | None = None,
                params: Any = None) -> list[float]:
    """Adam on ``params`` (default: the model's) for ``steps`` minibatches drawn with replacement from
    ``data``; ``extra()`` is added to each batch's loss. Returns the task losses; leaves the model in eval."""
    x, y = data
    fn = task_loss(loss)
    opt = torch.optim.Adam(model.parameters() if params is None else params, lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=generator)
        task = fn(model(x[idx]), y[idx])
        total = task + extra() if extra is not None else task
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(task.item())
    model.eval()
    return losses


def _config(cls: type, params: dict[str, Any], world: str, **fixed: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    unknown = sorted(set(params) - names)
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for world {world!r}; valid: {', '.join(sorted(names))}")
    return cls(**params, **fixed)


class DigitsMLP(NamedTuple):
    """The digits MLP of the pruning spec, trained, with its data."""

    model: nn.Module
    """64→hidden→10 ReLU MLP, eval mode."""
    init_state: dict[str, torch.Tensor]
    """Its weights at initialisation."""
    early_state: dict[str, torch.Tensor] | None
    """Its weights after ``early_steps`` (None if 0)."""
    train: tuple[torch.Tensor, torch.Tensor]
    """Train split: flattened images [n, 64] in [0, 1] and labels."""
    test: tuple[torch.Tensor, torch.Tensor]
    """Test split."""


def digits_mlp(seed: int, *, hidden: tuple[int, ...] = (128, 64), steps: int = 1500, lr: float = 1e-3,
               batch_size: int = 64, early_steps: int = 0) -> DigitsMLP:
    """The 64→hidden→10 ReLU MLP trained ``steps`` Adam steps on the 8×8 digits' train split (70/30)."""
    from assay.models.mlp import MLP
    from assay.worlds.base import make_generator
    from assay.worlds.digits import digit_split

    data = {}
    for split in ("train", "test"):
        images, labels = digit_split(split)
        data[split] = (torch.from_numpy(images).reshape(len(labels), -1), torch.from_numpy(labels))
    model = MLP(64, hidden, 10, generator=make_generator(seed))
    init = copy.deepcopy(model.state_dict())
    g = make_generator(seed + 1)
    early = None
    if early_steps:
        train_steps(model, data["train"], "cross_entropy", steps=early_steps, lr=lr, batch_size=batch_size, generator=g)
        early = copy.deepcopy(model.state_dict())
    train_steps(model, data["train"], "cross_entropy", steps=steps - early_steps, lr=lr, batch_size=batch_size,
                generator=g)
    return DigitsMLP(model, init, early, data["train"], data["test"])


def prepare_world(world: str, seed: int, settings: Any) -> PreparedPruning:
    """Build a world spec's model, data and truth for one seed (module docstring)."""
    from assay.bench.spec import parse_world_spec
    from assay.worlds.base import make_generator

    name, params = parse_world_spec(world, WORLD_NAMES)
    s = settings
    g = make_generator(seed + 1000)
    if name == "sparse_teacher":
        from assay.models.mlp import MLP
        from assay.worlds.sparse_teacher import SparseTeacherConfig, SparseTeacherWorld

        truth = SparseTeacherWorld(_config(SparseTeacherConfig, params, world, seed=seed))
        cfg = truth.config
        train, test = truth.sample(s.n_train, generator=g), truth.sample(s.n_test, generator=g)
        model = MLP(cfg.d_in, cfg.hidden, cfg.d_out, generator=make_generator(seed + 2000))
        init = copy.deepcopy(model.state_dict())
        train_steps(model, (train.inputs, train.targets), "mse", steps=s.train_steps, lr=s.lr,
                    batch_size=s.batch_size, generator=g)
        return PreparedPruning(name, model, init, None, (train.inputs, train.targets), (test.inputs, test.targets),
                               "mse", truth, truth.sparsity, None)
    if name == "redundancy":
        from assay.models.planted_redundancy import PlantedRedundancyConfig, planted_redundancy_mlp

        cfg = _config(PlantedRedundancyConfig, params, world)
        model, truth = planted_redundancy_mlp(cfg, seed=seed)
        x, xt = (torch.randn(n, cfg.d_in, generator=g) for n in (s.n_train, s.n_test))
        with torch.no_grad():
            y, yt = model(x), model(xt)
        share = len(truth.pairs()) / cfg.hidden
        return PreparedPruning(name, model, None, None, (x, y), (xt, yt), "mse", truth, 0.5, share)
    unknown = sorted(set(params) - {"hidden"})
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for world {world!r}; valid: hidden")
    hidden = params.get("hidden", (128, 64))
    hidden = tuple(hidden) if isinstance(hidden, tuple) else (int(hidden),)
    d = digits_mlp(seed, hidden=hidden, steps=s.digits_steps, lr=s.digits_lr, batch_size=64, early_steps=s.early_steps)
    return PreparedPruning(name, d.model, d.init_state, d.early_state, d.train, d.test, "cross_entropy", None, 0.9, 0.5)
