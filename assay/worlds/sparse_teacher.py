"""A planted sparse teacher: a ReLU MLP whose weights are zero outside a known support.

The ground truth for pruning rules (the "lottery"/support-recovery view of Frankle & Carbin 2019,
"The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks"; the planted-teacher
set-up of student–teacher studies such as Goldt et al. 2019, "Dynamics of stochastic gradient
descent for two-layer neural networks in the teacher–student setup"): every layer of the teacher
:class:`assay.models.mlp.MLP` keeps exactly round(density · n) of its n weights, at positions drawn
from the seed, with magnitudes in [``min_weight``, 2·``min_weight``]·(fan-in · density)^(−½) and random
signs; biases are zero. Inputs are standard normal, targets are the teacher's outputs (plus optional
Gaussian noise). A densely trained student, pruned to the teacher's sparsity, is scored by the share
of the true support its mask keeps (:func:`support_recovery`), after matching its hidden units to the
teacher's (a student can learn the teacher up to a permutation of each hidden layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from assay.config import ConfigError, check_int_fields
from assay.models.mlp import MLP
from assay.worlds.base import Batch, make_generator

__all__ = ["SparseTeacherConfig", "SparseTeacherWorld", "match_hidden_units", "support_recovery"]


@dataclass(frozen=True, kw_only=True)
class SparseTeacherConfig:
    """Shape and sparsity of the planted teacher."""

    d_in: int = 12
    """Input dimension."""
    hidden: tuple[int, ...] = (16,)
    """Hidden widths of the teacher MLP."""
    d_out: int = 4
    """Output dimension."""
    density: float = 0.25
    """Fraction of each layer's weights that are non-zero (the true support), in (0, 1]."""
    min_weight: float = 1.0
    """Support weights have magnitude in [min_weight, 2·min_weight] before the fan-in scaling."""
    noise: float = 0.0
    """Standard deviation of Gaussian noise added to the targets."""
    seed: int = 0
    """Seed of the teacher's support and weights."""

    def __post_init__(self) -> None:
        check_int_fields(self)
        if min(self.d_in, self.d_out, *self.hidden) < 1:
            raise ConfigError(f"SparseTeacherConfig sizes must be positive, got d_in={self.d_in}, "
                              f"hidden={self.hidden}, d_out={self.d_out}")
        if not 0.0 < self.density <= 1.0:
            raise ConfigError(f"SparseTeacherConfig.density must lie in (0, 1], got {self.density}")
        if not self.min_weight > 0 or self.noise < 0:
            raise ConfigError(f"SparseTeacherConfig needs min_weight > 0 and noise >= 0, got {self.min_weight}, "
                              f"{self.noise}")


class SparseTeacherWorld:
    """Inputs x ~ N(0, I) and targets teacher(x); ``support`` and ``teacher`` are the ground truth."""

    def __init__(self, config: SparseTeacherConfig) -> None:
        self.config = config
        g = make_generator(config.seed)
        self.teacher = MLP(config.d_in, config.hidden, config.d_out, generator=g).eval()
        self.support: dict[str, torch.Tensor] = {}
        """Layer name → boolean mask of the teacher's non-zero weights."""
        with torch.no_grad():
            for name, layer in self.layers():
                n = layer.weight.numel()
                k = max(1, round(config.density * n))
                mask = torch.zeros(n, dtype=torch.bool)
                mask[torch.randperm(n, generator=g)[:k]] = True
                mask = mask.reshape(layer.weight.shape)
                scale = config.min_weight / (layer.in_features * config.density) ** 0.5
                mag = scale * (1 + torch.rand(layer.weight.shape, generator=g))
                sign = torch.randint(0, 2, layer.weight.shape, generator=g) * 2 - 1
                layer.weight.copy_(torch.where(mask, mag * sign, torch.zeros(())))
                layer.bias.zero_()
                self.support[name] = mask
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def layers(self) -> list[tuple[str, nn.Linear]]:
        """The teacher's linear layers, input to output."""
        return [(n, m) for n, m in self.teacher.named_children() if isinstance(m, nn.Linear)]

    @property
    def sparsity(self) -> float:
        """The teacher's global sparsity over its weights (the true sparsity)."""
        zeros = sum(int((~m).sum()) for m in self.support.values())
        return zeros / sum(m.numel() for m in self.support.values())

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        """``n`` standard-normal inputs and the teacher's outputs (+ noise)."""
        x = torch.randn(n, self.config.d_in, generator=generator)
        with torch.no_grad():
            y = self.teacher(x)
        if self.config.noise:
            y = y + self.config.noise * torch.randn(y.shape, generator=generator)
        return Batch(inputs=x, targets=y)


def match_hidden_units(student: MLP, teacher: MLP, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """For each hidden layer ``fc{i}``: the permutation ``perm`` such that student unit ``perm[j]``
    plays teacher unit ``j``, by maximising the summed correlation of their activations on ``inputs``
    (Hungarian assignment, :func:`scipy.optimize.linear_sum_assignment`)."""
    from scipy.optimize import linear_sum_assignment

    from assay.hooks import capture

    sites = [f"act{i}" for i in range(teacher.n_hidden)]
    with torch.no_grad(), capture(student, sites) as s_acts:
        student(inputs)
    with torch.no_grad(), capture(teacher, sites) as t_acts:
        teacher(inputs)
    out = {}
    for i, site in enumerate(sites):
        a, b = t_acts[site], s_acts[site]
        a = (a - a.mean(0)) / (a.std(0) + 1e-8)
        b = (b - b.mean(0)) / (b.std(0) + 1e-8)
        corr = (a.T @ b / len(inputs)).numpy()  # [teacher unit, student unit]
        rows, cols = linear_sum_assignment(-corr)
        out[f"fc{i}"] = torch.as_tensor(cols[rows.argsort()])
    return out


def support_recovery(masks: Mapping[str, torch.Tensor], support: Mapping[str, torch.Tensor],
                     perms: Mapping[str, torch.Tensor] | None = None) -> float:
    """Share of the true support that ``masks`` keep: |kept ∩ support| / |support| over all layers.
    With ``perms`` (from :func:`match_hidden_units`) the student's hidden units are first put in the
    teacher's order: rows of ``fc{i}`` and the matching columns of the next layer."""
    names = list(support)
    hits = total = 0
    for li, name in enumerate(names):
        m = masks[name]
        if perms is not None:
            if name in perms:
                m = m[perms[name]]
            prev = names[li - 1] if li > 0 else None
            if prev in perms:
                m = m[:, perms[prev]]
        if m.shape != support[name].shape:
            raise ValueError(f"mask of layer {name!r} has shape {tuple(m.shape)}, the support {tuple(support[name].shape)}")
        hits += int((m & support[name]).sum())
        total += int(support[name].sum())
    return hits / total
