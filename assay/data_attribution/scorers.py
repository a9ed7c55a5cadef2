"""Data-attribution methods by name: one builder turns a trained model into a scorer.

Each method is a recipe over the modules of this package (the sign convention is the library's:
S[i, t] > 0 means training point i helps target t):

- ``random``: i.i.d. N(0, 1) scores — the chance control (LDS ≈ 0, mislabel AUROC ≈ 0.5).
- ``grad_dot`` / ``grad_cos``: the final model's loss gradients, ⟨∇ℓ(z_i), ∇ℓ(z′_t)⟩ (or their cosine);
  Grad-Dot is TracIn with one checkpoint and η = 1 (Pruthi et al. 2020, "Estimating Training Data
  Influence by Tracing Gradient Descent").
- ``tracin``: TracInCP, Σ_k η_k ⟨∇ℓ(z_i; θ_k), ∇ℓ(z′_t; θ_k)⟩ over the checkpoints saved while the model
  was trained (:func:`~assay.data_attribution.tracin.tracin_cp`).
- ``trak``: TRAK (Park et al. 2023, "TRAK: Attributing Model Behavior at Scale") over an ensemble of
  independently trained models, projection ``proj_dim``, λ = ``lambda_rel`` · tr(ΦᵀΦ) per model.
- ``influence``: influence functions (Koh & Liang 2017) with H the Hessian of the mean training loss,
  solved exactly (``explicit``), by conjugate gradient (``cg``) or LiSSA (``lissa``, scale 1.2 × the
  power-iteration estimate of ‖H + λI‖); ``damping`` λ.
- ``ekfac``: EK-FAC influence (George et al. 2018; Grosse et al. 2023) for linear layers.
- ``group_trak`` / ``group_tracin``: group attribution (GGDA; Ley et al. 2024, "Generalized Group Data
  Attribution") — one gradient per group of training points, scores ``[K, m]`` over the K groups given
  as ``groups`` (:mod:`~assay.data_attribution.group_trak`; ``kernel`` as there, λ = ``lambda_rel`` · the
  trace of its kernel, as ``trak``). Their scorers also score a model property f(θ) directly from one
  property gradient (:mod:`~assay.data_attribution.property`, :func:`property_scores`).

:data:`METHODS` holds every method's parameters and defaults; :func:`method_params` validates a
parameter dict; :func:`build_scorer` returns ``scorer(x_target, y_target) -> S [n_train, m]`` (``[K, m]``
for the group methods); :func:`property_scores` scores a :class:`~assay.data_attribution.property.Property`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from assay.config import ConfigError
from assay.data_attribution import ekfac, grads, influence, tracin, trak
from assay.data_attribution.featurize import featurize
from assay.data_attribution.grads import OutputFn, cross_entropy, margin, select_parameters
from assay.data_attribution.group_trak import group_features, group_trak_checkpoint
from assay.data_attribution.projection import ProjectionConfig
from assay.data_attribution.property import Property, property_features
from assay.data_attribution.tracin import TracInCheckpoint

__all__ = ["METHODS", "CLASSIFIER_ONLY", "GROUP_METHODS", "Scorer", "GroupScorer", "method_params", "build_scorer",
           "property_scores"]

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x_target, y_target) -> scores [n_train, m]``."""

METHODS: dict[str, dict[str, Any]] = {
    "random": {},
    "grad_dot": {"proj_dim": None},
    "grad_cos": {"proj_dim": None},
    "tracin": {"proj_dim": None},
    "trak": {"proj_dim": 512, "ensemble": 5, "lambda_rel": 1e-6},
    "influence": {"solver": "explicit", "damping": 0.01, "depth": 300, "max_iter": 100},
    "ekfac": {"damping": None, "fisher": "true"},
    "group_trak": {"proj_dim": 512, "ensemble": 5, "lambda_rel": 1e-6, "kernel": "group"},
    "group_tracin": {"proj_dim": None},
}
"""Method name → its parameters with their defaults (``proj_dim`` None: exact gradients)."""

_CHOICES = {("influence", "solver"): ("explicit", "cg", "lissa"), ("ekfac", "fisher"): ("true", "empirical"),
            ("group_trak", "kernel"): ("group", "signed", "exact")}
CLASSIFIER_ONLY = ("trak", "influence", "ekfac", "group_trak")
"""The methods that need a classifier (logits ``[n, C]``, cross-entropy loss)."""
GROUP_METHODS = ("group_trak", "group_tracin")
"""The methods that score groups of training points (they need ``groups``)."""


class GroupScorer(NamedTuple):
    """A group method's scorer: per-target scores ``[K, m]``, and a property's scores ``[K]`` from one
    property gradient."""

    points: Scorer
    """``(x_target, y_target) -> [K, m]``."""
    of_property: Callable[[Property], torch.Tensor]
    """``Property -> [K]``."""

    def __call__(self, x_target: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
        return self.points(x_target, y_target)


def property_scores(scorer: Scorer, prop: Property) -> torch.Tensor:
    """Scores ``[rows]`` of a model property: the group scorers' own property path (one property gradient),
    else the property's weighted sum of the per-target score columns (equal by linearity)."""
    if isinstance(scorer, GroupScorer):
        return scorer.of_property(prop)
    s = scorer(prop.inputs, prop.targets)
    return s @ prop.weights.to(s.dtype)


def method_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` over the defaults of method ``name``; an unknown method, key or value raises
    :class:`ConfigError` saying what is valid."""
    if name not in METHODS:
        raise ConfigError(f"unknown data-attribution method {name!r}; choose from: {', '.join(METHODS)}")
    unknown = sorted(set(params) - set(METHODS[name]))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for method {name!r}; "
                          f"valid: {', '.join(METHODS[name]) or 'none'}")
    out = {**METHODS[name], **params}
    for (meth, key), valid in _CHOICES.items():
        if meth == name and out[key] not in valid:
            raise ConfigError(f"{name}:{key}={out[key]!r} is not one of {', '.join(valid)}")
    for key in ("proj_dim", "ensemble", "depth", "max_iter"):
        v = out.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{name}:{key} must be a positive integer, got {v!r}")
    for key in ("damping", "lambda_rel"):
        v = out.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ConfigError(f"{name}:{key} must be a number ≥ 0, got {v!r}")
    return out


def build_scorer(
    name: str,
    params: Mapping[str, Any],
    *,
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    checkpoints: Sequence[TracInCheckpoint] = (),
    ensemble: Callable[[int], Sequence[nn.Module]] | None = None,
    loss: OutputFn = cross_entropy,
    groups: torch.Tensor | None = None,
    seed: int = 0,
) -> Scorer:
    """The scorer of method ``name`` with ``params`` (module docstring) for ``model`` trained on ``train``.

    ``checkpoints`` are the ones saved during training (``tracin``); ``ensemble(k)`` returns k
    independently trained models, ``model`` first (``trak`` with ``ensemble > 1``); ``loss`` is the
    per-example loss (cross-entropy for classifiers, ``grads.next_token_loss`` for sequences — ``trak``,
    ``influence`` and ``ekfac`` need a classifier); ``groups [n]`` holds each training point's group id
    (``group_trak``, ``group_tracin``). The fitting work (Hessian, factors, train features)
    is done here, once; the scorer only featurises targets.
    """
    p = method_params(name, params)
    x, y = train
    gen = torch.Generator().manual_seed(int(seed))
    if name in CLASSIFIER_ONLY and loss is not cross_entropy:
        raise ConfigError(f"{name} needs a classifier (logits [n, C], cross-entropy loss); this world's loss is "
                          f"{getattr(loss, '__name__', loss)} — use random, grad_dot, grad_cos or tracin")
    proj = ProjectionConfig(dim=p["proj_dim"], seed=int(seed)) if "proj_dim" in p else None
    if name in GROUP_METHODS:
        if groups is None:
            raise ConfigError(f"{name} scores groups of training points: give a grouping (groups=…, --groups)")
        if name == "group_tracin" and not checkpoints:
            raise ConfigError("group_tracin needs the checkpoints saved while the model was trained; none were given")
        return (_group_trak if name == "group_trak" else _group_tracin)(p, model, (x, y), groups, checkpoints,
                                                                         ensemble, loss, proj, int(seed))
    if name == "random":
        return lambda xt, yt: torch.randn(x.shape[0], xt.shape[0], generator=gen)
    if name in ("grad_dot", "grad_cos", "tracin"):
        if name == "tracin" and not checkpoints:
            raise ConfigError("tracin needs the checkpoints saved while the model was trained; none were given "
                              "(grad_dot is the one-checkpoint, η = 1 variant on the final model)")
        cks = checkpoints if name == "tracin" else [TracInCheckpoint(model.state_dict(), 1.0)]
        return lambda xt, yt: tracin.tracin_cp(model, cks, (x, y), (xt, yt), out_fn=loss, projection=proj,
                                               cosine=name == "grad_cos")
    if name == "trak":
        if p["ensemble"] > 1 and ensemble is None:
            raise ConfigError(f"trak:ensemble={p['ensemble']} needs independently trained models (ensemble=...)")
        models = list(ensemble(p["ensemble"])) if ensemble is not None else [model]
        cks = []
        for m in models:
            phi, q = trak.trak_featurize(m, x, y, projection=proj)
            cks.append(trak.trak_finalize(phi, q, lambda_reg=p["lambda_rel"] * float((phi * phi).sum())))
        return lambda xt, yt: trak.trak_scores(cks, [trak.trak_featurize(m, xt, yt, projection=proj)[0]
                                                     for m in models])
    if name == "ekfac":
        f = ekfac.fit_ekfac(model, x, y, fisher=p["fisher"], damping=p["damping"], generator=gen)
        return lambda xt, yt: ekfac.ekfac_scores(model, f, (x, y), (xt, yt))
    return _influence(p, model, x, y, gen)


def _influence(p: dict[str, Any], model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> Scorer:
    g_train = grads.per_example_grads(model, x, y)
    damping = float(p["damping"])
    if p["solver"] == "explicit":
        h = influence.loss_hessian(model, x, y)

        def solve(b: torch.Tensor) -> torch.Tensor:
            return influence.solve_explicit(h, b, damping=damping)
    elif p["solver"] == "cg":
        hvp = influence.make_hvp(model, x, y)

        def solve(b: torch.Tensor) -> torch.Tensor:
            return influence.solve_cg(hvp, b, damping=damping, max_iter=p["max_iter"])
    else:
        scale = 1.2 * (influence.spectral_norm(influence.make_hvp(model, x, y), g_train.shape[1], generator=gen)
                       + damping)

        def hvp_batch(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return influence.make_hvp(model, x[idx], y[idx])(v)

        def solve(b: torch.Tensor) -> torch.Tensor:
            return influence.solve_lissa(hvp_batch, b, x.shape[0], damping=damping, scale=scale, depth=p["depth"],
                                         batch_size=128, generator=gen)

    return lambda xt, yt: influence.influence_scores(g_train, solve(grads.per_example_grads(model, xt, yt).T))


def _group_trak(p: dict[str, Any], model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], groups: torch.Tensor,
                checkpoints: Sequence[TracInCheckpoint], ensemble: Callable[[int], Sequence[nn.Module]] | None,
                loss: OutputFn, proj: ProjectionConfig, seed: int) -> GroupScorer:
    """Group TRAK on the generic (dense) path, both sides; the checkpoints are built once here."""
    if p["ensemble"] > 1 and ensemble is None:
        raise ConfigError(f"group_trak:ensemble={p['ensemble']} needs independently trained models (ensemble=...)")
    models = list(ensemble(p["ensemble"])) if ensemble is not None else [model]
    roots = [math.sqrt(select_parameters(m).numel) for m in models]
    width = proj.dim or select_parameters(model).numel  # λ relative to the trace = mean diagonal · width
    cks = [group_trak_checkpoint(m, *train, groups, projection=proj, kernel=p["kernel"], seed=seed + i,
                                 lambda_reg=p["lambda_rel"] * width) for i, m in enumerate(models)]
    return GroupScorer(
        lambda xt, yt: trak.trak_scores(cks, [featurize(m, xt, yt, projection=proj, out_fn=margin, method="dense") / r
                                              for m, r in zip(models, roots)]),
        lambda prop: trak.trak_scores(cks, [property_features(m, prop, projection=proj) / r
                                            for m, r in zip(models, roots)])[:, 0])


def _group_tracin(p: dict[str, Any], model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], groups: torch.Tensor,
                  checkpoints: Sequence[TracInCheckpoint], ensemble: Callable[[int], Sequence[nn.Module]] | None,
                  loss: OutputFn, proj: ProjectionConfig | None, seed: int) -> GroupScorer:
    """Group TracInCP, Σ_k η_k φ_G(θ_k)·g(θ_k) with loss gradients; group features built once here."""
    proj = proj if proj is not None else ProjectionConfig(dim=None)
    work = copy.deepcopy(model)
    lrs, feats = [ck.lr for ck in checkpoints], []
    for ck in checkpoints:
        work.load_state_dict(ck.state)
        feats.append(group_features(work, *train, groups, projection=proj, out_fn=loss))

    def targets(fn: Callable[[nn.Module], torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for ck in checkpoints:
            work.load_state_dict(ck.state)
            out.append(fn(work))
        return out

    return GroupScorer(
        lambda xt, yt: tracin.tracin_scores(feats, targets(lambda m: featurize(m, xt, yt, projection=proj, out_fn=loss,
                                                                                method="dense")), lrs=lrs),
        lambda prop: tracin.tracin_scores(feats, targets(lambda m: property_features(m, prop, projection=proj,
                                                                                      out_fn=loss)), lrs=lrs)[:, 0])
