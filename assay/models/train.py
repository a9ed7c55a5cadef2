"""Training loop for tiny sequence models on worlds: AdamW, warmup + cosine, exact resume.

Optimiser: AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"), weight decay
on matrices only (as in nanoGPT); gradient-norm clipping; learning rate at update ``s`` (0-based)::

    lr(s) = lr · (s + 1) / warmup                                        for s < warmup
    lr(s) = min_lr + ½ (lr − min_lr) (1 + cos(π (s − warmup) / (steps − warmup)))   otherwise

(the cosine schedule of Loshchilov & Hutter 2017, "SGDR"). The loss is next-token cross-entropy
over positions whose target is not -100 (or, for a classifier's logits ``[n, C]`` with class ids
``[n]``, plain cross-entropy) — unless the world gives its own ``training_loss(logits, batch)``
(e.g. a squared error on real values read from the logits; :func:`batch_loss`).

Data come from ``world.sample(batch_size, generator=g)`` (or ``world.pack(batch_size, context,
generator=g)`` with ``TrainConfig.pack``; or ``world.train_batch(step, batch_size, generator=g)`` for
a world whose training stream is fixed step by step, such as a planted-contamination world) with
``g`` seeded from ``TrainConfig.seed``;
the evaluation batch comes from a second generator (seed + 1) drawn once, so evaluation never
disturbs the training stream. A checkpoint (an assay artifact of kind ``"train.checkpoint"``)
holds the model weights, the AdamW state, the data generator's state, the step and the loss
history, so ``train(..., resume=ckpt)`` continues **bit for bit** as if never interrupted (on the
same machine and thread count). Dropout, if any, draws its masks from a generator seeded per step
and passed as ``model(inputs, generator=g)`` (as :class:`assay.models.transformer.Transformer`
accepts), so the global RNG is never touched; a model with active dropout whose ``forward`` takes no
``generator`` is refused.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from assay.artifact import ArtifactError, load_artifact, save_artifact
from assay.config import ConfigError, to_dict
from assay.worlds.base import Batch, make_generator

__all__ = ["TrainConfig", "TrainResult", "train", "lr_at", "sequence_loss", "batch_loss", "latest_checkpoint", "batch_sampler"]

CHECKPOINT_KIND = "train.checkpoint"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train a tiny sequence model on a world."""

    steps: int = 3000
    """Number of optimiser updates."""
    batch_size: int = 64
    """Sequences per update."""
    lr: float = 1e-3
    """Peak learning rate (reached at the end of warmup)."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to weight matrices and embeddings only."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay."""
    warmup: int = 100
    """Updates of linear warmup from 0 to lr."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value; None disables clipping."""
    eval_every: int | None = 250
    """Evaluate on the held-out batch every this many updates (and at the end); None: only at the end."""
    eval_size: int = 512
    """Number of held-out sequences for evaluation."""
    checkpoint_every: int | None = None
    """Save a checkpoint every this many updates (needs a checkpoint folder); None: never."""
    seed: int = 0
    """Seed of the training data stream (the held-out batch uses seed + 1)."""
    pack: bool = False
    """Train on ``world.pack(batch_size, context)`` rows (documents joined up to the model context)
    instead of ``world.sample(batch_size)`` (one padded document per row)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        if self.warmup < 0:
            raise ConfigError(f"TrainConfig.warmup must be >= 0, got {self.warmup}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"TrainConfig needs lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        for name in ("eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer or None (never), got {v}")


class TrainResult(NamedTuple):
    """What :func:`train` returns."""

    model: nn.Module
    """The trained model (in eval mode), the same object that was passed in."""
    step: int
    """Number of updates done in total (including those before a resume)."""
    losses: tuple[float, ...]
    """Training loss of every update, from step 1."""
    history: tuple[dict[str, float], ...]
    """One entry per evaluation: ``step``, ``eval_loss`` and the world's task metrics."""
    metrics: dict[str, float]
    """The last evaluation's entry."""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for update ``step`` (0-based): linear warmup, then cosine decay to min_lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def next_token_targets(inputs: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Targets for plain language modelling: the next input token, -100 at padding and the end."""
    targets = torch.full_like(inputs, -100)
    targets[:, :-1] = inputs[:, 1:]
    targets[targets == pad_id] = -100
    return targets


def batch_targets(batch: Batch, world: Any) -> torch.Tensor:
    """The batch's targets, or next-token targets when the world gives none."""
    if batch.targets is not None:
        return batch.targets
    return next_token_targets(batch.inputs, getattr(world, "pad_id", -100))


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over positions with a target (targets == -100 are ignored): logits ``[n, T, V]``
    with targets ``[n, T]``, or a classifier's logits ``[n, C]`` with class ids ``[n]``."""
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=-100)


def batch_loss(logits: torch.Tensor, batch: Batch, world: Any) -> torch.Tensor:
    """The loss trained and reported as ``eval_loss``: ``world.training_loss(logits, batch)`` when the world
    has one that is not None, else :func:`sequence_loss` on the batch's targets."""
    own = getattr(world, "training_loss", None)
    return own(logits, batch) if own is not None else sequence_loss(logits, batch_targets(batch, world))


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)


def _flat_optim_state(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{idx}.{key}"] = torch.as_tensor(value).clone()
    return out


def _load_optim_state(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in flat.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``folder`` (``step-XXXXXXX``), or None."""
    folder = Path(folder)
    found = sorted(folder.glob("step-*")) if folder.is_dir() else []
    found = [p for p in found if (p / "config.json").is_file()]
    return found[-1] if found else None


def _save_checkpoint(folder: Path, model, world, cfg, opt, g, step, losses, history) -> Path:
    return save_artifact(
        folder / f"step-{step:07d}",
        kind=CHECKPOINT_KIND,
        config={"model": _config_dict(model), "train": to_dict(cfg), "world": _config_dict(world)},
        tensors={"model": model.state_dict(), "optim": _flat_optim_state(opt), "rng": {"data": g.get_state()}},
        meta={"step": step, "losses": list(losses), "history": list(history), "world": type(world).__name__},
    )


def _config_dict(obj: Any) -> dict[str, Any] | None:
    cfg = getattr(obj, "config", None)
    try:
        return to_dict(cfg)
    except TypeError:
        return None


@torch.no_grad()
def evaluate(model: nn.Module, world: Any, batch: Batch, *, chunk: int = 256) -> dict[str, float]:
    """Eval loss and the world's task metrics (``world.evaluate(logits, batch)``) on ``batch``."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(batch.inputs[i : i + chunk]) for i in range(0, len(batch), chunk)])
    model.train(was_training)
    out = {"eval_loss": float(batch_loss(logits, batch, world))}
    if hasattr(world, "evaluate"):
        out.update({k: float(v) for k, v in world.evaluate(logits, batch).items()})
    return out


def batch_sampler(model: nn.Module, world: Any, cfg: TrainConfig) -> Callable[[int, torch.Generator], Batch]:
    """``(n, generator) -> Batch``: packed rows of the model's context, or plain padded samples (the
    evaluation batch, and the training batches of a world without ``train_batch``)."""
    if not cfg.pack:
        return lambda n, g: world.sample(n, generator=g)
    if not hasattr(world, "pack"):
        raise ConfigError(f"TrainConfig.pack=True but world {type(world).__name__} has no pack(n, length) method")
    context = getattr(getattr(model, "config", None), "context", None)
    if context is None:
        raise ConfigError("TrainConfig.pack=True needs a model with config.context (the packed row length)")
    return lambda n, g: world.pack(n, context, generator=g)


def _step_forward(model: nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``(inputs, seed) -> logits``, with dropout masks drawn from a generator seeded with ``seed``."""
    if "generator" in inspect.signature(model.forward).parameters:
        return lambda inputs, seed: model(inputs, generator=make_generator(seed))
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        raise ConfigError(
            f"{type(model).__name__} has dropout but its forward takes no generator=, so its masks would come "
            "from the global RNG and training could not resume exactly; set dropout to 0 or give forward a "
            "generator= keyword (as assay.models.transformer.Transformer has)"
        )
    return lambda inputs, seed: model(inputs)


def _headline(world: Any, metrics: dict[str, float]) -> str:
    acceptance = getattr(world, "acceptance", None)
    names = [acceptance[0]] if acceptance else [k for k in metrics if k != "eval_loss"][:1]
    return " ".join(f"{n}={metrics[n]:.4f}" for n in names if n in metrics)


def train(
    model: nn.Module,
    world: Any,
    cfg: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = False,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    checkpoint_steps: Collection[int] = (),
) -> TrainResult:
    """Train ``model`` (token ids → logits) on batches from ``world``; see the module docstring.

    ``resume`` is a checkpoint folder written by an earlier call with the same configs; training
    then continues from its step. ``checkpoint_dir`` receives ``step-XXXXXXX`` artifacts every
    ``cfg.checkpoint_every`` updates, at every step in ``checkpoint_steps`` (0 = the initial weights;
    e.g. log-spaced steps for a checkpoint series) and at the end.
    """
    if cfg.checkpoint_every is not None and checkpoint_dir is None:
        raise ConfigError("TrainConfig.checkpoint_every is set but no checkpoint_dir was given")
    save_at = set(checkpoint_steps)
    if save_at and checkpoint_dir is None:
        raise ConfigError("checkpoint_steps were given but no checkpoint_dir")
    bad = sorted(s for s in save_at if not 0 <= s <= cfg.steps)
    if bad:
        raise ConfigError(f"checkpoint_steps {bad} lie outside 0..{cfg.steps} (TrainConfig.steps)")
    opt = _optimizer(model, cfg)
    g = make_generator(cfg.seed)
    draw = batch_sampler(model, world, cfg)
    forward = _step_forward(model)
    eval_batch = draw(cfg.eval_size, make_generator(cfg.seed + 1))
    step, losses, history = 0, [], []
    if resume is not None:
        ck = load_artifact(resume, kind=CHECKPOINT_KIND)
        if ck.config["model"] != _config_dict(model):
            raise ArtifactError(f"checkpoint {resume} was written for model config {ck.config['model']}, "
                                f"not {_config_dict(model)}")
        saved = {k: v for k, v in ck.config["train"].items() if k not in ("steps", "eval_every", "checkpoint_every")}
        now = {k: v for k, v in to_dict(cfg).items() if k in saved}
        if saved != now:
            raise ArtifactError(f"checkpoint {resume} was trained with {saved}, which differs from {now}")
        model.load_state_dict(ck.tensors["model"])
        _load_optim_state(opt, ck.tensors["optim"])
        g.set_state(ck.tensors["rng"]["data"])
        step, losses, history = ck.meta["step"], list(ck.meta["losses"]), list(ck.meta["history"])
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None and step == 0 and 0 in save_at:
        _save_checkpoint(folder, model, world, cfg, opt, g, step, losses, history)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[status]}")]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=step, status="")
        while step < cfg.steps:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            batch = (world.train_batch(step, cfg.batch_size, generator=g) if hasattr(world, "train_batch")
                     else draw(cfg.batch_size, g))
            loss = batch_loss(forward(batch.inputs, cfg.seed * 1_000_003 + step), batch, world)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            losses.append(loss.item())
            if step == cfg.steps or (cfg.eval_every is not None and step % cfg.eval_every == 0):
                entry = {"step": float(step), **evaluate(model, world, eval_batch)}
                history.append(entry)
                if on_eval is not None:
                    on_eval(entry)
                bar.update(task, status=f"loss={entry['eval_loss']:.4f} {_headline(world, entry)}")
            elif step % 10 == 0:
                bar.update(task, status=f"loss={losses[-1]:.4f}")
            bar.update(task, completed=step)
            if folder is not None and (step == cfg.steps or step in save_at
                                       or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                _save_checkpoint(folder, model, world, cfg, opt, g, step, losses, history)
    model.eval()
    metrics = history[-1] if history else {}
    return TrainResult(model, step, tuple(losses), tuple(history), dict(metrics))
