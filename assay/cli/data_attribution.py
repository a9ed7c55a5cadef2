"""``assay data-attribution``: fit gradient features, score, and evaluate on sklearn digits.

Trains the model (logistic regression or a small MLP) on the 8×8 digits (64 features, optionally with
planted label noise), attributes held-out targets with the chosen method, then evaluates the scores
with the linear datamodeling score (LDS, retraining on random half subsets; cached and resumable)
and, with label noise, mislabel-detection AUROC from self-influence. Writes an artifact folder
(config.json + scores) with the metrics in its metadata, a ``results.json`` line, — when matplotlib is
available — ``plots/proponents.png`` with each of a few targets' top proponents/opponents, and the
report section (``section.json`` + ``report.html``: metrics table and that image).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import typer

from assay.cli import command


@dataclass(frozen=True, kw_only=True)
class DataAttributionCommand:
    """Attribute digits predictions to training points and evaluate the attribution (LDS, mislabel AUROC)."""

    method: Literal["trak", "tracin", "if-explicit", "if-cg", "if-lissa", "ekfac"] = "trak"
    """Attribution method."""
    model: Literal["logreg", "mlp"] = "logreg"
    """Model trained on the digits: L2-regularised logistic regression or an MLP 64-64-10."""
    n_train: int = 1000
    """Training points (of the 1,797 digits)."""
    n_test: int = 100
    """Targets to attribute (held out)."""
    proj_dim: int = 512
    """Projection dimension for TRAK / TracIn."""
    n_models: int = 5
    """Models in the TRAK ensemble (independently seeded fits; logreg uses bootstrap-free refits)."""
    l2: float = 0.01
    """L2 regularisation (logreg) and damping of the influence-function solvers."""
    n_subsets: int = 50
    """Retraining subsets for LDS (0 skips LDS)."""
    subset_fraction: float = 0.5
    """Fraction of training points in each LDS subset; strictly between 0 and 1."""
    label_noise: float = 0.0
    """Fraction of training labels flipped (0 skips mislabel detection)."""
    workers: int = 1
    """Processes for retraining."""
    seed: int = 0
    """Seed of the split, models, projection and subsets."""
    out: Path = Path("runs/data_attribution")
    """Output folder (the retraining cache lives in out/retrain)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.subset_fraction < 1.0:
            raise ValueError(f"subset_fraction must be strictly between 0 and 1, got {self.subset_fraction}")
        if self.proj_dim < 1:
            raise ValueError(f"proj_dim must be ≥ 1, got {self.proj_dim}")
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f"label_noise must be in [0, 1), got {self.label_noise}")
        if self.n_train < 10 or self.n_test < 1 or self.n_train + self.n_test > 1797:
            raise ValueError("need n_train ≥ 10, n_test ≥ 1 and n_train + n_test ≤ 1797 (the digits set)")
        if self.n_models < 1 or self.workers < 1 or self.n_subsets < 0:
            raise ValueError("n_models and workers must be ≥ 1, n_subsets ≥ 0")


def _digits(cfg: DataAttributionCommand):
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
    tr, te = perm[: cfg.n_train], perm[cfg.n_train : cfg.n_train + cfg.n_test]
    return x[tr], y[tr], x[te], y[te]


def _fit(cfg: DataAttributionCommand, x, y, seed: int):
    from assay.data_attribution import retrain

    if cfg.model == "logreg":
        return retrain.fit_logreg(x, y, 10, l2=cfg.l2)
    return retrain.fit_mlp(x, y, 10, seed=seed)


def _scorer(cfg: DataAttributionCommand, x, y):
    """A function (x_target, y_target) -> scores [n_train, m] for the chosen method."""
    import torch

    from assay.data_attribution import ekfac, grads, influence, tracin, trak
    from assay.data_attribution.featurize import featurize
    from assay.data_attribution.projection import ProjectionConfig

    proj = ProjectionConfig(dim=cfg.proj_dim, seed=cfg.seed)
    model = _fit(cfg, x, y, cfg.seed)
    l2 = cfg.l2 if cfg.model == "logreg" else 0.0
    if cfg.method == "trak":
        models = [model]
        g = torch.Generator().manual_seed(cfg.seed + 1)
        for j in range(1, cfg.n_models):  # logreg fits are deterministic: refit on random 80% subsets
            idx = torch.randperm(x.shape[0], generator=g)[: int(0.8 * x.shape[0])] if cfg.model == "logreg" else None
            models.append(_fit(cfg, x[idx], y[idx], cfg.seed + j) if idx is not None else _fit(cfg, x, y, cfg.seed + j))
        cks = []
        for m in models:
            phi, q = trak.trak_featurize(m, x, y, projection=proj)
            cks.append(trak.trak_finalize(phi, q, lambda_reg=1e-6 * float((phi * phi).sum())))
        return model, lambda xt, yt: trak.trak_scores(
            cks, [trak.trak_featurize(m, xt, yt, projection=proj)[0] for m in models])
    if cfg.method == "tracin":
        phi = featurize(model, x, y, projection=proj, out_fn=grads.cross_entropy)
        return model, lambda xt, yt: tracin.tracin_scores(
            [phi], [featurize(model, xt, yt, projection=proj, out_fn=grads.cross_entropy)])
    if cfg.method == "ekfac":
        f = ekfac.fit_ekfac(model, x, y, generator=torch.Generator().manual_seed(cfg.seed))
        return model, lambda xt, yt: ekfac.ekfac_scores(model, f, (x, y), (xt, yt))
    g_train = grads.per_example_grads(model, x, y)
    damping = 0.0 if cfg.model == "logreg" else cfg.l2
    if cfg.method == "if-explicit":
        h = influence.loss_hessian(model, x, y, l2=l2)

        def solve(b):
            return influence.solve_explicit(h, b, damping=damping)
    elif cfg.method == "if-cg":
        hvp = influence.make_hvp(model, x, y, l2=l2)

        def solve(b):
            return influence.solve_cg(hvp, b, damping=damping, max_iter=100)
    else:
        hvp = influence.make_hvp(model, x, y, l2=l2)
        gen = torch.Generator().manual_seed(cfg.seed)
        scale = 1.2 * (influence.spectral_norm(hvp, g_train.shape[1], generator=gen) + damping)

        def hvp_batch(v, idx):
            return influence.make_hvp(model, x[idx], y[idx], l2=l2)(v)

        def solve(b):
            return influence.solve_lissa(hvp_batch, b, x.shape[0], damping=max(damping, 1e-3), scale=scale,
                                         depth=300, batch_size=128, generator=gen)
    return model, lambda xt, yt: influence.influence_scores(g_train, solve(grads.per_example_grads(model, xt, yt).T))


def _plot(out: Path, x, y, xt, yt, scores, k: int = 3, n_targets: int = 4) -> str | None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return None
    from assay.data_attribution.applications import opponents, proponents
    from assay.report import new_figure, save_figure

    pro, opp = proponents(scores, k), opponents(scores, k)
    fig = new_figure((1.3 * (1 + 2 * k), 1.4 * n_targets))
    axes = fig.subplots(n_targets, 1 + 2 * k)
    for t in range(n_targets):
        row = [(f"target y={int(yt[t])}", xt[t])] + [
            (f"+{float(s):.2g} y={int(y[i])}", x[i]) for i, s in zip(pro.indices[t], pro.scores[t])] + [
            (f"{float(s):.2g} y={int(y[i])}", x[i]) for i, s in zip(opp.indices[t], opp.scores[t])]
        for ax, (title, img) in zip(axes[t], row):
            ax.imshow(img.reshape(8, 8).numpy(), cmap="gray_r")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle("target | top proponents | top opponents (score, training label as used — flipped if noisy)",
                 fontsize=8)
    return str(save_figure(fig, out / "plots" / "proponents.png", dpi=100, tight=True))


def run(cfg: DataAttributionCommand) -> dict:
    """Run the command; returns the metrics dict (also written to ``out/results.json``)."""
    import time
    from functools import partial

    import torch

    from assay.artifact import atomic_write_text, save_artifact
    from assay.data_attribution import retrain
    from assay.evaluate.lds import lds
    from assay.evaluate.mislabel import plant_label_noise
    from assay.stats import auroc

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    x, y, xt, yt = _digits(cfg)
    flip = None
    if cfg.label_noise > 0:
        y, flip = plant_label_noise(y, cfg.label_noise, 10, generator=torch.Generator().manual_seed(cfg.seed + 7))
    t0 = time.perf_counter()
    model, score = _scorer(cfg, x, y)
    scores = score(xt, yt)
    result: dict = {"method": cfg.method, "model": cfg.model, "n_train": cfg.n_train, "n_test": cfg.n_test,
                    "seconds_scoring": round(time.perf_counter() - t0, 3)}
    with torch.no_grad():
        result["test_accuracy"] = float((model(xt).argmax(-1) == yt).float().mean())
    if cfg.n_subsets:
        fn = (partial(retrain.logreg_target_values, l2=cfg.l2) if cfg.model == "logreg"
              else partial(retrain.mlp_target_values))
        fn = partial(fn, x_train=x, y_train=y, x_target=xt, y_target=yt, n_classes=10)
        rcfg = retrain.RetrainConfig(n_subsets=cfg.n_subsets, fraction=cfg.subset_fraction, seed=cfg.seed,
                                     n_workers=cfg.workers)
        key = f"digits-{cfg.model}-{cfg.n_train}-{cfg.n_test}-{cfg.l2}-{cfg.label_noise}-{cfg.seed}"
        t1 = time.perf_counter()
        truth = retrain.retrain(fn, cfg.n_train, rcfg, cache_dir=out / "retrain", key=key)
        r = lds(scores, truth.masks, truth.values)
        result.update(lds=round(r.mean, 4), lds_ci=[round(r.ci_low, 4), round(r.ci_high, 4)],
                      seconds_retraining=round(time.perf_counter() - t1, 3))
    if flip is not None:
        self_scores = score(x, y).diagonal()
        result["mislabel_auroc"] = round(auroc(self_scores, flip), 4)
    save_artifact(out / f"scores-{cfg.method}-{cfg.model}", kind="data_attribution.scores", config=cfg,
                  tensors={"scores": scores.float().contiguous()}, meta=result)
    image = _plot(out, x, y, xt, yt, scores)
    if image:
        result["proponents_png"] = image
    atomic_write_text(out / "results.json", json.dumps(result) + "\n")
    _write_section(cfg, out, result, image)
    typer.echo(json.dumps(result))
    return result


def _write_section(cfg: DataAttributionCommand, out: Path, result: dict, image: str | None) -> None:
    """The report section: a metrics table and the proponents/opponents image (inside ``out``)."""
    from assay.report import Plot, Section, Table, write_section

    ci = result.get("lds_ci")
    rows = [
        ["method", cfg.method],
        ["model", f"{cfg.model} on digits ({cfg.n_train} train / {cfg.n_test} targets)"],
        ["test accuracy", result["test_accuracy"]],
        ["LDS (mean Spearman over targets)", result.get("lds", "not run (n_subsets = 0)")],
        ["LDS 95% interval", f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–"],
        ["mislabel AUROC (self-influence)", result.get("mislabel_auroc", "not run (label_noise = 0)")],
        ["scoring seconds (fit, featurise, score)", result["seconds_scoring"]],
        ["retraining seconds (LDS ground truth; cached)", result.get("seconds_retraining", "–")],
    ]
    notes = [
        f"{cfg.n_subsets} retraining subsets of fraction {cfg.subset_fraction}; label noise {cfg.label_noise}; "
        f"seed {cfg.seed}; projection dim {cfg.proj_dim} (TRAK/TracIn), {cfg.n_models} TRAK model(s).",
        "Score sign: positive = the training point helps the target (removing it raises the target loss).",
    ]
    caption = ("Each row: a target digit, its top-3 proponents (+) and top-3 opponents, with each training "
               "point's (possibly flipped) label")
    plots = [Plot(caption, Path(image))] if image else []
    title = f"Data attribution: {cfg.method} on digits ({cfg.model})"
    write_section(out, Section(title, [Table("Data attribution metrics", ["metric", "value"], rows)], plots, notes))


def register(app: typer.Typer) -> None:
    command(app, "data-attribution", DataAttributionCommand, run)
