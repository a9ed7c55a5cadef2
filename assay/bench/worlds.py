"""Bench worlds: a spec string → activations with their ground truth (:class:`WorldData`).

A world spec is ``name[:key=value,…]``:

- ``superposition`` — the toy-superposition world (:mod:`assay.worlds.superposition`); keys are its
  config fields (defaults here: n_features 64, d_model 16, p_max 0.2, p_min 0.02). Ground truth: the
  planted directions, coefficients and firing pattern (concepts = features).
- ``hierarchy`` — the same world with parent/child features (default 4 parents with 3 children each
  plus 16 free features: 48 features in d 16) for absorption.
- ``concept_clusters`` — Gaussian concept clusters (:mod:`assay.worlds.concept_clusters`; keys
  ``geometry=separability|heterogeneity``, ``standardise``, ``seed``): the SpaDE worlds of Hindupur et al.
  2025, where ReLU/TopK receptive fields cannot isolate the clusters. Concepts = one column per cluster.
  On ``separability`` (d = 2) methods default to ``expansion=25`` (the paper's 50 latents), ``relu`` to
  ``l1_coef=0.6`` and ``topk`` to ``k=16`` (the best per-latent F1 of each one's sweep, docs/dictionaries.md).
- ``dyck`` / ``expr`` / ``english`` / ``markov`` / ``bijections`` / ``graph`` / ``cyclic`` — a sequence
  world's default tiny transformer from the model zoo (:func:`assay.models.zoo.world_model`, cached),
  activations at ``site`` (default: the last block's residual output) on rows drawn the way the model
  was trained (packed or padded, :func:`assay.models.train.batch_sampler`); padding and BOS positions
  are never used (the BOS activation is an outlier that says nothing about the text). Concepts are
  one-hot per-token labels (:data:`SEQUENCE_CONCEPTS`). Extra keys: ``model_steps`` (training steps of
  the tiny model; default the world's reference), ``context``, ``pool_rows`` (rows of activations to
  draw training batches from), any world config field.

The world's own structure seed is part of its config; the bench seed draws the data.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch
from torch import Tensor

from assay.bench.spec import parse_world_spec
from assay.config import ConfigError
from assay.worlds.base import make_generator

__all__ = ["WorldData", "WORLD_NAMES", "world_parameters", "parse_world", "load_world", "SEQUENCE_CONCEPTS"]

SEQUENCE_CONCEPTS: dict[str, tuple[str, ...]] = {
    "dyck": ("depth", "top"),
    "expr": ("depth", "arity"),
    "english": ("preterminal", "parent"),
    "markov": ("chain", "state"),
    "bijections": ("block", "target_block"),
    "graph": ("layer", "dist_to_goal", "on_valid_path"),
    "cyclic": ("concept",),
}
"""Per sequence world: the per-token labels turned into one-hot concepts."""

_SUPER_DEFAULTS = {"n_features": 64, "d_model": 16, "p_max": 0.2, "p_min": 0.02}
_HIER_DEFAULTS = {"n_features": 32, "d_model": 16, "hierarchy": (3, 3, 3, 3) + (0,) * 16, "p_max": 0.25,
                  "p_min": 0.05, "profile": "constant"}

SEPARABILITY_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {"*": {"expansion": 25}, "relu": {"l1_coef": 0.6},
                                                           "topk": {"k": 16}}
"""Method defaults on the 2-d separability clusters (measured sweeps in docs/dictionaries.md)."""


class WorldData(NamedTuple):
    """Activations of one world with their ground truth, for one bench seed."""

    name: str
    """The world spec."""
    d: int
    """Activation dimension."""
    train: Any
    """``train(n_rows, seed) -> [n_rows, d]``: training activations (fresh samples or pool draws)."""
    eval: Tensor
    """Evaluation activations ``[M, d]``."""
    concepts: Tensor
    """Binary ground-truth concepts of the evaluation rows ``[M, C]``."""
    concept_names: tuple[str, ...]
    """Concept names."""
    acts: Tensor | None
    """True feature coefficients ``[M, m]`` (planted worlds), else None."""
    directions: Tensor | None
    """Planted unit directions ``[m, d]``, else None."""
    parents: Tensor | None
    """Parent of each concept (−1 roots) where concepts form a hierarchy, else None."""
    planted_l0: float | None
    """Expected number of active features per row (planted worlds)."""
    model: Any
    """The tiny model (sequence worlds) for spliced CE, else None."""
    site: str | None
    """The model site the activations come from."""
    token_rows: Tensor | None
    """Evaluation token ids ``[R, T]`` (sequence worlds)."""
    row_index: Tensor | None
    """For each evaluation activation, its ``(row, position)`` in ``token_rows`` ``[M, 2]``."""
    vocab: tuple[str, ...] | None
    """Token strings (sequence worlds)."""
    pad_id: int | None
    """The padding token id (sequence worlds)."""
    method_defaults: dict[str, dict[str, Any]] | None = None
    """Method name → parameters a method spec on this world gets unless it sets them (``"*"``: every
    method), e.g. the dictionary width a small-d world needs; None: the methods' own defaults."""


WORLD_NAMES = ("superposition", "hierarchy", "concept_clusters", *SEQUENCE_CONCEPTS)
"""The worlds a dictionary bench can use."""


def world_parameters() -> dict[str, dict[str, Any]]:
    """Each bench world's parameters with their defaults: a planted world's config fields (the bench's defaults
    over them), a sequence world's config fields plus its model and pooling keys (``model_steps``, ``site``,
    ``context``, ``pool_rows``)."""
    from assay.bench.spec import parameter_defaults
    from assay.worlds import registry
    from assay.worlds.concept_clusters import ConceptClustersConfig
    from assay.worlds.superposition import SuperpositionConfig

    planted = parameter_defaults(SuperpositionConfig)
    out = {"superposition": {**planted, **_SUPER_DEFAULTS}, "hierarchy": {**planted, **_HIER_DEFAULTS},
           "concept_clusters": parameter_defaults(ConceptClustersConfig)}
    for name in SEQUENCE_CONCEPTS:
        out[name] = {**parameter_defaults(registry.get(name).config_cls), "model_steps": None, "site": None,
                     "context": None, "pool_rows": 256}
    return out


def parse_world(spec: str) -> tuple[str, dict[str, Any]]:
    """``"superposition:n_features=128,d_model=32"`` → ``("superposition", {...})`` (tuples as ``a/b/c``)."""
    return parse_world_spec(spec, WORLD_NAMES)


def load_world(spec: str, *, seed: int, n_eval: int = 4096) -> WorldData:
    """Build the data of world ``spec`` for bench seed ``seed``."""
    name, kw = parse_world(spec)
    if name in ("superposition", "hierarchy"):
        return _planted(spec, name, kw, seed, n_eval)
    if name == "concept_clusters":
        return _clusters(spec, kw, seed, n_eval)
    return _sequence(spec, name, kw, seed, n_eval)


def _planted(spec: str, name: str, kw: dict[str, Any], seed: int, n_eval: int) -> WorldData:
    from assay.worlds.superposition import SuperpositionConfig, SuperpositionWorld

    cfg = SuperpositionConfig(**{**(_HIER_DEFAULTS if name == "hierarchy" else _SUPER_DEFAULTS), **kw})
    world = SuperpositionWorld(cfg)

    def train(n: int, s: int) -> Tensor:
        return world.sample(n, generator=make_generator(s)).inputs

    b = world.sample(n_eval, generator=make_generator(10**9 + seed))
    names = tuple(f"f{i}" for i in range(cfg.n_features))
    parents = world.parents if cfg.hierarchy is not None else None
    l0 = float(b.labels["active"].double().sum(1).mean())
    return WorldData(spec, cfg.d_model, train, b.inputs, b.labels["active"], names, b.labels["acts"],
                     world.directions, parents, l0, None, None, None, None, None, None)


def _clusters(spec: str, kw: dict[str, Any], seed: int, n_eval: int) -> WorldData:
    from assay.worlds.concept_clusters import ConceptClustersConfig, ConceptClustersWorld

    world = ConceptClustersWorld(ConceptClustersConfig(**kw))

    def train(n: int, s: int) -> Tensor:
        return world.sample(n, generator=make_generator(s)).inputs

    b = world.sample(n_eval, generator=make_generator(10**9 + seed))
    y = torch.nn.functional.one_hot(b.labels["cluster"], world.n_clusters).bool()
    names = tuple(f"cluster{i}" for i in range(world.n_clusters))
    defaults = SEPARABILITY_METHOD_DEFAULTS if world.config.geometry == "separability" else None
    return WorldData(spec, world.d, train, b.inputs, y, names, None, None, None, 1.0, None, None, None, None, None,
                     None, defaults)


def _sequence(spec: str, name: str, kw: dict[str, Any], seed: int, n_eval: int) -> WorldData:
    from assay.evaluate.detection import one_hot_concepts
    from assay.hooks import run_to
    from assay.models.zoo import world_model
    from assay.worlds import registry

    model_steps = kw.pop("model_steps", None)
    site = kw.pop("site", None)
    context = kw.pop("context", None)
    pool_rows = int(kw.pop("pool_rows", 256))
    cfg_fields = {f.name for f in dataclasses.fields(registry.get(name).config_cls)}
    unknown = sorted(set(kw) - cfg_fields)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} for bench world {name!r}")
    model_over = {"context": int(context)} if context else None
    train_over = {"steps": int(model_steps)} if model_steps else None
    wm = world_model(name, world_overrides=kw or None, model_overrides=model_over, train_overrides=train_over,
                     progress=True)  # a bar while a world model trains on first use
    model, world = wm.model, wm.world
    from assay.models.train import batch_sampler

    draw = batch_sampler(model, world, wm.train_config)
    site = site or f"blocks.{model.config.n_layers - 1}"

    def rows(n: int, s: int):
        b = draw(n, make_generator(s))
        with torch.no_grad():
            h = run_to(model, site, b.inputs)
        text = (b.inputs != world.pad_id) & (b.inputs != world.bos_id)  # never train or score on pad/BOS
        return b, h, text

    pool_batch, pool, keep = rows(pool_rows, 7_000_000 + seed)
    pool = pool[keep]

    def train(n: int, s: int) -> Tensor:
        idx = torch.randint(0, pool.shape[0], (n,), generator=make_generator(s))
        return pool[idx]

    T = pool_batch.inputs.shape[1]
    n_rows = max(1, -(-n_eval // T))
    b, h, mask = rows(n_rows, 9_000_000 + seed)
    labels = {k: b.labels[k] for k in SEQUENCE_CONCEPTS[name]}
    y, names = one_hot_concepts(labels, mask=mask, min_count=5)
    index = mask.nonzero()
    return WorldData(spec, h.shape[-1], train, h[mask], y, names, None, None, None, None, model, site,
                     b.inputs, index, tuple(world.vocab), int(world.pad_id))
