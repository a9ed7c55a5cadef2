"""What one learning-dynamics phenomenon on the bench is: a world, its default tiny model, and the
measurement that shows (or fails to show) the phenomenon its paper describes.

The ``dynamics`` bench family (:mod:`assay.bench.phenomena`) runs each registered phenomenon once per
seed and reports its metrics with intervals over seeds, plus its curves as plots. A phenomenon module
``assay/bench/phenomena/<name>.py`` defines a module-level ``PHENOMENON`` satisfying :class:`Phenomenon`
and registers itself with one line in :data:`assay.bench.phenomena.registry.PHENOMENA`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol

__all__ = ["Curve", "Measurement", "Phenomenon"]


class Curve(NamedTuple):
    """One curve of a phenomenon (e.g. accuracy over training steps), plotted per seed in the report."""

    name: str
    """What the curve is (the legend label), e.g. ``"inserted at 0.25"``."""
    x_label: str
    """Label of the x axis, e.g. ``"training step"``."""
    y_label: str
    """Label of the y axis, e.g. ``"accuracy"``."""
    xs: tuple[float, ...]
    """The x values."""
    ys: tuple[float, ...]
    """The y values (same length as ``xs``)."""
    log_x: bool = False
    """Draw the x axis on a log scale."""


class Measurement(NamedTuple):
    """What one seed of a phenomenon measured."""

    metrics: dict[str, float]
    """Metric name → value (the names listed in :attr:`Phenomenon.metrics`)."""
    curves: tuple[Curve, ...] = ()
    """Curves to plot (may be empty)."""


class Phenomenon(Protocol):
    """One world and its paper's phenomenon, measured on the world's default tiny model."""

    name: str
    """The world spec name in ``assay bench --family dynamics --worlds NAME``."""
    title: str
    """Short title, e.g. ``"Contamination is forgotten (Bordt et al. 2025)"``."""
    claim: str
    """The paper's phenomenon in one or two sentences, and which metric shows it (a report note)."""
    metrics: tuple[str, ...]
    """The metrics :meth:`measure` returns, in display order."""

    def measure(self, seed: int, *, quick: bool, run_dir: Path) -> Measurement:
        """Build the world for ``seed``, train its default tiny model and measure the phenomenon.

        ``quick=True`` is a seconds-long budget for tests (the phenomenon need not show); ``quick=False``
        is the documented budget at which it does (a few CPU minutes at most). ``run_dir`` is a folder
        for checkpoints or other files, kept beside the cache entry and reused on resume."""
        ...
