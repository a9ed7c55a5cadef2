"""Probe sweeps across layers: capture every site in one forward pass, pool, fit and cross-validate.

Alain & Bengio 2016, "Understanding intermediate layers using linear classifier probes": a probe per
layer, read out by held-out AUROC, shows where a concept becomes linearly decodable. Layer choice by
k-fold cross-validation (spec §1.2). One forward pass per batch captures all the sites at once and
stops after the deepest of them (``hooks.capture(..., stop_at=...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assay.hooks import capture, resolve
from assay.lenses.pooling import Sequences, pool_last, pool_max, pool_mean
from assay.lenses.probe_eval import CVResult, cross_validate
from assay.lenses.probes import logistic

__all__ = ["deepest_site", "collect_features", "SweepResult", "probe_sweep"]


def deepest_site(model: nn.Module, sites: Sequence[str]) -> str:
    """The site registered last among ``sites`` (module order), used as the early stop."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    for s in sites:
        resolve(model, s)
    return max(sites, key=lambda s: order[s])


def collect_features(
    model: nn.Module,
    sites: Sequence[str],
    batches: Iterable[tuple[Tensor, Tensor | None]],
    *,
    pooling: Literal["mean", "max", "last", "tokens"] = "mean",
    skip_first: bool = False,
    forward: Callable[[nn.Module, Tensor, Tensor | None], object] | None = None,
) -> dict[str, Tensor] | dict[str, Sequences]:
    """Pooled activations ``site -> [N, d]`` over ``batches`` of ``(inputs, attention_mask)``, all
    sites captured in the same forward pass; ``pooling="tokens"`` keeps every token instead (``site ->``
    :class:`~assay.lenses.pooling.Sequences`, batches padded on the right to the longest, for sequence
    probes). ``skip_first`` drops each row's first real token (a BOS) from the pool (from the mask);
    ``forward(model, inputs, mask)`` overrides the call (default ``model(input_ids=…, attention_mask=…)``
    for masked inputs, ``model(inputs)`` otherwise)."""
    sites = list(sites)
    if not sites:
        raise ValueError("collect_features needs at least one site")
    stop = deepest_site(model, sites)
    if pooling not in ("mean", "max", "last", "tokens"):
        raise ValueError(f"pooling must be 'mean', 'max', 'last' or 'tokens', got {pooling!r}")
    out: dict[str, list[Tensor]] = {s: [] for s in sites}
    masks: list[Tensor] = []
    for inputs, mask in batches:
        m = torch.ones(inputs.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
        with torch.no_grad(), capture(model, sites, stop_at=stop) as cap:
            if forward is not None:
                forward(model, inputs, mask)
            elif mask is not None:
                model(input_ids=inputs, attention_mask=mask)
            else:
                model(inputs)
        pm = m.clone()
        if skip_first:  # the first real token (a BOS), wherever padding puts it
            pm[torch.arange(pm.shape[0]), pm.long().argmax(1)] = False
            if not pm.any(1).all():
                raise ValueError("skip_first left a sequence with no token; sequences need at least 2 tokens")
        for s in sites:
            h = cap[s].float()
            if not torch.isfinite(h).all():
                raise ValueError(f"non-finite activations (NaN/inf) captured at site {s!r}")
            if pooling == "tokens":
                out[s].append(h.cpu())
            else:
                pool = {"mean": pool_mean, "max": pool_max, "last": pool_last}[pooling]
                out[s].append(pool(h, pm.to(h.device)).cpu())
        masks.append(pm.cpu())
    if pooling != "tokens":
        return {s: torch.cat(v) for s, v in out.items()}
    T = max(m.shape[1] for m in masks)
    mask = torch.cat([F.pad(m, (0, T - m.shape[1])) for m in masks])
    return {s: Sequences(torch.cat([F.pad(h, (0, 0, 0, T - h.shape[1])) for h in v]), mask) for s, v in out.items()}


class SweepResult(NamedTuple):
    """Cross-validated probe quality per site."""

    sites: tuple[str, ...]
    """The sites, in the order given."""
    results: tuple[CVResult, ...]
    """Cross-validation result per site (AUROC/accuracy with intervals, out-of-fold scores)."""

    def aurocs(self) -> list[float]:
        """Out-of-fold AUROC per site."""
        return [r.auroc.value for r in self.results]

    def best(self) -> str:
        """The site with the highest cross-validated AUROC."""
        return self.sites[max(range(len(self.sites)), key=lambda i: self.results[i].auroc.value)]


def probe_sweep(
    features: dict[str, Tensor] | dict[str, Sequences],
    y: Tensor,
    *,
    fit: Callable[[Any, Tensor], Any] | None = None,
    k: int = 5,
    seed: int = 0,
) -> SweepResult:
    """Cross-validate a probe on each site's features (default: standardised logistic, C=1e-3, on pooled
    ``[N, d]`` features; for :class:`~assay.lenses.pooling.Sequences` pass a sequence-probe ``fit``)."""
    if not features:
        raise ValueError("probe_sweep needs features for at least one site")
    fit = fit or (lambda x, yy: logistic(x, yy, C=1e-3, standardise=True))
    results = [cross_validate(fit, x, y, k=k, seed=seed) for x in features.values()]
    return SweepResult(tuple(features), tuple(results))
