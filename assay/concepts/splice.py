"""SpLiCE as a Lens: embeddings ↔ sparse nonnegative codes over a named concept dictionary; concept
interventions and per-class concept histograms.

Bhalla, Oesterling, Srinivas, Calmon & Lakkaraju 2024, "Interpreting CLIP with Sparse Linear Concept
Embeddings (SpLiCE)" (NeurIPS 2024, arXiv 2402.10376). With the dictionary C ``[c, d]`` and the query-side
mean μ (:mod:`assay.concepts.dictionary`):

    encode:  z_c = normalise(normalise(h) − μ),   w = argmin_{w ≥ 0} ‖Cᵀw − z_c‖² + λ‖w‖₁     (solvers)
    decode:  ĥ = normalise(normalise(wC) + μ)                                           (recomposition)

``centre=False`` skips both μ steps (the ablation that shows why centring is needed: without it the
modality offset is decomposed as if it were concepts). The class satisfies :class:`assay.lens.Lens`, so
:func:`assay.lenses.intervene.intervene` takes it as it is; :func:`edit_concepts` applies an
:mod:`assay.lens` edit to embeddings directly (h′ = h + D(w′) − D(w), e.g. ``Ablate`` to remove a concept —
SpLiCE's "remove glasses" intervention), and :func:`concept_histogram` gives the mean code per class
(SpLiCE's tool for finding spurious correlations, e.g. "water" in Waterbirds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from assay.concepts.dictionary import ConceptDictionary, DictionaryError, normalise
from assay.concepts.solvers import SOLVERS, solve
from assay.config import ConfigError
from assay.lens import Ablate, Edit, apply_edit

__all__ = ["SpliceConfig", "Splice", "edit_concepts", "remove_concepts", "ClassHistogram", "concept_histogram"]


@dataclass(frozen=True, kw_only=True)
class SpliceConfig:
    """How SpLiCE decomposes."""

    lam: float = 0.25
    """ℓ1 weight λ of the nonnegative lasso (SpLiCE uses 0.2–0.35 on CLIP; larger → sparser)."""
    centre: bool = True
    """Subtract the query-side mean before decomposing and add it back on recomposition."""
    solver: Literal["batched", "cd", "admm"] = "batched"
    """Solver (:mod:`assay.concepts.solvers`): ``batched`` (working-set ADMM), ``cd`` or ``admm`` (Woodbury)."""
    tol: float = 1e-6
    """Duality-gap tolerance relative to ‖z‖²."""

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ConfigError(f"SpliceConfig.lam must be >= 0, got {self.lam}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"SpliceConfig.solver must be one of {SOLVERS}, got {self.solver!r}")
        if not 0 < self.tol < 1:
            raise ConfigError(f"SpliceConfig.tol must be in (0, 1), got {self.tol}")


class Splice:
    """The SpLiCE lens over a concept dictionary (module docstring); codes are ``[..., n_concepts]``."""

    def __init__(self, dictionary: ConceptDictionary, config: SpliceConfig | None = None) -> None:
        self.dictionary = dictionary
        self.config = config or SpliceConfig()

    @property
    def names(self) -> tuple[str, ...]:
        """Concept names (the code's coordinates)."""
        return self.dictionary.names

    def _mean(self, h: Tensor) -> Tensor:
        return self.dictionary.query_mean.to(h) if self.config.centre else torch.zeros(self.dictionary.d).to(h)

    def encode(self, h: Tensor) -> Tensor:
        """Sparse nonnegative codes ``[..., c]`` of embeddings ``h [..., d]``."""
        self.dictionary.check_queries(h)
        flat = h.reshape(-1, h.shape[-1])
        if flat.shape[0] == 0:
            return h.new_zeros(*h.shape[:-1], len(self.dictionary))
        zc = normalise(normalise(flat) - self._mean(flat))
        C = self.dictionary.rows.to(device=h.device, dtype=h.dtype)
        w = solve(C, zc, self.config.lam, solver=self.config.solver, tol=self.config.tol).w
        return w.reshape(*h.shape[:-1], -1)

    def decode(self, w: Tensor) -> Tensor:
        """Recomposed unit-norm embeddings ``[..., d]`` = normalise(normalise(wC) + μ)."""
        if w.shape[-1] != len(self.dictionary):
            raise DictionaryError(f"codes have {w.shape[-1]} concepts but the dictionary has {len(self.dictionary)}")
        C = self.dictionary.rows.to(device=w.device, dtype=w.dtype)
        return normalise(normalise(w @ C) + self._mean(w))


def edit_concepts(splice: Splice, h: Tensor, edit: Edit, *, keep_residual: bool = True) -> tuple[Tensor, Tensor]:
    """Apply an :mod:`assay.lens` edit to the concepts of embeddings ``h [..., d]``; returns ``(h′, w)`` (w: the
    code before the edit). ``keep_residual``: h′ = h + D(w′) − D(w) (equation (1) of :mod:`assay.lens`, what
    ``intervene`` does: the part of h the code does not explain is kept); otherwise h′ = D(w′), SpLiCE's own
    "zero the concept and recompose" (the unexplained part is dropped too)."""
    if keep_residual:
        return apply_edit(h, splice, edit)
    w = splice.encode(h)
    return (h if edit.changes_nothing else splice.decode(edit.new_code(w, edit.strength))), w


def remove_concepts(splice: Splice, h: Tensor, names: str | Sequence[str], *, keep_residual: bool = True) -> Tensor:
    """``h`` with the named concepts zeroed in its code (an :class:`assay.lens.Ablate` edit; see
    :func:`edit_concepts` for ``keep_residual``)."""
    edit = Ablate(concepts=splice.dictionary.index(names))
    return edit_concepts(splice, h, edit, keep_residual=keep_residual)[0]


class ClassHistogram(NamedTuple):
    """Mean SpLiCE code per class."""

    classes: list[int]
    """Class labels, sorted."""
    names: tuple[str, ...]
    """Concept names."""
    mean_weight: Tensor
    """Mean concept weight per class ``[n_classes, c]``."""
    top: list[list[tuple[str, float]]]
    """Per class, its ``k`` heaviest concepts as (name, mean weight), heaviest first (zero weights left out)."""


def concept_histogram(w: Tensor, labels: Tensor, names: Sequence[str], *, k: int = 10) -> ClassHistogram:
    """Per-class mean of the codes ``w [n, c]`` over examples with integer ``labels [n]``."""
    if w.dim() != 2 or labels.shape != (w.shape[0],):
        raise ValueError(f"need codes [n, c] and labels [n], got {tuple(w.shape)} and {tuple(labels.shape)}")
    if len(names) != w.shape[1]:
        raise ValueError(f"{len(names)} names for {w.shape[1]} concepts")
    classes = sorted(int(c) for c in labels.unique())
    mean = torch.stack([w[labels == c].double().mean(0) for c in classes])
    top = []
    for row in mean:
        vals, idx = row.topk(min(k, row.numel()))
        top.append([(names[i], float(v)) for v, i in zip(vals.tolist(), idx.tolist()) if v > 0])
    return ClassHistogram(classes, tuple(names), mean, top)
