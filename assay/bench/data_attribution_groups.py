"""Group attribution and property targets on the data-attribution bench (GGDA).

Ley, Srinivas, Zhang, Rusak & Lakkaraju 2024, "Generalized Group Data Attribution" (arXiv 2410.09940):
attribute to groups of training points instead of points, and to a model property instead of a test
point. The classifier worlds (``digits``, ``tabular``) take four parameters for it:

- ``grouping`` — ``none`` (points), ``class`` (one group per class, or with ``group_size`` > 0 each class
  split at random into groups of ≈ ``group_size``), ``random`` (random groups of ``group_size``),
  ``kmeans`` (k-means on the inputs, n / ``group_size`` clusters), ``grad_kmeans`` (Grad-K-Means: k-means on
  the world model's projected loss gradients). With a grouping the retraining subsets are unions of a
  random half of the groups, and LDS is **group-LDS**: pointwise methods' scores are summed over each group
  (the baseline rows), the group methods (``group_trak``, ``group_tracin``) score the groups directly.
- ``target`` — ``points`` (each target point; LDS is the mean over targets) or ``mean`` (the property
  f(θ) = mean loss over the targets, or over those of class ``target_class`` ≥ 0): **property-LDS**, the
  Spearman correlation over retrained subsets between the predicted and the actual change of the property
  (:mod:`assay.data_attribution.property`; group methods use one property gradient, pointwise methods the
  mean of their per-target columns — equal by linearity).

:func:`groups_option` and :func:`target_option` turn the CLI's ``--groups`` / ``--target`` into these
world parameters, validated before any work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from assay.config import ConfigError
from assay.data_attribution.groups import (
    check_groups,
    group_sum,
    groups_by_class,
    groups_by_kmeans,
    random_groups,
)
from assay.data_attribution.property import Property, mean_property
from assay.data_attribution.scorers import Scorer, property_scores
from assay.worlds.base import make_generator

__all__ = ["GROUP_PARAMS", "GROUPINGS", "check_group_params", "groups_option", "target_option", "make_groups",
           "world_property", "lds_metric"]

GROUPINGS = ("none", "class", "random", "kmeans", "grad_kmeans")
"""The groupings a classifier world accepts."""
GROUP_PARAMS: dict[str, Any] = {"grouping": "none", "group_size": 64, "target": "points", "target_class": -1}
"""The classifier worlds' group and target parameters with their defaults."""


def check_group_params(p: dict[str, Any]) -> None:
    """Refuse a bad grouping, group size or target with a :class:`ConfigError` saying what is valid."""
    if p["grouping"] not in GROUPINGS:
        raise ConfigError(f"grouping must be one of {', '.join(GROUPINGS)}, got {p['grouping']!r}")
    size = p["group_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or (size == 0 and p["grouping"] != "class"):
        raise ConfigError(f"group_size must be an integer ≥ 1 (0 only for grouping=class: whole classes), got {size!r}")
    if p["target"] not in ("points", "mean"):
        raise ConfigError(f"target must be points or mean, got {p['target']!r}")
    if not isinstance(p["target_class"], int) or p["target_class"] < -1:
        raise ConfigError(f"target_class must be a class index, or -1 for all targets, got {p['target_class']!r}")


def groups_option(spec: str) -> dict[str, Any]:
    """``--groups NAME[:size=S]`` → world parameters; ``class`` without a size is one group per class, the
    others default to size 64."""
    name, _, rest = spec.strip().partition(":")
    if name not in GROUPINGS[1:]:
        raise ConfigError(f"--groups {spec!r}: the grouping must be one of {', '.join(GROUPINGS[1:])}, optionally "
                          "with :size=S (e.g. kmeans:size=64)")
    size: Any = 0 if name == "class" else GROUP_PARAMS["group_size"]
    if rest:
        key, eq, value = rest.partition("=")
        if key.strip() != "size" or not eq or not value.strip().isdigit():
            raise ConfigError(f"--groups {spec!r}: the only parameter is size=S, a positive integer (e.g. {name}:size=64)")
        size = int(value)
    p = {**GROUP_PARAMS, "grouping": name, "group_size": size}
    check_group_params(p)
    return {"grouping": name, "group_size": size}


def target_option(spec: str) -> dict[str, Any]:
    """``--target points|mean|class=C`` → world parameters (``class=C``: the mean loss over the targets of
    class C)."""
    s = spec.strip()
    if s in ("points", "mean"):
        return {"target": s, "target_class": -1}
    key, eq, value = s.partition("=")
    if key == "class" and eq and value.isdigit():
        return {"target": "mean", "target_class": int(value)}
    raise ConfigError(f"--target {spec!r}: use points (each target point), mean (the mean loss over the targets) or "
                      "class=C (the mean loss over the targets of class C)")


def make_groups(p: dict[str, Any], model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor | None:
    """The world's grouping ``[n]`` of its training points (None for ``grouping=none``), seeded."""
    from assay.data_attribution.featurize import featurize
    from assay.data_attribution.projection import ProjectionConfig

    name, size, n = p["grouping"], p["group_size"], x.shape[0]
    gen = make_generator(seed + 11)
    if name == "none":
        return None
    if name == "random":
        gid = random_groups(n, size, generator=gen)
    elif name == "class":
        n_classes = int(y.max()) + 1
        gid = groups_by_class(y, per_class=max(1, round(n / n_classes / size)) if size else 1, generator=gen)
    else:
        feats = x if name == "kmeans" else featurize(model, x, y, projection=ProjectionConfig(dim=64, seed=seed))
        gid = groups_by_kmeans(feats, max(1, round(n / size)), generator=gen, normalize=name == "grad_kmeans")
    if int(torch.bincount(gid).max()) == n:
        raise ConfigError(f"grouping={name} with group_size={size} puts all {n} training points in one group: "
                          "group-LDS needs at least two groups — use a smaller group_size")
    return check_groups(gid, n)[0]


def world_property(p: dict[str, Any], xt: torch.Tensor, yt: torch.Tensor) -> Property | None:
    """The property of ``target=mean`` (None for ``target=points``)."""
    if p["target"] == "points":
        return None
    c = p["target_class"]
    if c >= 0 and not bool((yt == c).any()):
        raise ConfigError(f"target_class={c}: no target has that class (classes present: "
                          f"{sorted(set(yt.tolist()))})")
    return mean_property(xt, yt, subset=None if c < 0 else yt == c)


def lds_metric(scorer: Scorer, *, group_method: bool, xt: torch.Tensor, yt: torch.Tensor, groups: torch.Tensor | None,
               masks: torch.Tensor, values: torch.Tensor, prop: Property | None) -> tuple[str, float, torch.Tensor | None]:
    """``(metric name, value, per-target scores or None)``: ``lds`` (points), ``group_lds`` (grouped) or
    ``property_lds`` (a property target). ``masks`` are the subsets over the rows scored — points, or groups
    when grouped; a pointwise method's scores are summed over each group first."""
    from assay.evaluate.lds import lds

    def rows(s: torch.Tensor) -> torch.Tensor:
        return s if group_method or groups is None else group_sum(s, groups, masks.shape[1])

    if prop is None:
        s = scorer(xt, yt)
        return ("lds" if groups is None else "group_lds"), lds(rows(s), masks, values).mean, s
    value = values @ prop.weights.to(values.dtype)  # −(the property's mean loss) of each retrained model
    return "property_lds", lds(rows(property_scores(scorer, prop)[:, None]), masks, value[:, None]).mean, None
