"""Matplotlib figures without pyplot: a :class:`matplotlib.figure.Figure` made directly, saved with
its own canvas.

pyplot keeps global state (the current figure, the figure manager) and its backend is process-wide:
a library that sets matplotlib's backend (its ``use`` function) or opens figures through pyplot switches a notebook
user's backend and leaks figures. A bare ``Figure`` needs neither: ``Figure.savefig`` picks the
renderer from the file suffix (Agg for PNG, the SVG renderer for SVG). This is matplotlib's own
recipe for embedding ("Embedding in a web application server").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["new_figure", "save_figure"]


def new_figure(figsize: tuple[float, float], **kw: Any) -> Any:
    """A ``matplotlib.figure.Figure`` of ``figsize`` inches (``kw`` go to ``Figure``); no pyplot involved.

    Draw on it with ``fig.subplots(...)``, then write it with :func:`save_figure`.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'assay[plot]'") from None
    return Figure(figsize=figsize, **kw)


def save_figure(fig: Any, path: str | Path, *, dpi: float | None = None, tight: bool = False) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix; parent folders created) and return the path.

    ``tight=True`` crops to the drawn area (``bbox_inches="tight"``). SVGs are written without a date
    so that the same figure gives the same bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kw: dict[str, Any] = {"metadata": {"Date": None}} if path.suffix.lower() == ".svg" else {}
    if dpi is not None:
        kw["dpi"] = dpi
    if tight:
        kw["bbox_inches"] = "tight"
    fig.savefig(path, **kw)
    return path
