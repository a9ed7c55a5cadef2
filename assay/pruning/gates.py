"""Trainable gates on neurons or channels: the hard-concrete L0 gate, attached to a model by hooks.

The idea of learning which neurons to keep with a per-neuron gate trained by backpropagation and a
sparsity regulariser is from Srinivas & Babu 2016, "Learning Neural Network Architectures using
Backpropagation" (BMVC 2016, arXiv 1511.05497) and Srinivas, Subramanya & Babu 2017, "Training Sparse
Neural Networks" (CVPR-W 2017, arXiv 1611.06694). The gate implemented here is their well-known
variant, the hard-concrete gate of Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks
through L0 Regularization" (ICLR 2018). With a learnable log α per gate, temperature β and stretch
(γ, ζ) = (−0.1, 1.1):

    training:  u ~ U(0, 1),  s = σ((log u − log(1 − u) + log α)/β),  z = clamp(s·(ζ − γ) + γ, 0, 1)
    test:      z = clamp(σ(log α)·(ζ − γ) + γ, 0, 1)
    E[L0] = Σ P(z ≠ 0) = Σ σ(log α − β·log(−γ/ζ))

A gate multiplies one unit of a site's output (``dim`` picks the unit axis: −1 for a linear layer's
neurons, 1 for a convolution's channels); in training a fresh z is drawn per unit for every example
(axis 0), as in Louizos et al.'s dense layers, or once per forward pass (``per_example=False``).
:meth:`Gates.keep_mask` (units whose test-time gate is nonzero) is the structured mask that removal
consumes; :meth:`Gates.fold` bakes the test-time gates into the layer that reads each site, and
:meth:`Gates.materialize` does that and then removes the closed units physically along their
dependency groups (:func:`assay.pruning.structured.remove_units`; ``keep_mask`` is keyed by the gated
site ``act{i}``, removal by the producing layer ``fc{i}``: :func:`assay.pruning.structured.unit_sites`
maps one to the other).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from assay.hooks import patch

__all__ = ["HardConcreteConfig", "hard_concrete_sample", "hard_concrete_test_gate", "expected_l0",
           "HardConcreteGate", "Gates"]


@dataclass(frozen=True, kw_only=True)
class HardConcreteConfig:
    """The hard-concrete distribution's constants and the gates' start."""

    temperature: float = 2 / 3
    """β; must be > 0 (checked per gate, so the error names the layer)."""
    gamma: float = -0.1
    """Lower end of the stretch interval (< 0, so z = 0 has positive probability)."""
    zeta: float = 1.1
    """Upper end of the stretch interval (> 1, so z = 1 has positive probability)."""
    init_log_alpha: float = 2.0
    """Starting log α of every gate (2.0: P(z ≠ 0) = 0.973, test-time gate 0.957)."""
    dim: int = -1
    """The unit axis of the gated output: −1 for a linear layer's neurons, 1 for conv channels."""
    per_example: bool = True
    """In training, draw the gates afresh for every example (axis 0); False: one draw per forward pass."""

    def __post_init__(self) -> None:
        if not (self.gamma < 0 and self.zeta > 1):
            raise ValueError(f"the stretch needs gamma < 0 < 1 < zeta, got gamma={self.gamma}, zeta={self.zeta}")


def hard_concrete_sample(
    log_alpha: torch.Tensor, *, temperature: float = 2 / 3, gamma: float = -0.1, zeta: float = 1.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One reparameterised draw z of every gate (differentiable in ``log_alpha``)."""
    u = torch.rand(log_alpha.shape, generator=generator, dtype=log_alpha.dtype).to(log_alpha.device)
    u = u.clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / temperature)
    return (s * (zeta - gamma) + gamma).clamp(0, 1)


def hard_concrete_test_gate(log_alpha: torch.Tensor, *, gamma: float = -0.1, zeta: float = 1.1) -> torch.Tensor:
    """The deterministic test-time gate clamp(σ(log α)(ζ − γ) + γ, 0, 1)."""
    return (torch.sigmoid(log_alpha) * (zeta - gamma) + gamma).clamp(0, 1)


def expected_l0(
    log_alpha: torch.Tensor, *, temperature: float = 2 / 3, gamma: float = -0.1, zeta: float = 1.1
) -> torch.Tensor:
    """P(z ≠ 0) per gate, σ(log α − β log(−γ/ζ)); its sum is the expected L0 penalty."""
    return torch.sigmoid(log_alpha - temperature * math.log(-gamma / zeta))


class HardConcreteGate(nn.Module):
    """Gates for the ``n_units`` units of one site: a learnable log α per unit."""

    def __init__(
        self, n_units: int, config: HardConcreteConfig | None = None, *, site: str = "",
        log_alpha: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        cfg = config or HardConcreteConfig()
        if not cfg.temperature > 0:
            raise ValueError(f"gate temperature must be > 0, got {cfg.temperature} for layer {site!r}")
        if n_units <= 0:
            raise ValueError(f"layer {site!r} needs a positive number of gated units, got {n_units}")
        if log_alpha is None:
            log_alpha = torch.full((n_units,), float(cfg.init_log_alpha))
        elif log_alpha.shape != (n_units,):
            raise ValueError(f"log_alpha for layer {site!r} must have shape ({n_units},) (one per unit), "
                             f"got {tuple(log_alpha.shape)}")
        self.config, self.site = cfg, site
        self.log_alpha = nn.Parameter(log_alpha.detach().clone().float())
        self.generator: torch.Generator | None = None

    def gate(self, n_draws: int = 1) -> torch.Tensor:
        """``n_draws`` sampled gates [n_draws, n_units] in training mode; the test-time gate [1, n_units] in
        eval mode."""
        c = self.config
        if self.training:
            log_alpha = self.log_alpha.expand(n_draws, -1)
            return hard_concrete_sample(log_alpha, temperature=c.temperature, gamma=c.gamma, zeta=c.zeta,
                                        generator=self.generator)
        return hard_concrete_test_gate(self.log_alpha, gamma=c.gamma, zeta=c.zeta)[None]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dim = self.config.dim % h.dim()
        n = self.log_alpha.numel()
        if h.shape[dim] != n:
            raise ValueError(f"layer {self.site!r} output has {h.shape[dim]} units along dim {self.config.dim} "
                             f"(shape {tuple(h.shape)}) but its gate has {n}")
        per_example = self.training and self.config.per_example and dim != 0
        z = self.gate(h.shape[0] if per_example else 1)
        shape = [1] * h.dim()
        shape[dim] = n
        if per_example:
            shape[0] = h.shape[0]
        return h * z.to(h.dtype).view(shape)

    def expected_l0(self) -> torch.Tensor:
        """Σ P(z ≠ 0) over this site's units (differentiable)."""
        c = self.config
        return expected_l0(self.log_alpha, temperature=c.temperature, gamma=c.gamma, zeta=c.zeta).sum()

    def keep_mask(self) -> torch.Tensor:
        """Boolean [n_units]: units whose test-time gate is nonzero."""
        c = self.config
        return hard_concrete_test_gate(self.log_alpha.detach(), gamma=c.gamma, zeta=c.zeta) > 0


class Gates(nn.Module):
    """Hard-concrete gates on several sites of a model, attached by forward hooks.

    ``sizes`` maps each site (a module path whose output is gated, e.g. ``"act0"``) to its number of
    units. Train the gates' ``log_alpha`` (``gates.parameters()``) together with, or instead of, the
    model's weights, adding ``λ · gates.expected_l0()`` to the loss.
    """

    def __init__(
        self, sizes: Mapping[str, int], config: HardConcreteConfig | None = None, *,
        log_alpha: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not sizes:
            raise ValueError("Gates needs at least one site to gate")
        unknown = set(log_alpha or {}) - set(sizes)
        if unknown:
            raise ValueError(f"log_alpha given for sites that are not gated: {sorted(unknown)}")
        self.sites = tuple(sizes)
        self.gates = nn.ModuleList(
            HardConcreteGate(n, config, site=site, log_alpha=(log_alpha or {}).get(site)) for site, n in sizes.items()
        )

    def __getitem__(self, site: str) -> HardConcreteGate:
        return self.gates[self.sites.index(site)]

    @contextmanager
    def attached(self, model: nn.Module, *, generator: torch.Generator | None = None) -> Iterator[nn.Module]:
        """Gate ``model``'s sites during forward passes inside the block (hooks removed on exit).

        Training mode of the *gates* picks sampled (``gates.train()``) or test-time (``gates.eval()``)
        gates; samples are drawn from ``generator``.
        """
        for g in self.gates:
            g.generator = generator
        try:
            with patch(model, dict(zip(self.sites, self.gates, strict=True))):
                yield model
        finally:
            for g in self.gates:
                g.generator = None

    def expected_l0(self) -> torch.Tensor:
        """The expected number of open gates over all sites (the L0 penalty, differentiable)."""
        return torch.stack([g.expected_l0() for g in self.gates]).sum()

    def keep_mask(self) -> dict[str, torch.Tensor]:
        """Per site: the boolean mask of units whose test-time gate is nonzero."""
        return {site: g.keep_mask() for site, g in zip(self.sites, self.gates, strict=True)}

    @torch.no_grad()
    def fold(self, model: nn.Module, readers: Mapping[str, str]) -> nn.Module:
        """A copy of ``model`` whose weights carry the test-time gates, so it needs no hooks.

        ``readers`` maps each gated site to the ``nn.Linear`` or convolution that reads its output
        directly (``{"act0": "out"}``, ``{"act0": "fc1"}``); that layer's input columns (dim 1 of its
        weight) are multiplied by the gates, closed gates giving zero columns. Exact when the site's
        output reaches the reader unchanged, as in assay's MLP.
        """
        missing = set(self.sites) - set(readers)
        if missing:
            raise ValueError(f"fold needs the layer that reads each gated site; missing {sorted(missing)}")
        folded = copy.deepcopy(model)
        for site, gate in zip(self.sites, self.gates, strict=True):
            reader = folded.get_submodule(readers[site])
            if not isinstance(reader, nn.Linear | nn.modules.conv._ConvNd) or getattr(reader, "groups", 1) != 1:
                raise TypeError(f"the reader of gated site {site!r}, {readers[site]!r}, must be an nn.Linear or an "
                                f"ungrouped convolution, got {type(reader).__name__}")
            z = hard_concrete_test_gate(gate.log_alpha, gamma=gate.config.gamma, zeta=gate.config.zeta)
            if reader.weight.shape[1] != z.numel():
                raise ValueError(f"{readers[site]!r} reads {reader.weight.shape[1]} inputs but site {site!r} has "
                                 f"{z.numel()} gates")
            reader.weight.mul_(z.to(reader.weight.dtype).view(1, -1, *[1] * (reader.weight.dim() - 2)))
        return folded

    @torch.no_grad()
    def materialize(self, model: nn.Module, producers: Mapping[str, str] | None = None) -> nn.Module:
        """A physically smaller copy of ``model`` that computes what the gated model computes with the
        test-time gates: every consumer of a gated unit (the slots of its dependency group that read it,
        :func:`assay.pruning.structured.dependency_groups`) is multiplied by the unit's gate, then the
        units whose gate is 0 are removed with :func:`assay.pruning.structured.remove_units`.

        ``producers`` maps each gated site to the layer that produces its units (the group's key;
        default :func:`assay.pruning.structured.unit_sites`: ``act{i}`` → ``fc{i}`` in assay's MLP,
        ``conv{i}`` in SmallCNN). Exact when the units reach their consumers through operations that
        commute with a non-negative per-unit scale (ReLU, max-pooling, flatten), as in those models."""
        from assay.pruning.structured import dependency_groups, remove_units, unit_sites

        producers = dict(producers) if producers is not None else unit_sites(model)
        missing = [s for s in self.sites if s not in producers]
        if missing:
            raise ValueError(f"no producing layer known for gated site(s) {missing}; pass producers={{site: layer}} "
                             f"(known: {producers or 'none'})")
        groups = dependency_groups(model)
        scaled = copy.deepcopy(model)
        keep = {}
        for site, gate in zip(self.sites, self.gates, strict=True):
            layer = producers[site]
            if layer not in groups:
                raise ValueError(f"gated site {site!r} maps to {layer!r}, which has no removable units; removable "
                                 f"layers: {', '.join(groups)}")
            group = groups[layer]
            z = hard_concrete_test_gate(gate.log_alpha, gamma=gate.config.gamma, zeta=gate.config.zeta)
            if z.numel() != group.n_units:
                raise ValueError(f"site {site!r} has {z.numel()} gates but layer {layer!r} has {group.n_units} units")
            for m in group.members:
                if m.dim == 0:
                    continue  # the producer's own rows: removed or kept whole
                t = getattr(scaled.get_submodule(m.module), m.tensor)
                shape = [1] * t.dim()
                shape[m.dim] = -1
                t.mul_(z.to(t).repeat_interleave(m.width).view(shape))
            keep[layer] = z > 0
        return remove_units(scaled, keep)
