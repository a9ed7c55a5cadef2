"""Bench family ``data-attribution``: which training points made the model do this — scored against retraining.

Worlds (each prepared once per seed; every model is trained through ``assay.models.train`` — AdamW,
warmup + cosine — and TracInCP's checkpoints are snapshots of that same run, each with the learning
rate of the update that produced it):

- ``digits`` — sklearn's 8×8 digits (64 features, 10 classes), ``tabular`` — the OpenXAI Gaussian
  clusters (20 features, 2 classes). ``model=logreg|mlp`` (a 64-unit hidden layer), ``label_noise``
  (fraction of training labels flipped). Ground truth: the linear datamodeling score (Park et al. 2023,
  "TRAK: Attributing Model Behavior at Scale") against models retrained with the same recipe on random
  half subsets (:mod:`assay.data_attribution.retrain`, :mod:`assay.evaluate.lds`), and with label noise
  the mislabel-detection AUROC of self-influence (:mod:`assay.evaluate.mislabel`).
- ``contamination`` — benchmark facts planted in a Markov-chain stream (Bordt, Srinivas, Boreiko & von
  Luxburg 2025, "How Much Can We Forget about Data Contamination?"; :mod:`assay.worlds.contamination`),
  a one-layer transformer. ``repetitions`` (copies per split, ``0/4/64``), ``items`` per split, the
  insertion window ``window_start``/``window_end``. Ground truth: each item's own copies among all stream
  rows (precision@r, AUROC; :mod:`assay.evaluate.contamination`), and the accuracy/loss gap of each split
  to the holdout. Only the methods that take any loss apply here (random, grad_dot, grad_cos, tracin).

Group attribution and property targets (Ley et al. 2024, GGDA): the classifier worlds take ``grouping``,
``group_size``, ``target`` and ``target_class`` (:mod:`assay.bench.data_attribution_groups`); then LDS is
group-LDS (retraining on unions of groups) or property-LDS, and ``group_trak`` / ``group_tracin`` apply.

Methods are :mod:`assay.data_attribution.scorers` by spec (``trak:proj_dim=512,ensemble=5``,
``influence:solver=lissa``, ``tracin``, ``grad_dot``, ``ekfac``, ``random``, …); ``seconds`` is the time
to build the scorer and score the targets (training models is not counted).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from assay.bench.data_attribution_groups import (
    GROUP_PARAMS,
    check_group_params,
    lds_metric,
    make_groups,
    world_property,
)
from assay.bench.runner import BenchResult, RunContext, expand_with, summary_rows
from assay.bench.spec import SpecRun, world_params
from assay.config import ConfigError
from assay.data_attribution.property import Property
from assay.data_attribution.scorers import (
    CLASSIFIER_ONLY,
    GROUP_METHODS,
    METHODS,
    build_scorer,
    method_params,
)
from assay.data_attribution.tracin import TracInCheckpoint
from assay.models.train import TrainConfig, lr_at, train
from assay.worlds.base import Batch, make_generator

__all__ = ["WORLD_PARAMS", "check_world", "DataAttributionSettings", "Recipe", "DataAttributionFamily", "FAMILY", "train_with_snapshots",
           "fit_classifier_run", "prepare_contamination"]

WORLD_PARAMS: dict[str, dict[str, Any]] = {
    "digits": {"model": "logreg", "label_noise": 0.0, **GROUP_PARAMS},
    "tabular": {"model": "logreg", "label_noise": 0.0, **GROUP_PARAMS},
    "contamination": {"repetitions": "0/4/16/64", "items": 12, "window_start": 0.0, "window_end": 1.0},
}
"""World name → its spec parameters with their defaults."""


@dataclass(frozen=True, kw_only=True)
class DataAttributionSettings:
    """The run budget of the data-attribution bench."""

    n_train: int = 1000
    """Training points of a classifier world."""
    n_test: int = 100
    """Held-out targets attributed (LDS is their mean)."""
    steps: int = 300
    """AdamW updates of each classifier (the world model, every ensemble member and every retraining)."""
    batch_size: int = 64
    """Rows per update (drawn uniformly with replacement from the training set)."""
    lr: float = 0.01
    """Peak learning rate of the classifiers (cosine decay to 1/100 of it)."""
    weight_decay: float = 0.0
    """AdamW weight decay of the classifiers (weight matrices only)."""
    n_checkpoints: int = 4
    """Snapshots kept for TracInCP: every ⌈steps / n⌉ updates and at the end."""
    n_subsets: int = 50
    """Retraining subsets for the LDS ground truth."""
    subset_fraction: float = 0.5
    """Fraction of the training points in each retraining subset."""
    lm_steps: int = 250
    """Updates of the contamination world's transformer (the stream has this many batches)."""
    lm_batch_size: int = 16
    """Rows per update of the contamination stream."""
    lm_lr: float = 0.01
    """Peak learning rate of the transformer (cosine decay to 1/10 of it)."""

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "steps", "batch_size", "n_checkpoints", "lm_steps", "lm_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.n_subsets < 2:
            raise ConfigError(f"n_subsets must be ≥ 2 (LDS is a rank correlation over subsets), got {self.n_subsets}")
        if not 0.0 < self.subset_fraction < 1.0:
            raise ConfigError(f"subset_fraction must be strictly between 0 and 1, got {self.subset_fraction}")
        if not self.lr > 0 or not self.lm_lr > 0 or self.weight_decay < 0:
            raise ConfigError("lr and lm_lr must be > 0 and weight_decay ≥ 0")


# ---------------------------------------------------------------- classifier worlds


class _Rows:
    """A fixed training set as a world for ``assay.models.train``: rows drawn uniformly with replacement."""

    config = None

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        idx = torch.randint(0, self.x.shape[0], (n,), generator=generator)
        return Batch(inputs=self.x[idx], targets=self.y[idx])


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How a classifier of a world is built and trained (the same for the world model and every retraining)."""

    d_in: int
    """Input features."""
    n_classes: int
    """Classes."""
    hidden: tuple[int, ...]
    """Hidden widths: () is logistic regression."""
    train: TrainConfig
    """The training run (its ``seed`` is replaced per model)."""


def train_with_snapshots(model: nn.Module, world: Any, cfg: TrainConfig, n_checkpoints: int) -> tuple[TracInCheckpoint, ...]:
    """Train ``model`` on ``world`` with ``assay.models.train``; with ``n_checkpoints`` > 0 keep a snapshot every
    ⌈steps / n⌉ updates and at the end, each with the learning rate of the update that produced it (TracInCP)."""
    every = math.ceil(cfg.steps / n_checkpoints) if n_checkpoints else None
    cfg = dataclasses.replace(cfg, eval_every=every)
    snaps: list[TracInCheckpoint] = []

    def snapshot(entry: dict[str, float]) -> None:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        snaps.append(TracInCheckpoint(state, lr_at(int(entry["step"]) - 1, cfg)))

    train(model, world, cfg, on_eval=snapshot if n_checkpoints else None)
    return tuple(snaps)


def fit_classifier_run(recipe: Recipe, x: torch.Tensor, y: torch.Tensor, seed: int, *,
                       n_checkpoints: int = 0) -> tuple[nn.Module, tuple[TracInCheckpoint, ...]]:
    """Train a classifier on ``(x, y)`` with ``recipe`` (initialisation and data order from ``seed``) and
    ``n_checkpoints`` snapshots (:func:`train_with_snapshots`)."""
    from assay.models.mlp import MLP

    model = MLP(recipe.d_in, recipe.hidden, recipe.n_classes, generator=torch.Generator().manual_seed(seed))
    snaps = train_with_snapshots(model, _Rows(x, y), dataclasses.replace(recipe.train, seed=seed), n_checkpoints)
    return model, snaps


def _target_values(idx: torch.Tensor, seed: int, *, recipe: Recipe, x: torch.Tensor, y: torch.Tensor,
                   xt: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
    """Retraining ground truth: −loss on every target of a model trained on rows ``idx``."""
    model, _ = fit_classifier_run(recipe, x[idx], y[idx], seed)
    with torch.no_grad():
        return -nn.functional.cross_entropy(model(xt), yt, reduction="none")


class _Classifier(NamedTuple):
    """A prepared classifier world."""

    world: str
    """``digits`` or ``tabular``."""
    x: torch.Tensor
    """Training inputs ``[n, d]``."""
    y: torch.Tensor
    """The labels trained on (flipped where ``flip``)."""
    flip: torch.Tensor | None
    """``[n]`` planted label noise (None: no noise)."""
    xt: torch.Tensor
    """Target inputs ``[m, d]``."""
    yt: torch.Tensor
    """Target labels ``[m]``."""
    recipe: Recipe
    """How every model of this world is trained."""
    model: nn.Module
    """The world model."""
    checkpoints: tuple[TracInCheckpoint, ...]
    """Its snapshots (TracInCP)."""
    masks: torch.Tensor
    """``[M, n]`` retraining subsets (unions of groups when grouped)."""
    values: torch.Tensor
    """``[M, m]`` −loss of the retrained models on the targets."""
    members: dict[int, nn.Module]
    """Ensemble members trained so far (index ≥ 1; member 0 is ``model``)."""
    seed: int
    groups: torch.Tensor | None
    """``[n]`` group id of each training point (None: attribute to points)."""
    group_masks: torch.Tensor | None
    """``[M, K]`` the retraining subsets as sets of groups (None: not grouped)."""
    prop: Property | None
    """The property attributed (None: each target point)."""


def _classification_data(name: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        if n > len(d.target):
            raise ConfigError(f"the digits world has {len(d.target)} points; n_train + n_test = {n} is too many")
        perm = torch.randperm(len(d.target), generator=make_generator(seed))[:n]
        x = torch.tensor(d.data, dtype=torch.float32)[perm] / 16.0
        return x, torch.tensor(d.target, dtype=torch.long)[perm], 10
    from assay.worlds.tabular import TabularSignalWorld

    b = TabularSignalWorld().sample(n, generator=make_generator(seed))
    return b.inputs, b.targets, 2


def _prepare_classifier(name: str, p: dict[str, Any], seed: int, s: DataAttributionSettings) -> _Classifier:
    from assay.data_attribution.retrain import RetrainConfig, retrain, subset_masks
    from assay.evaluate.lds import expand_group_masks
    from assay.evaluate.mislabel import plant_label_noise

    x, y, n_classes = _classification_data(name, s.n_train + s.n_test, seed)
    x, y, xt, yt = x[: s.n_train], y[: s.n_train], x[s.n_train :], y[s.n_train :]
    flip = None
    if p["label_noise"] > 0:
        y, flip = plant_label_noise(y, p["label_noise"], n_classes, generator=make_generator(seed + 7))
    cfg = TrainConfig(steps=s.steps, batch_size=s.batch_size, lr=s.lr, min_lr=s.lr / 100, warmup=max(1, s.steps // 20),
                      weight_decay=s.weight_decay, grad_clip=None, eval_size=64)
    recipe = Recipe(d_in=x.shape[1], n_classes=n_classes, hidden=(64,) if p["model"] == "mlp" else (), train=cfg)
    model, cks = fit_classifier_run(recipe, x, y, seed, n_checkpoints=s.n_checkpoints)
    fn = partial(_target_values, recipe=recipe, x=x, y=y, xt=xt, yt=yt)
    gid, gmasks, rcfg = make_groups(p, model, x, y, seed), None, RetrainConfig(n_subsets=s.n_subsets,
                                                                               fraction=s.subset_fraction, seed=seed)
    if gid is not None:  # group-LDS: retrain on unions of a random fraction of the groups
        gmasks = subset_masks(int(gid.max()) + 1, s.n_subsets, s.subset_fraction, seed=seed + 13)
    truth = retrain(fn, s.n_train, rcfg, masks=None if gmasks is None else expand_group_masks(gmasks, gid))
    return _Classifier(name, x, y, flip, xt, yt, recipe, model, cks, truth.masks, truth.values, {}, seed, gid, gmasks,
                       world_property(p, xt, yt))


def _ensemble(w: _Classifier, k: int) -> list[nn.Module]:
    """k independently trained models: the world model, then members on random 80% subsets (seeded)."""
    for j in range(1, k):
        if j not in w.members:
            idx = torch.randperm(w.x.shape[0], generator=make_generator(w.seed * 1000 + j))[: int(0.8 * w.x.shape[0])]
            w.members[j] = fit_classifier_run(w.recipe, w.x[idx], w.y[idx], w.seed * 1000 + j)[0]
    return [w.model, *(w.members[j] for j in range(1, k))]


def _score_classifier(w: _Classifier, run: SpecRun, ctx: RunContext) -> dict[str, float]:
    from assay.stats import auroc

    group_method = run.name in GROUP_METHODS
    if group_method and w.groups is None:
        return {}  # a group method on a world attributed to points: does not apply
    p = method_params(run.name, run.params)
    members = _ensemble(w, p["ensemble"]) if "ensemble" in p else []
    t0 = time.perf_counter()  # model training (the world's, the ensemble's) is not attribution time
    scorer = build_scorer(run.name, run.params, model=w.model, train=(w.x, w.y), checkpoints=w.checkpoints,
                          ensemble=lambda k: members[:k], groups=w.groups, seed=ctx.seed)
    metric, value, scores = lds_metric(scorer, group_method=group_method, xt=w.xt, yt=w.yt, groups=w.groups,
                                       masks=w.masks if w.group_masks is None else w.group_masks, values=w.values,
                                       prop=w.prop)
    out = {"seconds": time.perf_counter() - t0, metric: value}
    if w.flip is not None and not group_method:
        out["mislabel_auroc"] = auroc(scorer(w.x, w.y).diagonal(), w.flip)
    if w.world == "digits" and scores is not None and w.groups is None:
        _save_proponents(ctx.run_dir, w, scores)
    return out


def _save_proponents(folder: Path, w: _Classifier, scores: torch.Tensor, k: int = 3, n_targets: int = 4) -> None:
    """The first targets with their top-k proponents and opponents (images, labels, scores) for the section."""
    from safetensors.torch import save_file

    from assay.data_attribution.applications import opponents, proponents

    pro, opp = proponents(scores[:, :n_targets], k), opponents(scores[:, :n_targets], k)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"target_x": w.xt[:n_targets].contiguous(), "target_y": w.yt[:n_targets].contiguous(),
               "pro_x": w.x[pro.indices].contiguous(), "pro_y": w.y[pro.indices].contiguous(),
               "pro_s": pro.scores.float().contiguous(), "opp_x": w.x[opp.indices].contiguous(),
               "opp_y": w.y[opp.indices].contiguous(), "opp_s": opp.scores.float().contiguous()},
              str(folder / "proponents.safetensors"))


# ---------------------------------------------------------------- contamination world


class _Contamination(NamedTuple):
    """A prepared contamination world."""

    world: Any
    """The :class:`~assay.worlds.contamination.ContaminatedWorld`."""
    model: nn.Module
    """The transformer trained on its stream."""
    checkpoints: tuple[TracInCheckpoint, ...]
    """Its snapshots (TracInCP)."""
    gaps: Any
    """:class:`~assay.evaluate.contamination.SplitGaps`."""


def _repetitions(v: Any) -> tuple[int, ...]:
    try:  # the world spec parser has already made "0/4/64" a tuple; a single count stays a number
        reps = tuple(int(r) for r in (v if isinstance(v, tuple) else str(v).split("/")))
    except (ValueError, TypeError):
        raise ConfigError(f"contamination:repetitions must be counts joined by '/', e.g. 0/4/64, got {v!r}") from None
    if len(set(reps)) != len(reps):
        raise ConfigError(f"contamination:repetitions must be distinct, got {v!r}")
    return reps


def prepare_contamination(p: dict[str, Any], seed: int, s: DataAttributionSettings) -> _Contamination:
    """Train the contamination world's transformer on its planted stream (snapshots for TracInCP) and measure
    the gaps of every split (module docstring)."""
    from assay.evaluate.contamination import split_gaps
    from assay.models.transformer import Transformer, TransformerConfig
    from assay.worlds.contamination import ContaminatedMarkovConfig, ContaminatedMarkovWorld

    cfg = ContaminatedMarkovConfig(repetitions=_repetitions(p["repetitions"]), items_per_split=p["items"],
                              window=(p["window_start"], p["window_end"]), steps=s.lm_steps,
                              batch_size=s.lm_batch_size, seed=seed)
    world = ContaminatedMarkovWorld(cfg)
    model = Transformer(TransformerConfig(vocab_size=len(world.vocab), n_layers=1, n_heads=2, d_model=32,
                                          context=world.stream.inputs.shape[1], attn_impl="eager"),
                        generator=make_generator(seed + 1))
    tcfg = TrainConfig(steps=s.lm_steps, batch_size=s.lm_batch_size, lr=s.lm_lr, min_lr=s.lm_lr / 10,
                       warmup=max(1, s.lm_steps // 12), weight_decay=0.0, eval_size=64, seed=seed)
    snaps = train_with_snapshots(model, world, tcfg, s.n_checkpoints)
    prompts = world.prompts()
    with torch.no_grad():
        logits = model(prompts.inputs)[:, -1]
    gaps = split_gaps(logits, world.facts.answer, world.facts.answer_ids, world.facts.split)
    return _Contamination(world, model, snaps, gaps)


def _score_contamination(c: _Contamination, run: SpecRun, ctx: RunContext) -> dict[str, float]:
    from assay.data_attribution.grads import next_token_loss
    from assay.evaluate.contamination import copy_recovery

    world, facts = c.world, c.world.facts
    reps = world.config.repetitions
    out: dict[str, float] = {}
    for s, r in enumerate(reps, start=1):
        out[f"acc_gap_r{r}"] = float(c.gaps.accuracy_gap[s])
        out[f"loss_gap_r{r}"] = float(c.gaps.loss_gap[s])
        out[f"loss_gap_se_r{r}"] = float(c.gaps.loss_gap_se[s])
    items = torch.nonzero(facts.copies > 0).squeeze(1)
    if run.name in CLASSIFIER_ONLY or run.name in GROUP_METHODS or not len(items):
        return out  # the method needs a classifier, or nothing was inserted: gaps only
    t0 = time.perf_counter()
    stream, prompts = world.stream, world.prompts()
    scorer = build_scorer(run.name, run.params, model=c.model, train=(stream.inputs, stream.targets),
                          checkpoints=c.checkpoints, loss=next_token_loss, seed=ctx.seed)
    scores = scorer(prompts.inputs[items], prompts.targets[items])
    out["seconds"] = time.perf_counter() - t0
    rec = copy_recovery(scores, world.row_item, items)
    out["copy_auroc"], out["copy_precision"] = float(rec.auroc.mean()), float(rec.precision_at_r.mean())
    for r in reps:
        if r > 0:
            sel = facts.copies[items] == r
            out[f"copy_auroc_r{r}"] = float(rec.auroc[sel].mean())
            out[f"copy_precision_r{r}"] = float(rec.precision_at_r[sel].mean())
    return out


# ---------------------------------------------------------------- the report section

LDS_METRICS = ("lds", "group_lds", "property_lds")
"""The LDS metrics (one per world: points, groups, a property)."""


def _bar_figure(result: BenchResult, path: Path) -> Path | None:
    from assay.report import new_figure, save_figure

    rows = [s for s in result.summary if s["metric"] in LDS_METRICS]
    worlds = list(dict.fromkeys(s["world"] for s in rows))
    if not worlds:
        return None
    fig = new_figure((1.0 + 2.2 * len(worlds) + 0.3 * len(rows), 3.2))
    axes = fig.subplots(1, len(worlds), squeeze=False)[0]
    for ax, world in zip(axes, worlds):
        mine = [s for s in rows if s["world"] == world]
        labels = [s["method"] + ("" if s["level"] == "default" else f" {s['level']}") for s in mine]
        means = [s["mean"] for s in mine]
        err = [[m - s["ci_low"] for m, s in zip(means, mine)], [s["ci_high"] - m for m, s in zip(means, mine)]]
        ax.bar(range(len(mine)), means, yerr=err, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(mine)), labels, rotation=45, ha="right", fontsize=7)
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_title(world, fontsize=8)
        ax.set_ylabel(mine[0]["metric"].replace("_", "-"), fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return path


def _proponent_figure(result: BenchResult, path: Path) -> Path | None:
    from safetensors.torch import load_file

    from assay.report import new_figure, save_figure

    runs = [r for r in result.runs if r["world"].split(":")[0] == "digits"
            and (result.out_dir / "cache" / r["key"] / "proponents.safetensors").is_file()]
    if not runs:
        return None
    best = min(runs, key=lambda r: (r["method"] != "trak", r["method"] == "random", r["seed"]))
    t = load_file(str(result.out_dir / "cache" / best["key"] / "proponents.safetensors"))
    n, k = t["pro_x"].shape[:2]
    fig = new_figure((1.3 * (1 + 2 * k), 1.4 * n))
    axes = fig.subplots(n, 1 + 2 * k, squeeze=False)
    for i in range(n):
        cells = [(f"target y={int(t['target_y'][i])}", t["target_x"][i])]
        cells += [(f"+{float(t['pro_s'][i, j]):.2g} y={int(t['pro_y'][i, j])}", t["pro_x"][i, j]) for j in range(k)]
        cells += [(f"{float(t['opp_s'][i, j]):.2g} y={int(t['opp_y'][i, j])}", t["opp_x"][i, j]) for j in range(k)]
        for ax, (title, img) in zip(axes[i], cells):
            ax.imshow(img.reshape(8, 8).numpy(), cmap="gray_r")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle(f"{best['world']}, {best['method']} {best['level']}, seed {best['seed']}: target | top proponents | "
                 "top opponents (score, training label as used — flipped if noisy)", fontsize=8)
    save_figure(fig, path, dpi=100, tight=True)
    return path


def _contamination_tables(result: BenchResult) -> list[Any]:
    """Copies found per method (copy_*, overall and per repetition count r), and the gap of each split to the
    holdout (a property of the trained world: read from the first method's runs)."""
    from assay.report import Table

    reps = sorted({int(s["metric"].rsplit("_r", 1)[1]) for s in result.summary if s["metric"].startswith("acc_gap_r")})
    present = {s["metric"] for s in result.summary}
    found = [m for m in ("copy_auroc", "copy_precision", *(f"copy_{k}_r{r}" for r in reps if r for k in ("auroc",
                                                                                                    "precision")))
             if m in present]
    cols, rows = summary_rows(result, found)
    mine = [r for r in rows if str(r[0]).startswith("contamination") and any(c != "–" for c in r[3:])]
    gap_cols, gap_rows = summary_rows(result, [f"{k}_r{r}" for r in reps for k in ("acc_gap", "loss_gap", "loss_gap_se")])
    gaps, seen = [], set()
    for row in gap_rows:
        if str(row[0]).startswith("contamination") and row[0] not in seen:
            seen.add(row[0])
            gaps += [[row[0], r, *row[3 + 3 * i : 6 + 3 * i]] for i, r in enumerate(reps)]
    return [Table("Contamination: each item's copies among all stream rows — AUROC and precision@r (r = its copies)",
                  cols, mine),
            Table("Contamination: gap of each split to the never-inserted holdout (r = copies per item)",
                  ["world", "r", "accuracy gap", "loss gap (nats)", "loss gap standard error"], gaps)]


def _section(result: BenchResult) -> Any:
    from assay.report import Plot, Section, Table

    shown = [m for m in LDS_METRICS if any(s["metric"] == m for s in result.summary)] or ["lds"]
    columns, rows = summary_rows(result, [*shown, "mislabel_auroc", "seconds"])
    contaminated = [r for r in rows if str(r[0]).startswith("contamination")]
    tables = [Table("LDS (group-LDS, property-LDS) against retraining, mislabel AUROC of self-influence, seconds",
                    columns, [r for r in rows if r not in contaminated])]
    if contaminated:
        tables += _contamination_tables(result)
    plots = []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        (result.out_dir / "plots").mkdir(parents=True, exist_ok=True)
        for caption, draw, name in (
            ("LDS per method and world (mean and 95% interval over seeds)", _bar_figure, "lds.png"),
            ("A digits target with its top-3 proponents (+) and opponents", _proponent_figure, "proponents.png"),
        ):
            path = draw(result, result.out_dir / "plots" / name)
            if path is not None:
                plots.append(Plot(caption, path))
    s = result.settings
    notes = [
        "Score sign: positive = the training point helps the target (removing it raises the target loss).",
        f"LDS: Spearman correlation, over {s.n_subsets} retrainings on random {s.subset_fraction:.0%} subsets of "
        f"the {s.n_train} training points, between the summed scores of each subset and the retrained model's "
        f"−loss on the target, averaged over {s.n_test} targets (0 = chance: see the random scorer).",
        f"Every model is trained by assay.models.train ({s.steps} AdamW updates of {s.batch_size} rows, lr {s.lr} "
        f"cosine to lr/100); tracin is TracInCP over {s.n_checkpoints} snapshots of that run with the learning "
        "rate of each; grad_dot is the final model only with η = 1.",
        "– : the metric does not apply (no label noise: no mislabel AUROC; TRAK, influence and EK-FAC need a "
        "classifier, so on the contamination world they report the gaps only; group_trak and group_tracin "
        "need a world with a grouping).",
    ]
    if any(s["metric"] in ("group_lds", "property_lds") for s in result.summary):
        notes += [
            "group-LDS (worlds with grouping=…): the retraining subsets are unions of a random "
            f"{s.subset_fraction:.0%} of the groups; pointwise methods' scores are summed over each group (the "
            "baseline), group_trak / group_tracin score each group from one gradient of the group's summed output "
            "(Ley et al. 2024, GGDA). group_tracin equals tracin summed over groups up to the projection.",
            "property-LDS (target=mean): Spearman over the retrained subsets between the predicted and the actual "
            "change of the property f = mean loss over the targets (of target_class when ≥ 0); group methods use "
            "one gradient of f, pointwise methods the mean of their per-target columns (equal by linearity).",
        ]
    return Section("Data attribution", tables, plots, notes)


# ---------------------------------------------------------------- the family


def check_world(spec: str) -> tuple[str, dict[str, Any]]:
    """``(name, parameters over the defaults)`` of a world spec; an unknown name, key or value raises
    :class:`ConfigError`."""
    name, p = world_params(spec, WORLD_PARAMS)
    if name == "contamination":
        _repetitions(p["repetitions"])
        if not isinstance(p["items"], int) or p["items"] < 2:
            raise ConfigError(f"contamination:items must be an integer ≥ 2 (a standard error per split), got {p['items']!r}")
        return name, p
    if p["model"] not in ("logreg", "mlp") or not 0.0 <= p["label_noise"] < 1.0:
        raise ConfigError(f"world {name}: model must be logreg or mlp and label_noise in [0, 1), got "
                          f"model={p['model']!r}, label_noise={p['label_noise']!r}")
    check_group_params(p)
    return name, p


class DataAttributionFamily:
    """The ``data-attribution`` bench family (module docstring)."""

    name = "data-attribution"
    title = "Data attribution"
    worlds = ("digits:label_noise=0.1", "contamination")
    methods = ("random", "grad_dot", "tracin", "trak", "influence", "ekfac")
    metrics = ("lds", "group_lds", "property_lds", "mislabel_auroc", "copy_auroc", "copy_precision", "seconds")
    settings_type = DataAttributionSettings

    def world_names(self) -> dict[str, dict[str, Any]]:
        return WORLD_PARAMS

    def method_names(self) -> tuple[str, ...]:
        return tuple(METHODS)

    def expand(self, spec: str) -> list[SpecRun]:
        runs = expand_with(METHODS)(spec)
        for run in runs:
            method_params(run.name, run.params)
        return runs

    def prepare(self, world: str, seed: int, settings: DataAttributionSettings) -> Any:
        name, p = check_world(world)
        if name == "contamination":
            return prepare_contamination(p, seed, settings)
        return _prepare_classifier(name, p, seed, settings)

    def score(self, prepared: Any, run: SpecRun, ctx: RunContext) -> dict[str, float]:
        if isinstance(prepared, _Contamination):
            return _score_contamination(prepared, run, ctx)
        return _score_classifier(prepared, run, ctx)

    def section(self, result: BenchResult) -> Any:
        return _section(result)


FAMILY = DataAttributionFamily()
"""The family object ``assay bench --family data-attribution`` runs."""
