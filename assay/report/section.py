"""Report sections: how every command's results join one report.

Each results-producing command (``assay probe``, ``assay steer``, ``assay lens``, ``assay attribute``,
``assay robustness``, ``assay data-attribution``, ``assay bench``, ``assay sae train``) ends by calling
:func:`write_section` on its output folder. That writes two files:

* ``section.json`` — the section's title, notes, tables, plot file names (plots must live inside
  the folder and are referenced relative to it, so the folder can be moved) and ``created``, the UTC
  time it was written (ISO 8601);
* ``report.html`` — a self-contained report of this one section.

``assay report --runs runs`` (:func:`collect_sections`) then gathers every ``section.json`` under a
folder into one self-contained ``report.html`` with a table of contents, the sections in the order
they were written (oldest first, i.e. the order the commands ran; a re-run command moves to the end).
Sections without a ``created`` time (written by an older assay) come after the dated ones, by folder
path. A corrupted or hand-edited ``section.json`` is refused with its path rather than half-rendered.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from assay.report.html import json_safe, write_report
from assay.report.table import Plot, Table

__all__ = ["Section", "SectionError", "write_section", "read_section", "collect_sections", "SECTION_FILE"]

SECTION_FILE = "section.json"
"""Name of a section's description inside its output folder."""
FEATURES_FILE = "features.json"
"""Name of a section's feature-browser data inside its output folder."""
GRAPHS_FILE = "graphs.json"
"""Name of a section's attribution graphs (a list of circuit-tracer graph JSON documents) inside its folder."""

_FORMAT = 1


class SectionError(ValueError):
    """A ``section.json`` that cannot be read (missing fields, wrong version, plot outside its folder)."""


class Section(NamedTuple):
    """One command's results, as they appear in a report."""

    title: str
    """Heading of the section (e.g. "Probe sweep: SmolLM2-135M sentiment")."""
    tables: Sequence[Table] = ()
    """Tables of the section."""
    plots: Sequence[Plot] = ()
    """Images of the section; each path must be inside the folder the section is written to."""
    notes: Sequence[str] = ()
    """Sentences shown under the heading (settings, what the numbers mean)."""
    features: Mapping[str, Any] | None = None
    """Feature-browser data (``{"title": …, "latents": [...]}``, :mod:`assay.dictionaries.features`), saved as
    ``features.json`` beside ``section.json``; None or no latents: no browser."""
    graphs: Sequence[Mapping[str, Any]] = ()
    """Attribution graphs to draw (circuit-tracer graph JSON: ``metadata`` with ``slug`` and ``prompt_tokens``,
    ``nodes``, ``links``), saved as ``graphs.json`` beside ``section.json``."""


def _json_cell(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def write_section(out_dir: str | Path, section: Section, *, report: bool = True) -> Path:
    """Write ``out_dir/section.json`` (and, by default, ``out_dir/report.html``); returns the json path."""
    from assay.artifact import atomic_write_text

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for p in section.plots:
        path = Path(p.path).resolve()
        if not path.is_file():
            raise SectionError(f"plot {path} does not exist; write the image before the section")
        if not path.is_relative_to(out):
            raise SectionError(f"plot {path} is outside the section folder {out}; save plots inside it")
        plots.append({"caption": str(p.caption), "path": path.relative_to(out).as_posix()})
    data = {
        "format": _FORMAT,
        "title": str(section.title),
        "notes": [str(n) for n in section.notes],
        "tables": [{"title": str(t.title), "columns": [str(c) for c in t.columns],
                    "rows": [[_json_cell(v) for v in r] for r in t.rows]} for t in section.tables],
        "plots": plots,
        "created": datetime.now(UTC).isoformat(timespec="microseconds"),
    }
    if section.features and section.features.get("latents"):
        atomic_write_text(out / FEATURES_FILE, json.dumps(section.features, allow_nan=False))
        data["features"] = FEATURES_FILE
    if section.graphs:
        atomic_write_text(out / GRAPHS_FILE, json.dumps(json_safe(list(section.graphs)), allow_nan=False))
        data["graphs"] = GRAPHS_FILE
    path = out / SECTION_FILE
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")
    if report:
        written = read_section(out)
        write_report(out / "report.html", section.title, sections=[written], features=written.features)
    return path


def read_section(folder: str | Path) -> Section:
    """The section written to ``folder`` by :func:`write_section` (plot paths made absolute)."""
    return _load(Path(folder).resolve())[0]


def _load(folder: Path) -> tuple[Section, datetime | None]:
    """The section in ``folder`` and when it was written (``None`` when section.json has no time)."""
    path = folder / SECTION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SectionError(f"{path} does not exist; run the command that writes this folder first") from None
    except json.JSONDecodeError as e:
        raise SectionError(f"{path} is not valid JSON ({e}); delete it and re-run the command") from None
    try:
        if data["format"] != _FORMAT:
            raise SectionError(f"{path} has format {data['format']!r}, this assay reads {_FORMAT}")
        tables = [Table(t["title"], list(t["columns"]), [list(r) for r in t["rows"]]) for t in data["tables"]]
        plots = []
        for p in data["plots"]:
            ppath = (folder / p["path"]).resolve()
            if not ppath.is_relative_to(folder):
                raise SectionError(f"{path}: plot {p['path']!r} points outside its folder")
            if not ppath.is_file():
                raise SectionError(f"{path}: plot {p['path']!r} is missing; re-run the command")
            plots.append(Plot(p["caption"], ppath))
        features = None
        if data.get("features") is not None:
            fpath = (folder / data["features"]).resolve()
            if not fpath.is_relative_to(folder) or not fpath.is_file():
                raise SectionError(f"{path}: feature data {data['features']!r} is missing or outside its folder; "
                                   "re-run the command")
            try:
                features = json.loads(fpath.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise SectionError(f"{fpath} is not valid JSON ({e}); re-run the command") from None
            if not isinstance(features, dict):
                raise TypeError(f"feature data is {type(features).__name__}, not an object")
        graphs: list = []
        if data.get("graphs") is not None:
            gpath = (folder / data["graphs"]).resolve()
            if not gpath.is_relative_to(folder) or not gpath.is_file():
                raise SectionError(f"{path}: graph data {data['graphs']!r} is missing or outside its folder; "
                                   "re-run the command")
            try:
                graphs = json.loads(gpath.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise SectionError(f"{gpath} is not valid JSON ({e}); re-run the command") from None
            if not isinstance(graphs, list):
                raise TypeError(f"graph data is {type(graphs).__name__}, not a list")
        section = Section(str(data["title"]), tables, plots, [str(n) for n in data["notes"]], features, graphs)
        created = data.get("created")
        if created is not None and not isinstance(created, str):
            raise TypeError(f"'created' is {type(created).__name__}, not str")
    except (KeyError, TypeError) as e:
        raise SectionError(f"{path} is missing or has a malformed field ({e!r}); re-run the command") from None
    if created is None:
        return section, None
    try:
        return section, _utc(datetime.fromisoformat(created))
    except ValueError as e:
        raise SectionError(f"{path}: 'created' is not an ISO 8601 time ({e}); re-run the command") from None


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def collect_sections(runs: str | Path, out: str | Path, *, title: str = "assay report") -> tuple[Path, int]:
    """Gather every ``section.json`` under ``runs`` into one report at ``out``, with a table of contents.

    Sections are ordered by the time they were written (oldest first); sections without a time come
    last, by folder path. Returns the report's path and the number of sections.
    """
    runs = Path(runs)
    if not runs.is_dir():
        raise SectionError(f"{runs} is not a folder; pass the folder holding the commands' output folders")
    root = runs.resolve()
    folders = sorted(p.parent.resolve() for p in root.rglob(SECTION_FILE))
    if not folders:
        raise SectionError(f"no {SECTION_FILE} under {runs}; run e.g. `assay probe` or `assay bench` first")
    loaded = [(_load(f), f) for f in folders]
    loaded.sort(key=lambda x: (x[0][1] is None, x[0][1] or datetime.min.replace(tzinfo=UTC), x[1]))
    sections = [s for (s, _), _ in loaded]
    notes = [f"{len(sections)} section(s) from {runs}, in the order they were written: "
             + ", ".join(f.relative_to(root).as_posix() or "." for _, f in loaded)]
    browsed = [(s, f) for (s, _), f in loaded if s.features]
    if len(browsed) > 1:  # one browser per page: the first; the others stay in their own report.html
        notes.append(f"Feature browser: {browsed[0][0].title}. The other feature browsers are in "
                     + ", ".join((f / "report.html").relative_to(root).as_posix() for _, f in browsed[1:]) + ".")
    features = browsed[0][0].features if browsed else None
    return write_report(out, title, sections=sections, notes=notes, features=features), len(sections)
