"""Interventions that check an attribution graph of a Hugging Face decoder against the model itself.

Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language Models" (validating graphs by
feature ablations): the graph's linear prediction of removing a feature (:func:`predicted_ablations`), the change
measured in the real model with nothing, attention, or attention and norms held at the clean run
(:func:`measured_ablation`), in the live replacement model (:func:`spliced`, :func:`replacement_logits`), and the
real model's own first-order prediction under each freezing (:func:`first_order`; attribution patching, Nanda 2023; Kramár et al.
2024, "AtP*"). Used by :func:`assay.bench.circuit_real.circuit_experiment`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from assay.circuits.graph import FeatureBasis, Graph

__all__ = ["Frozen", "FREEZINGS", "graph_freezing", "predicted_ablations", "measured_ablation", "first_order",
           "spliced", "replacement_logits", "pearson", "sign_agreement"]


def predicted_ablations(graph: Graph, features: Sequence[int], token: int) -> torch.Tensor:
    """The graph's linear prediction of the change of logit node ``token`` when each feature node in ``features``
    is set to 0 (alone), [len(features)]: the ablation propagated through feature→feature edges (each edge / its
    source's activation). The features form a DAG (a feature reads only earlier layers and positions), so the
    ablated feature's own inputs never change and one transposed solve serves every ablation:
    Δlogit_f = −a_f · [(I − W)⁻ᵀ u]_f with u the logit row's feature edges / activations."""
    f_sl, lg = graph.slices()[0], graph.slices()[3]
    a = graph.activations.to(torch.float64)
    w = graph.adjacency[f_sl, f_sl].to(torch.float64) / a[None, :]
    w.neg_().diagonal().add_(1.0)  # I − W, in place
    u = graph.adjacency[lg.start + token, f_sl].to(torch.float64) / a
    y = torch.linalg.solve(w.T, u)
    index = torch.as_tensor(list(features), dtype=torch.long)
    return -a[index] * y[index]


class Frozen(NamedTuple):
    """The clean run's attention patterns (``site -> [1, heads, T, T]``) and RMSNorm denominators (``site ->
    [1, T, 1]``): what the graph's local replacement model holds fixed."""

    patterns: dict[str, torch.Tensor]
    denominators: dict[str, torch.Tensor]


FREEZINGS = ("live", "attention frozen", "norms frozen", "attention and norms frozen")
"""What the real model's first-order predictions hold at its clean values (:attr:`CircuitResult.first_order`)."""


def graph_freezing(norms: str, attention: str) -> str:
    """The entry of :data:`FREEZINGS` that holds what a graph with these ``norms`` and ``attention`` (each
    ``"frozen"`` or ``"linearised"``) holds; linearised ones are live to first order."""
    held = [part for part, how in (("attention", attention), ("norms", norms)) if how == "frozen"]
    return f"{' and '.join(held)} frozen" if held else "live"


def _freezing(model: nn.Module, frozen: Frozen | None):
    """A context holding attention at ``frozen.patterns`` and each RMSNorm in ``frozen.denominators`` at its clean
    denominator (empty: that part stays live)."""
    from contextlib import ExitStack

    from assay.circuits.graph.hf_frozen import frozen_patterns, frozen_rms_norms

    stack = ExitStack()
    if frozen is not None and frozen.patterns:
        stack.enter_context(frozen_patterns(model, frozen.patterns))
    if frozen is not None and frozen.denominators:
        stack.enter_context(frozen_rms_norms(model, frozen.denominators))
    return stack


def measured_ablation(model: nn.Module, tokens: torch.Tensor, basis: FeatureBasis, pos: int, feat: int, act: float,
                      token_id: int, clean: float, held: dict[str, torch.Tensor], frozen: Frozen | None = None
                      ) -> float:
    """The real model's change of the demeaned ``token_id`` logit when ``act`` of feature ``feat`` is removed at
    ``pos`` from its MLP output; ``held`` sites return their given outputs; ``frozen``: what is held at the clean
    run (its attention patterns and/or RMSNorm denominators; the MLPs stay live)."""
    from assay import hooks

    direction = act * basis.W_dec[feat]

    def remove(h):
        h = h.clone()
        h[:, pos] -= direction.to(h.dtype)
        return h

    edits = {site: (lambda h, v=v: v.expand_as(h)) for site, v in held.items()}
    with torch.no_grad(), _freezing(model, frozen), hooks.patch(model, {**edits, basis.output_site: remove}):
        logits = model(tokens[None]).logits[0, -1]
    return float(logits[token_id] - logits.mean()) - clean


def first_order(model: nn.Module, tokens: torch.Tensor, sites: Sequence[str], token_id: int,
                frozen: Frozen | None = None) -> dict[str, torch.Tensor]:
    """The gradient of the demeaned ``token_id`` logit with respect to each site's output [T, d]: dotted with a
    change of that output it is the real model's own first-order prediction of the change (attribution patching:
    Nanda 2023; Kramár et al. 2024, "AtP*"). Everything live by default; ``frozen`` holds its attention patterns
    and/or RMSNorm denominators at their clean values — with what the graph holds, only the real MLPs' Jacobians
    separate this linearisation from the graph's (which has the transcoders')."""
    from assay import hooks

    dtype = next(model.parameters()).dtype
    zeros = {s: torch.zeros(tokens.shape[0], model.config.hidden_size, dtype=dtype, requires_grad=True) for s in sites}
    with torch.enable_grad(), _freezing(model, frozen), \
            hooks.patch(model, {s: (lambda h, z=z: h + z) for s, z in zeros.items()}):
        logits = model(tokens[None]).logits[0, -1]
        grads = torch.autograd.grad(logits[token_id] - logits.mean(), list(zeros.values()))
    return dict(zip(zeros, grads, strict=True))


@contextmanager
def spliced(model: nn.Module, bases: Sequence[FeatureBasis], errors: Sequence[torch.Tensor] | None,
            off: tuple[int, int, int, float] | None = None) -> Iterator[list[torch.Tensor]]:
    """Inside the block every basis' output site returns ``decode(σ(pre(input)))`` plus its skip term plus
    ``errors[j]`` (the live replacement model; ``errors`` None leaves the outputs as they are), feature ``off`` =
    (basis, position, feature, fraction) scaled by 1 − fraction in its code. Yields a list each forward pass
    fills with every basis' error in that run (its output − its rebuild). Patches entered inside the block act on
    the spliced outputs."""
    from assay import hooks

    dtype = next(model.parameters()).dtype
    bases = [b.to(dtype) for b in bases]
    inputs: dict[str, torch.Tensor] = {}
    errs: list[torch.Tensor] = []

    def keep(site):
        return lambda h: inputs.__setitem__(site, h) or h

    def rebuild(j, b):
        def fn(h):
            a = b.activation(b.pre(inputs[b.input_site]))
            if off is not None and off[0] == j:
                a = a.clone()
                a[:, off[1], off[2]] *= 1 - off[3]
            out = b.decode(a) + b.skip(inputs[b.input_site])
            errs.append(h - out)
            return h if errors is None else out + errors[j]
        return fn

    edits = {b.input_site: keep(b.input_site) for b in bases} | {b.output_site: rebuild(j, b) for j, b in enumerate(bases)}
    with hooks.patch(model, edits):
        yield errs


def replacement_logits(model: nn.Module, tokens: torch.Tensor, bases: Sequence[FeatureBasis],
                       errors: Sequence[torch.Tensor] | None, off: tuple[int, int, int, float] | None = None
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Last-position logits of the model :func:`spliced` with ``bases``, ``errors`` and ``off`` (``errors`` None:
    the clean run). Returns the logits and each basis' error in this run (its output − its rebuild)."""
    with torch.no_grad(), spliced(model, bases, errors, off) as errs:
        logits = model(tokens[None]).logits[0, -1]
    return logits, errs


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """:func:`assay.stats.pearson` of two vectors, as a float (NaN for fewer than two values)."""
    from assay.stats import pearson as stats_pearson

    return float(stats_pearson(a, b))


def sign_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((torch.sign(a) == torch.sign(b)).double().mean()) if len(a) else float("nan")
