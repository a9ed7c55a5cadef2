"""Sparsity schedules (step → target sparsity) and a resumable prune-and-fine-tune loop.

- **one-shot**: 0 before step t₀, s_f from t₀ on.
- **linear** (Torch-Pruning's ``linear_scheduler``): n mask updates Δt steps apart from t₀;
  after update k (k = 0..n) the target is s_i + (s_f − s_i)·k/n.
- **cubic** — Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of pruning for
  model compression" (arXiv 1710.01878), eq. 1:
  s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(nΔt))³ for t ∈ {t₀, t₀ + Δt, …, t₀ + nΔt}; the mask is
  updated every Δt steps and held in between (so t is the last update step ≤ the current step).
- **cyclical** — Srinivas, Kuzmin, Nagel, van Baalen, Skliar, Blankevoort 2022, "Cyclical Pruning for
  Sparse Neural Networks" (arXiv 2202.01290): C cycles of ``cycle_steps`` steps each; within cycle c a
  cubic ramp from s_start(c) to s_f over the first ``ramp`` fraction of the cycle, then held at s_f;
  s_start(1) = 0 and s_start(c > 1) = s_restart (default ½·s_f); after the last cycle the mask is
  fixed (fine-tuning). The mask is re-projected at every step of every cycle, so weights pruned in one
  cycle can regrow in the next (the paper's "time-varying projected gradient descent"; the exact
  schedule is not published — these are assay's defaults, spec ``pruning.md`` §3). With C = 1 it is
  the cubic schedule with t₀ = 0, Δt = 1, n = round(ramp · cycle_steps).

:func:`prune_and_finetune` trains the dense shadow weights (:mod:`assay.pruning.masks`) with Adam,
re-projecting by magnitude (:mod:`assay.pruning.magnitude`) or LAMP scores of the dense weights at each
mask-update step of the schedule;
gradients reach masked weights unless ``regrow=False``. It checkpoints atomically (an assay artifact
of kind ``"pruning.checkpoint"``: weights, masks, Adam state, the data generator's state, step and
losses) and, started again on the same ``out_dir``, resumes from the latest checkpoint to bit-identical
weights (same machine and thread count).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from assay.artifact import ArtifactError, load_artifact, save_artifact
from assay.config import ConfigError, check_choice, check_int_fields, to_dict
from assay.models.train import _flat_optim_state, _load_optim_state, latest_checkpoint
from assay.pruning.importance import lamp_scores
from assay.pruning.magnitude import magnitude_prune, prune_lowest
from assay.pruning.masks import (
    SparsityReport,
    apply_masks,
    check_sparsity,
    get_masks,
    is_masked,
    prunable_layers,
    shadow_weight,
    sparsity,
)

__all__ = ["one_shot", "linear", "cubic", "cyclical", "ScheduleConfig", "target_sparsity", "is_update_step",
           "last_update_step", "PruneConfig", "PruneResult", "prune_and_finetune"]

CHECKPOINT_KIND = "pruning.checkpoint"


def one_shot(step: int, *, final: float, start: int = 0) -> float:
    """0 before ``start``, ``final`` from then on."""
    return final if step >= start else 0.0


def _update_index(step: int, start: int, n_updates: int, interval: int) -> int | None:
    """Index k ∈ [0, n] of the last mask update at or before ``step`` (None before ``start``)."""
    if step < start:
        return None
    return min((step - start) // interval, n_updates)


def linear(step: int, *, final: float, n_updates: int, initial: float = 0.0, start: int = 0, interval: int = 1
           ) -> float:
    """s_i + (s_f − s_i)·k/n after the k-th of n updates Δt = ``interval`` steps apart from ``start``
    (0 before ``start``)."""
    k = _update_index(step, start, n_updates, interval)
    return 0.0 if k is None else initial + (final - initial) * k / n_updates


def cubic(step: int, *, final: float, n_updates: int, initial: float = 0.0, start: int = 0, interval: int = 1
          ) -> float:
    """Zhu & Gupta's s_f + (s_i − s_f)(1 − k/n)³ after the k-th of n updates (0 before ``start``)."""
    k = _update_index(step, start, n_updates, interval)
    return 0.0 if k is None else final + (initial - final) * (1.0 - k / n_updates) ** 3


def _ramp_steps(cycle_steps: int, ramp: float) -> int:
    return max(1, round(ramp * cycle_steps))


def cyclical(step: int, *, final: float, cycle_steps: int, cycles: int = 3, restart: float | None = None,
             ramp: float = 0.75) -> float:
    """Cyclical schedule: in cycle c (0-based) a cubic ramp from 0 (c = 0) or ``restart`` (default
    ½·final) to ``final`` over round(ramp · cycle_steps) steps, then ``final``; ``final`` after the cycles."""
    if step >= cycles * cycle_steps:
        return final
    c, q = divmod(step, cycle_steps)
    s0 = 0.0 if c == 0 else (0.5 * final if restart is None else restart)
    return cubic(q, final=final, initial=s0, n_updates=_ramp_steps(cycle_steps, ramp))


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """Which sparsity schedule, and its constants."""

    kind: Literal["one_shot", "linear", "cubic", "cyclical"] = "cubic"
    """The schedule: one-shot, linear, cubic (Zhu & Gupta 2017) or cyclical (Srinivas et al. 2022)."""
    final_sparsity: float = 0.9
    """s_f, the sparsity reached at the end, in [0, 1)."""
    initial_sparsity: float = 0.0
    """s_i, the sparsity of the first update (linear and cubic)."""
    start: int = 0
    """t₀, the step of the first mask update (one-shot, linear, cubic)."""
    n_updates: int = 10
    """n, the number of mask updates after the first (linear and cubic)."""
    interval: int = 1
    """Δt, steps between mask updates (linear and cubic)."""
    cycles: int = 3
    """C, the number of cycles (cyclical)."""
    cycle_steps: int = 100
    """Steps per cycle (cyclical)."""
    restart_sparsity: float | None = None
    """s_restart, where cycles after the first start (cyclical); None means ½·final_sparsity."""
    ramp: float = 0.75
    """Fraction of each cycle spent ramping up to s_f (cyclical), in (0, 1]."""

    def __post_init__(self) -> None:
        check_int_fields(self)
        check_choice("ScheduleConfig.kind", self.kind, ("one_shot", "linear", "cubic", "cyclical"))
        check_sparsity(self.final_sparsity, "ScheduleConfig.final_sparsity")
        check_sparsity(self.initial_sparsity, "ScheduleConfig.initial_sparsity")
        if self.restart_sparsity is not None:
            check_sparsity(self.restart_sparsity, "ScheduleConfig.restart_sparsity")
        if self.start < 0:
            raise ConfigError(f"ScheduleConfig.start must be >= 0, got {self.start}")
        for name in ("n_updates", "interval", "cycles", "cycle_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ScheduleConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.ramp <= 1.0:
            raise ConfigError(f"ScheduleConfig.ramp must lie in (0, 1], got {self.ramp}")


def target_sparsity(config: ScheduleConfig, step: int) -> float:
    """The schedule's target sparsity at ``step`` (0-based)."""
    if config.kind == "one_shot":
        return one_shot(step, final=config.final_sparsity, start=config.start)
    if config.kind == "cyclical":
        return cyclical(step, final=config.final_sparsity, cycle_steps=config.cycle_steps, cycles=config.cycles,
                        restart=config.restart_sparsity, ramp=config.ramp)
    fn = linear if config.kind == "linear" else cubic
    return fn(step, final=config.final_sparsity, initial=config.initial_sparsity, n_updates=config.n_updates,
              start=config.start, interval=config.interval)


def last_update_step(config: ScheduleConfig) -> int:
    """The last step at which the mask changes (after it the mask is fixed)."""
    if config.kind == "one_shot":
        return config.start
    if config.kind == "cyclical":
        return config.cycles * config.cycle_steps - 1
    return config.start + config.n_updates * config.interval


def is_update_step(config: ScheduleConfig, step: int) -> bool:
    """Whether the mask is re-projected at ``step``: every step of every cycle (cyclical), each update
    step t₀ + kΔt, k ≤ n (linear, cubic), or t₀ (one-shot)."""
    if config.kind == "cyclical":
        return step <= last_update_step(config)
    if config.kind == "one_shot":
        return step == config.start
    return config.start <= step <= last_update_step(config) and (step - config.start) % config.interval == 0


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """Pruning with fine-tuning: the schedule, what is pruned, and the training budget."""

    schedule: ScheduleConfig = ScheduleConfig()
    """The sparsity schedule."""
    steps: int = 300
    """Optimiser updates in total (pruning ramp plus fine-tuning)."""
    batch_size: int = 64
    """Examples per update, drawn with replacement from the data."""
    lr: float = 1e-3
    """Adam learning rate."""
    rule: Literal["magnitude", "lamp"] = "magnitude"
    """Projection score of the dense weights: |θ|, or LAMP (Lee et al. 2021; differs from |θ| only globally)."""
    scope: Literal["layer", "global"] = "global"
    """Projection per layer or with one global threshold."""
    layers: tuple[str, ...] | None = None
    """Layers to prune; None means every prunable layer except the first and the last."""
    regrow: bool = True
    """Let gradients reach masked weights (needed for regrowth); False gives them zero gradient."""
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    """Training loss: cross-entropy against class ids, or mean squared error against float targets."""
    checkpoint_every: int = 50
    """Save a checkpoint every this many updates (and at the end)."""

    def __post_init__(self) -> None:
        check_int_fields(self)
        check_choice("PruneConfig.rule", self.rule, ("magnitude", "lamp"))
        check_choice("PruneConfig.scope", self.scope, ("layer", "global"))
        check_choice("PruneConfig.loss", self.loss, ("cross_entropy", "mse"))
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PruneConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"PruneConfig.lr must be > 0, got {self.lr}")
        if last_update_step(self.schedule) >= self.steps:
            raise ConfigError(f"the {self.schedule.kind} schedule updates the mask until step "
                              f"{last_update_step(self.schedule)}, but PruneConfig.steps={self.steps} ends before; "
                              "raise steps or shorten the schedule")


class PruneResult(NamedTuple):
    """What :func:`prune_and_finetune` returns."""

    model: nn.Module
    """The pruned model (still masked; call ``assay.pruning.masks.materialize`` to bake the masks in)."""
    step: int
    """Updates done in total, including those before a resume."""
    losses: tuple[float, ...]
    """Training loss of every update, from step 1."""
    masks: dict[str, torch.Tensor]
    """The final keep-masks of the pruned layers."""
    sparsity: SparsityReport
    """Exact sparsity of the pruned layers at the end."""


def _save(folder: Path, model: nn.Module, config: PruneConfig, opt, generator, step: int, losses: list[float]) -> None:
    save_artifact(folder / f"step-{step:07d}", kind=CHECKPOINT_KIND, config=config,
                  tensors={"model": model.state_dict(), "optim": _flat_optim_state(opt),
                           "rng": {"data": generator.get_state()}},
                  meta={"step": step, "losses": losses})
    for old in folder.glob("step-*"):
        if old.name != f"step-{step:07d}":
            shutil.rmtree(old, ignore_errors=True)


def _project(model: nn.Module, names: Sequence[str], s: float, config: PruneConfig) -> None:
    """Re-mask ``names`` at sparsity ``s`` from their dense shadow weights by the config's rule."""
    if config.rule == "magnitude":
        magnitude_prune(model, s, scope=config.scope, layers=names, regrow=config.regrow)
        return
    scores = lamp_scores({n: shadow_weight(model, n) for n in names})
    apply_masks(model, prune_lowest(scores, s, scope=config.scope), regrow=config.regrow)


def prune_and_finetune(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], config: PruneConfig, *, out_dir: str | Path,
    generator: torch.Generator, on_step: Callable[[int, float], None] | None = None,
) -> PruneResult:
    """Prune ``model`` in place on the schedule while training it on ``data = (inputs, targets)``.

    ``out_dir`` holds the checkpoints; if it already holds one written with the same config, the run
    resumes from it (the model's weights, the optimiser and ``generator`` are restored). ``on_step(step,
    loss)`` is called after every update (after any checkpoint of that step)."""
    inputs, targets = data
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(f"data must be (inputs, targets) of the same non-zero length, got {len(inputs)} and "
                         f"{len(targets)}")
    names: Sequence[str] = config.layers if config.layers is not None else prunable_layers(model, skip_first_last=True)
    if not names:
        raise ConfigError("no layers to prune: name them in PruneConfig.layers")
    apply_masks(model, {n: torch.ones_like(model.get_submodule(n).weight, dtype=torch.bool)
                        for n in names if not is_masked(model.get_submodule(n))}, regrow=config.regrow)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    folder = Path(out_dir)
    step, losses = 0, []
    ck_path = latest_checkpoint(folder)
    if ck_path is not None:
        ck = load_artifact(ck_path, kind=CHECKPOINT_KIND)
        if ck.config != to_dict(config):
            raise ArtifactError(f"checkpoint {ck_path} was written with config {ck.config}, not {to_dict(config)}; "
                                "use another out_dir or the same config")
        model.load_state_dict(ck.tensors["model"])
        _load_optim_state(opt, ck.tensors["optim"])
        generator.set_state(ck.tensors["rng"]["data"])
        step, losses = ck.meta["step"], list(ck.meta["losses"])
    loss_fn = F.cross_entropy if config.loss == "cross_entropy" else F.mse_loss
    model.train()
    while step < config.steps:
        if is_update_step(config.schedule, step):
            _project(model, names, target_sparsity(config.schedule, step), config)
        idx = torch.randint(len(inputs), (config.batch_size,), generator=generator)
        loss = loss_fn(model(inputs[idx]), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"the training loss is {losses[-1]} at step {step}; lower PruneConfig.lr")
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save(folder, model, config, opt, generator, step, losses)
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return PruneResult(model, step, tuple(losses), {n: m for n, m in get_masks(model).items() if n in names},
                       sparsity(model, names))
