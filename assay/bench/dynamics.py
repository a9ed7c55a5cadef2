"""The experiment behind ``assay dynamics``: train a world's tiny model with a checkpoint series, run
probes and task metrics across it, detect transitions, and write the curves to a report section.

Instruments the learning-dynamics programme of Lubana et al. 2025 ("A Percolation Model of
Emergence"), Gopalani, Lubana & Hu 2024 ("Abrupt Learning in Transformers") and Park et al. 2024
("Emergence of Hidden Capabilities"):

1. the world's default tiny transformer (:func:`assay.models.zoo.reference_configs`, ``steps``
   overridden) trains with :func:`assay.dynamics.checkpoints.train_series`, saving log-spaced checkpoints
   (:func:`~assay.dynamics.checkpoints.log_steps`) into one artifact ``out_dir/series`` — resumable after a
   kill, and reused when the command runs again with the same settings;
2. a separate evaluation pass (:func:`~assay.dynamics.checkpoints.evaluate_series`) computes at every
   checkpoint the held-out loss and the world's task metrics (:func:`assay.models.train.evaluate` on the
   training run's own held-out batch) and, for every ground-truth concept of the world
   (:data:`assay.bench.worlds.SEQUENCE_CONCEPTS`, one-hot), a closed-form probe (:mod:`assay.lenses.probes`)
   refitted per checkpoint on a fixed probe split and scored on a fixed test split as
   (acc − chance)/(1 − chance) with acc the *balanced* accuracy (mean of the true-positive and
   true-negative rates; chance 0.5) — the plain accuracy of a rare one-hot value has a chance level near
   1 and turns the normalised score into noise; a label's curve is the mean over its one-hot concepts;
3. each curve is normalised (losses: (L₀ − L)/(L₀ − min L); other task metrics: (m − m₀)/(1 − m₀), m₀ the
   untrained value; probe curves are already normalised) and :func:`assay.dynamics.transitions.fit_transition`
   finds its midpoint, onset and width and says whether it is abrupt;
4. ``out_dir`` receives ``curves.csv`` (step, curve, value), ``transitions.csv``, ``plots/curves.svg`` (the
   normalised curves on a log-step axis, abrupt transitions marked at t₀ with their t₁₀–t₉₀ band) and the
   report section (``section.json`` + ``report.html``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from assay.config import ConfigError

__all__ = ["DynamicsConfig", "DynamicsResult", "run_dynamics", "normalised_curve", "DYNAMICS_WORLDS"]

DYNAMICS_WORLDS = ("dyck", "expr", "english", "markov", "bijections", "graph", "cyclic")
"""Sequence worlds with per-token concept labels (``assay.bench.worlds.SEQUENCE_CONCEPTS``)."""


@dataclass(frozen=True, kw_only=True)
class DynamicsConfig:
    """Train a world's tiny model with a log-spaced checkpoint series; probe and evaluate every checkpoint."""

    world: Literal["dyck", "expr", "english", "markov", "bijections", "graph", "cyclic"] = "cyclic"
    """Sequence world whose default tiny transformer is trained."""
    steps: int = 1200
    """Training steps (the rest of the training setup is the world's reference model)."""
    n_checkpoints: int = 24
    """Log-spaced checkpoints between ``first`` and ``steps`` (plus step 0)."""
    first: int = 10
    """First non-zero checkpoint step."""
    seed: int = 0
    """Seed of the initial weights and the training data stream."""
    probe: Literal["lda", "diff_of_means"] = "lda"
    """Closed-form probe refitted at every checkpoint."""
    site: str | None = None
    """Model site the probes read (default: the last block's residual output)."""
    probe_rows: int = 64
    """Rows (sequences) drawn for the probes; half fit them, half score them."""
    out_dir: Path = Path("runs/dynamics")
    """Output folder (series/, curves.csv, transitions.csv, plots/, section.json, report.html)."""

    def __post_init__(self) -> None:
        if self.world not in DYNAMICS_WORLDS:
            raise ConfigError(f"world must be one of {', '.join(DYNAMICS_WORLDS)}, got {self.world!r}")
        for name in ("steps", "n_checkpoints", "first", "probe_rows"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"DynamicsConfig.{name} must be a positive integer, got {v!r}")
        if self.first > self.steps:
            raise ConfigError(f"first checkpoint {self.first} lies after the last step {self.steps}")
        if self.probe_rows < 4:
            raise ConfigError(f"probe_rows must be at least 4 (two to fit, two to score), got {self.probe_rows}")
        from assay.dynamics.checkpoints import log_steps

        if len(log_steps(self.steps, self.n_checkpoints, self.first)) < 6:
            raise ConfigError(f"steps={self.steps}, n_checkpoints={self.n_checkpoints}, first={self.first} give fewer "
                              "than 5 distinct checkpoints after step 0, too few to fit a transition; raise them")


class DynamicsResult(NamedTuple):
    """What :func:`run_dynamics` returns."""

    curves: dict[str, list[tuple[int, float]]]
    """Curve name → ``[(step, value), …]`` (raw values: task metrics, loss, normalised probe accuracy)."""
    transitions: dict[str, Any]
    """Curve name → its :class:`assay.dynamics.transitions.Transition` (fitted on the normalised curve)."""
    series_path: Path
    """The checkpoint-series artifact."""
    trained: bool
    """True when this call trained (or resumed) the series, False when it reused a finished one."""
    section: Path
    """The written ``section.json``."""


def _series(cfg: DynamicsConfig, model: Any, world: Any, train_cfg: Any) -> tuple[Any, bool]:
    """The finished series at ``out_dir/series`` if it matches these settings, else train (or resume) it."""
    from assay.artifact import ArtifactError
    from assay.config import to_dict
    from assay.dynamics.checkpoints import load_series, log_steps, train_series

    steps = log_steps(cfg.steps, cfg.n_checkpoints, cfg.first)
    path = Path(cfg.out_dir) / "series"
    if path.is_dir():
        try:
            series = load_series(path)
        except ArtifactError:
            series = None
        if series is not None and series.steps == steps and series.config.get("model") == to_dict(model.config) \
                and series.config.get("train") == to_dict(train_cfg):
            return series, False
    return train_series(model, world, train_cfg, path, steps=steps, world_name=cfg.world), True


def _probe_data(cfg: DynamicsConfig, world: Any, train_cfg: Any, model: Any):
    """Fixed probe rows, their non-pad/BOS token mask, one-hot concepts and the fit/test split of tokens."""
    from assay.bench.worlds import SEQUENCE_CONCEPTS
    from assay.evaluate.detection import one_hot_concepts
    from assay.models.train import batch_sampler
    from assay.worlds.base import make_generator

    batch = batch_sampler(model, world, train_cfg)(cfg.probe_rows, make_generator(8_000_000 + cfg.seed))
    mask = batch.inputs != world.pad_id
    if getattr(world, "bos_id", None) is not None:
        mask &= batch.inputs != world.bos_id
    y, names = one_hot_concepts({k: batch.labels[k] for k in SEQUENCE_CONCEPTS[cfg.world]}, mask=mask, min_count=5)
    rows = mask.nonzero()[:, 0]
    fit = rows < cfg.probe_rows // 2
    keep = [c for c in range(y.shape[1]) if 0 < int(y[fit, c].sum()) < int(fit.sum())
            and 0 < int(y[~fit, c].sum()) < int((~fit).sum())]  # both classes in both splits
    return batch.inputs, mask, y[:, keep].bool(), tuple(names[c] for c in keep), fit


def _probe_metric(cfg: DynamicsConfig, inputs, mask, y, names, fit, site: str):
    """``model -> {label: mean normalised probe accuracy over its one-hot concepts}``."""
    from assay.hooks import run_to
    from assay.lenses import probes

    fit_probe = probes.lda if cfg.probe == "lda" else probes.diff_of_means

    def metric(model) -> dict[str, float]:
        h = run_to(model, site, inputs)[mask].double()
        per_label: dict[str, list[float]] = {}
        for c, name in enumerate(names):
            probe = fit_probe(h[fit], y[fit, c])
            pred, truth = probe.predict(h[~fit]).bool(), y[~fit, c]
            balanced = 0.5 * (float(pred[truth].double().mean()) + float((~pred[~truth]).double().mean()))
            label = name.split("=")[0].split("[")[0]
            per_label.setdefault(label, []).append((balanced - 0.5) / 0.5)
        return {f"probe:{k}": sum(v) / len(v) for k, v in per_label.items()}

    return metric


def normalised_curve(name: str, values: list[float]):
    """A curve of :func:`run_dynamics` normalised for a transition fit: losses (L₀ − L)/(L₀ − min L), other task
    metrics (m − m₀)/(1 − m₀), probe curves as they are; None when the curve cannot be normalised (flat from the start)."""
    from assay.dynamics.transitions import normalise, normalise_loss

    if name.startswith("probe:"):
        return values
    if name == "eval_loss" or name == "ce" or name.endswith("_loss"):
        return normalise_loss(values, floor=min(values)) if values[0] > min(values) else None
    return normalise(values, chance=values[0], target=1.0) if values[0] != 1.0 else None


def run_dynamics(cfg: DynamicsConfig) -> DynamicsResult:
    """Train (or reuse) the series, evaluate every checkpoint, detect transitions, write the section."""
    import torch

    from assay.dynamics.checkpoints import map_series
    from assay.dynamics.transitions import fit_transition
    from assay.hooks import resolve
    from assay.models.train import batch_sampler, evaluate
    from assay.models.transformer import Transformer
    from assay.models.zoo import reference_configs
    from assay.worlds import registry
    from assay.worlds.base import make_generator

    out = Path(cfg.out_dir)
    world = registry.make(cfg.world)
    model_cfg, train_cfg = reference_configs(world, train_overrides={"steps": cfg.steps}, seed=cfg.seed)
    model = Transformer(model_cfg, generator=make_generator(cfg.seed))
    site = cfg.site or f"blocks.{model_cfg.n_layers - 1}"
    resolve(model, site)  # a clear error for a bad site before any training
    series, trained = _series(cfg, model, world, train_cfg)
    eval_batch = batch_sampler(model, world, train_cfg)(train_cfg.eval_size, make_generator(train_cfg.seed + 1))
    inputs, mask, y, names, fit = _probe_data(cfg, world, train_cfg, model)
    probe_metric = _probe_metric(cfg, inputs, mask, y, names, fit, site)

    def all_metrics(m) -> dict[str, float]:
        with torch.no_grad():
            return {**evaluate(m, world, eval_batch), **probe_metric(m)}

    rows = map_series(series, all_metrics, model=model)
    curves: dict[str, list[tuple[int, float]]] = {}
    for step, values in rows:
        for k, v in values.items():
            curves.setdefault(k, []).append((step, float(v)))
    transitions = {}
    for name, curve in curves.items():
        norm = normalised_curve(name, [v for _, v in curve])
        if norm is not None:
            transitions[name] = fit_transition([s for s, _ in curve], list(norm))
    section = _write(cfg, out, curves, transitions, series, trained)
    return DynamicsResult(curves, transitions, out / "series", trained, section)


def _write(cfg, out: Path, curves, transitions, series, trained) -> Path:
    from assay.report import Plot, Section, Table, write_section

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "curve", "value"])
        for name, curve in curves.items():
            w.writerows([s, name, v] for s, v in curve)
    cols = ["curve", "t0", "t10", "t90", "width_decades", "low", "high", "plateau_sd", "t10_observed",
            "t90_observed", "abrupt"]
    table_rows = [[name, *(round(x, 4) if isinstance(x, float) and math.isfinite(x) else x for x in tr)]
                  for name, tr in transitions.items()]
    with open(out / "transitions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(table_rows)
    plot = _plot(out / "plots" / "curves.svg", curves, transitions)
    abrupt = [n for n, t in transitions.items() if t.abrupt]
    notes = [
        f"World {cfg.world!r}, its default tiny transformer trained {cfg.steps} steps (seed {cfg.seed}); "
        f"{len(series)} checkpoints at log-spaced steps {list(series.steps)} in one artifact "
        f"({'trained now' if trained else 'reused'}).",
        f"Probes: {cfg.probe} refitted per checkpoint at {cfg.site or 'the last block'} on half of {cfg.probe_rows} "
        "fixed rows, scored on the other half as 2·(balanced accuracy − 0.5), averaged over each label's one-hot "
        "concepts.",
        "Transitions: a sigmoid in log-step fitted to each normalised curve (3-checkpoint running median); abrupt "
        "means a 10→90% width ≤ 0.5 decade and a jump ≥ 3 plateau standard deviations (assay.dynamics.transitions). "
        "One seed: a transition narrower than the checkpoint spacing is only known to be ≤ that spacing.",
        f"Abrupt transitions: {', '.join(abrupt) if abrupt else 'none'}.",
    ]
    section = Section(f"Learning dynamics: {cfg.world}", tables=[Table("Transitions per curve", cols, table_rows)],
                      plots=[Plot("Normalised curves over training (log steps); dashed: midpoints t₀ of abrupt "
                                  "transitions, shaded: their t₁₀–t₉₀", plot)], notes=notes)
    return write_section(out, section)


def _plot(path: Path, curves, transitions) -> Path:
    from assay.report import new_figure, save_figure

    fig = new_figure((7.0, 4.0))
    ax = fig.subplots()
    for i, (name, curve) in enumerate(curves.items()):
        norm = normalised_curve(name, [v for _, v in curve])
        if norm is None:
            continue
        pts = [(s, v) for (s, _), v in zip(curve, norm) if s > 0]
        color = f"C{i % 10}"
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker=".", color=color, label=name)
        tr = transitions.get(name)
        if tr is not None and tr.abrupt:
            ax.axvline(tr.t0, color=color, linestyle="--", linewidth=1)
            ax.axvspan(tr.t10, tr.t90, color=color, alpha=0.1)
    ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("normalised value")
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path, tight=True)
