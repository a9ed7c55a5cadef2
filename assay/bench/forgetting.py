"""Forgetting of contamination: accuracy on planted benchmark copies over training, per insertion time.

Bordt, Srinivas, Boreiko & von Luxburg 2025, "How Much Can We Forget about Data Contamination?"
(ICML 2025). Copies of benchmark items seen early in training are forgotten by its end, and the
accuracy gap to never-seen items grows with how late they were seen; the paper ties the forgetting
to the weight decay applied after the copies were seen (a continued, non-vanishing learning rate
times the decoupled AdamW decay shrinks the weights that carry the memorised facts).

One run per insertion window and seed on :class:`assay.worlds.contamination.ContaminatedWorld` (one
split of ``repetitions`` copies per item, plus the never-inserted holdout); the same seed gives the
same facts, initialisation and background rows in every window, so windows differ only in where the
copies sit. The model is evaluated on every item's prompt every ``steps / n_evals`` updates (through
:func:`assay.models.train.train`'s ``on_eval`` hook), so each run yields the accuracy-over-training
curve of the contaminated and of the clean (holdout) items; the gap is their difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from assay.config import ConfigError

__all__ = ["ForgettingConfig", "ForgettingCurves", "forgetting_curves", "plot_forgetting"]


@dataclass(frozen=True, kw_only=True)
class ForgettingConfig:
    """The insertion times to compare and the training run (defaults: ≈ 1 min on 2 CPU cores)."""

    insertion: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    """Start of each insertion window, as a fraction of training (one run per entry and seed)."""
    window_length: float = 0.25
    """Length of each insertion window, as a fraction of training."""
    repetitions: int = 32
    """Copies inserted per contaminated item."""
    items: int = 24
    """Benchmark items per split (contaminated and holdout)."""
    steps: int = 400
    """Training updates."""
    batch_size: int = 16
    """Rows per update."""
    lr: float = 1e-2
    """Peak learning rate (after a warmup of steps / 12 updates)."""
    min_lr: float = 1e-2
    """Learning rate at the end of the cosine decay (= lr: constant after warmup, so training after a late
    insertion continues at a meaningful rate; a decay to lr / 10 and no weight decay reverse the ordering)."""
    weight_decay: float = 1.0
    """AdamW decoupled weight decay (the forgetting mechanism; 0 leaves early copies remembered)."""
    d_model: int = 32
    """Width of the one-layer, two-head transformer."""
    n_evals: int = 20
    """Evaluations of the curve (every steps / n_evals updates; the last at the end)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the world (facts, insert slots, background rows) and of the initialisation."""

    def __post_init__(self) -> None:
        if not self.insertion or not self.seeds:
            raise ConfigError("insertion and seeds must be non-empty tuples")
        if not 0 < self.window_length <= 1 or any(not 0 <= s <= 1 - self.window_length for s in self.insertion):
            raise ConfigError(f"every window [start, start + window_length] must lie in [0, 1], got starts "
                              f"{self.insertion} and window_length {self.window_length}")
        if self.repetitions < 1 or self.items < 2:
            raise ConfigError(f"repetitions must be ≥ 1 and items ≥ 2, got {self.repetitions} and {self.items}")
        if not 1 <= self.n_evals <= self.steps:
            raise ConfigError(f"n_evals must lie in 1..steps ({self.steps}), got {self.n_evals}")


class ForgettingCurves(NamedTuple):
    """Multiple-choice accuracy over training, per insertion window and seed."""

    insertion: tuple[float, ...]
    """Start of each insertion window (fraction of training)."""
    steps: torch.Tensor
    """``[n_points]`` the updates after which the model was evaluated (the last is the end of training)."""
    contaminated: torch.Tensor
    """``[n_windows, n_seeds, n_points]`` accuracy on the inserted items."""
    clean: torch.Tensor
    """``[n_windows, n_seeds, n_points]`` accuracy on the never-inserted holdout items."""

    @property
    def gap(self) -> torch.Tensor:
        """``[n_windows, n_seeds, n_points]`` contaminated − clean accuracy."""
        return self.contaminated - self.clean

    @property
    def final_gap(self) -> torch.Tensor:
        """``[n_windows, n_seeds]`` the gap at the end of training."""
        return self.gap[..., -1]


def _run(cfg: ForgettingConfig, start: float, seed: int) -> tuple[list[int], list[float], list[float]]:
    """Train one model with the copies inserted in ``[start, start + window_length]``; its curve."""
    from assay.evaluate.contamination import split_gaps
    from assay.models.train import TrainConfig, train
    from assay.models.transformer import Transformer, TransformerConfig
    from assay.worlds.base import make_generator
    from assay.worlds.contamination import ContaminatedMarkovConfig, ContaminatedMarkovWorld

    world = ContaminatedMarkovWorld(ContaminatedMarkovConfig(
        repetitions=(cfg.repetitions,), items_per_split=cfg.items, window=(start, start + cfg.window_length),
        steps=cfg.steps, batch_size=cfg.batch_size, seed=seed))
    model = Transformer(TransformerConfig(vocab_size=len(world.vocab), n_layers=1, n_heads=2, d_model=cfg.d_model,
                                          context=world.stream.inputs.shape[1], attn_impl="eager"),
                        generator=make_generator(seed + 1))
    tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, min_lr=cfg.min_lr,
                       warmup=max(1, cfg.steps // 12), weight_decay=cfg.weight_decay,
                       eval_every=max(1, cfg.steps // cfg.n_evals), eval_size=16, seed=seed)
    prompts, facts = world.prompts(), world.facts
    steps, dirty, clean = [], [], []

    def evaluate(entry: dict[str, float]) -> None:
        with torch.no_grad():
            g = split_gaps(model(prompts.inputs)[:, -1], facts.answer, facts.answer_ids, facts.split)
        steps.append(int(entry["step"]))
        clean.append(float(g.accuracy[0]))
        dirty.append(float(g.accuracy[1]))

    train(model, world, tcfg, on_eval=evaluate)
    return steps, dirty, clean


def forgetting_curves(cfg: ForgettingConfig | None = None) -> ForgettingCurves:
    """Train one model per insertion window and seed; the accuracy curves of contaminated and clean items."""
    cfg = cfg or ForgettingConfig()
    dirty, clean, steps = [], [], None
    for start in cfg.insertion:
        runs = [_run(cfg, start, seed) for seed in cfg.seeds]
        steps = runs[0][0]
        dirty.append([r[1] for r in runs])
        clean.append([r[2] for r in runs])
    return ForgettingCurves(tuple(cfg.insertion), torch.tensor(steps), torch.tensor(dirty, dtype=torch.float64),
                            torch.tensor(clean, dtype=torch.float64))


def plot_forgetting(curves: ForgettingCurves, path: str | Path, *, window_length: float | None = None) -> Path:
    """Write the accuracy-over-training curves (mean over seeds; one colour per insertion window, shaded
    when ``window_length`` is given; dashed: clean holdout) to ``path`` (any matplotlib format)."""
    from matplotlib import colormaps

    from assay.report import new_figure, save_figure

    n = curves.steps[-1].item()
    fig = new_figure((6.4, 3.8))
    ax = fig.subplots()
    colours = colormaps["viridis"](torch.linspace(0, 0.9, len(curves.insertion)).tolist())
    for i, (start, c) in enumerate(zip(curves.insertion, colours)):
        ax.plot(curves.steps, curves.contaminated[i].mean(0), color=c, label=f"inserted from {start:g}·T")
        if window_length is not None:
            ax.axvspan(start * n, (start + window_length) * n, color=c, alpha=0.08)
    ax.plot(curves.steps, curves.clean.mean((0, 1)), "k--", label="clean holdout")
    ax.set_xlabel("training update")
    ax.set_ylabel("multiple-choice accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path)
