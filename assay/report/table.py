"""What a report shows: a :class:`Table` of values and a :class:`Plot` (an image file).

Both are plain data, produced by any layer and rendered by :mod:`assay.report.html`; they carry no
HTML (every text in them is escaped when rendered).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["Table", "Plot"]


class Table(NamedTuple):
    """A table to show."""

    title: str
    """Heading above the table."""
    columns: Sequence[str]
    """Column names."""
    rows: Sequence[Sequence[Any]]
    """Cell values (floats are formatted, everything is escaped)."""


class Plot(NamedTuple):
    """An image to show."""

    caption: str
    """Caption under the image."""
    path: Path
    """An .svg or .png file (inlined as a data: URI)."""
