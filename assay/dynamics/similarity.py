"""Mechanistic similarity: do two models share their invariances to input transformations?

Lubana, Bigelow, Dick, Krueger, Tanaka 2023, "Mechanistic Mode Connectivity" (ICML 2023, repo
``EkdeepSLubana/MMC``): two models use the same mechanism when they are invariant to the same input
transformations, and a loss barrier on transformed ("counterfactual") data shows where they differ.
For a classifier f and transformations T (e.g. "randomise the cue", "randomise the content")::

    I_T(f)  = P_x[argmax f(T(x)) = argmax f(x)]          invariance of f to T
    d(f, g) = max_T |I_T(f) − I_T(g)|                     mechanistic distance
    counterfactual barrier_T = B_lin on (T(x), y)          (:mod:`assay.dynamics.connectivity`)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assay.dynamics.connectivity import DEFAULT_ALPHAS, loss_path

__all__ = ["invariance", "MechanisticSimilarity", "mechanistic_similarity", "classification_loss"]

Transform = Callable[[Tensor], Tensor]


@torch.no_grad()
def invariance(model: nn.Module, x: Tensor, transform: Transform) -> float:
    """I_T(f): the fraction of inputs whose predicted class is unchanged by ``transform``."""
    return float((model(transform(x)).argmax(-1) == model(x).argmax(-1)).double().mean())


def classification_loss(x: Tensor, y: Tensor) -> Callable[[nn.Module], Tensor]:
    """``model -> mean cross-entropy on (x, y)``: a loss function for the connectivity paths."""
    return lambda model: F.cross_entropy(model(x), y)


class MechanisticSimilarity(NamedTuple):
    """Invariances of two models and the barriers between them on transformed data."""

    invariance_a: dict[str, float]
    """I_T of model A, per transformation name."""
    invariance_b: dict[str, float]
    """I_T of model B, per transformation name."""
    distance: float
    """d(A, B) = max_T |I_T(A) − I_T(B)| (0: the same invariances)."""
    barriers: dict[str, float]
    """B_lin of the linear path A → B on (T(x), y), per transformation name ("identity" included)."""


def mechanistic_similarity(
    model_a: nn.Module, model_b: nn.Module, x: Tensor, y: Tensor, transforms: Mapping[str, Transform],
    *, vessel: nn.Module, alphas: tuple[float, ...] = DEFAULT_ALPHAS,
) -> MechanisticSimilarity:
    """Invariances of both models to each transformation, their distance, and the counterfactual
    barriers (the identity included). ``vessel`` is a module of the same architecture to evaluate the path in."""
    if not transforms:
        raise ValueError("mechanistic similarity needs at least one transformation")
    inv_a = {name: invariance(model_a, x, t) for name, t in transforms.items()}
    inv_b = {name: invariance(model_b, x, t) for name, t in transforms.items()}
    sa, sb = model_a.state_dict(), model_b.state_dict()
    sets: dict[str, Transform] = {"identity": lambda z: z, **transforms}
    bars = {name: loss_path(vessel, sa, sb, classification_loss(t(x), y), alphas=alphas).barrier
            for name, t in sets.items()}
    distance = max(abs(inv_a[k] - inv_b[k]) for k in transforms)
    return MechanisticSimilarity(inv_a, inv_b, distance, bars)
