"""The HTML report: one self-contained file (styles, script and images inlined; no network) with notes,
summary tables, plots, report sections and, when there is feature data, a feature browser.

Layout: the title, the notes, a table of contents (anchor links, shown when the report has two or more
blocks), then the blocks — "Summary" (tables), "Plots", one block per section, and the feature browser.
Tables scroll inside their own box with the header row kept in view; header and text cells wrap,
numbers do not, and tables of more than :data:`WIDE_COLUMNS` columns use a smaller font.

Safety: every text from data goes through :func:`html.escape` in the server-rendered part; the
browser's data is embedded as JSON in a ``<script type="application/json">`` block with ``<``, ``>``
and ``&`` written as ``\\u003c``, ``\\u003e``, ``\\u0026`` (so ``</script>`` inside a token cannot
close the block), and the script renders it with ``textContent`` only. The templates are filled in
one pass, so a ``{{…}}`` inside data is never substituted. Plots are embedded as ``data:`` images
(SVG, or PNG), which cannot run script. Navigation in the browser is hash-driven
(``report.html#latent=5``) and the latent list is paginated (50 per page), so thousands of latents
stay responsive. A section's attribution graphs (circuit-tracer graph JSON) are drawn as SVG by the
script of ``graph.html`` (positions across, layers up; click a node to see its edges), from the same
kind of embedded JSON and with ``textContent`` only. The assets are package data (``page.html``, ``browser.html``, ``graph.html`` beside this module).
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from assay.report.table import Plot, Table

__all__ = ["render_report", "write_report", "embed_json", "json_safe", "WIDE_COLUMNS"]

WIDE_COLUMNS = 8
"""Tables with more columns than this are set in a smaller font."""


def embed_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>``, ``&`` and U+2028/9 as \\u escapes."""
    s = json.dumps(data, allow_nan=False, default=_default)
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        s = s.replace(a, b)
    return s


def _default(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def json_safe(v: Any) -> Any:
    """``v`` with every NaN or infinite float (inside dicts, lists and tuples too) replaced by None, so that
    strict JSON can hold it; tuples become lists."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    return v


def _asset(name: str) -> str:
    return resources.files("assay.report").joinpath(name).read_text(encoding="utf-8")


def _fill(template: str, **values: str) -> str:
    """Replace each ``{{NAME}}`` of the template in one pass (values are never scanned again)."""
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: values[m.group(1)], template)


def _cell(v: Any) -> tuple[str, str]:
    """(CSS class, escaped text) of one cell: numbers right-aligned and never wrapped."""
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if v is None:
        return "n", "–"
    if isinstance(v, float):
        return "n", "–" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, int):
        return "n", str(v)
    # "0.512 ± 0.013" may break only before the ±
    return "", html.escape(str(v)).replace(" ± ", " ±\u00a0")


def _table_html(t: Table) -> str:
    head = "".join(f'<th class="{"l" if i == 0 else ""}">{html.escape(str(c)).replace("_", "_<wbr>")}</th>'
                   for i, c in enumerate(t.columns))
    rows = []
    for r in t.rows:
        cells = [_cell(v) for v in r]
        rows.append("<tr>" + "".join(f'<td class="{"l" if i == 0 else cls}">{text}</td>'
                                     for i, (cls, text) in enumerate(cells)) + "</tr>")
    wide = " wide" if len(t.columns) > WIDE_COLUMNS else ""
    return (f'<h3>{html.escape(str(t.title))}</h3><div class="tablewrap"><table class="data{wide}"><thead><tr>'
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def _plot_html(p: Plot) -> str:
    path = Path(p.path)
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    b64 = base64.b64encode(path.read_bytes()).decode()
    cap = html.escape(str(p.caption))
    return f'<figure><img alt="{cap}" src="data:{mime};base64,{b64}"><figcaption>{cap}</figcaption></figure>'


def _plots_html(plots: Sequence[Plot]) -> str:
    return '<div class="plots">' + "".join(_plot_html(p) for p in plots) + "</div>"


def _block(anchor: str, heading: str, inner: Sequence[str]) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>{"".join(inner)}</section>'


def _graph_html(doc: Any) -> str:
    """One attribution graph (circuit-tracer graph JSON: metadata, nodes, links), drawn by ``graph.html``'s
    script from the embedded JSON; every text reaches the page through ``textContent``."""
    meta = doc.get("metadata", {})
    title = html.escape(str(meta.get("slug", "attribution graph")))
    prompt = html.escape(" ".join(str(t) for t in meta.get("prompt_tokens", ())))
    return (f'<div class="graphview"><h3>{title}</h3><p class="muted small">prompt: {prompt} — '
            f'{len(doc.get("nodes", ()))} nodes, {len(doc.get("links", ()))} edges (pruned); click a node for its '
            'edges. Blue: positive, red: negative; width ∝ |weight|.</p><div class="gcanvas"></div>'
            '<div class="ginfo"></div><script type="application/json" class="graph-data">'
            f'{embed_json(json_safe(doc))}</script></div>')


def _section_block(anchor: str, s: Any) -> str:
    inner = [f'<p class="muted">{html.escape(str(n))}</p>' for n in s.notes]
    inner += [_table_html(t) for t in s.tables]
    if s.plots:
        inner.append(_plots_html(s.plots))
    inner += [_graph_html(g) for g in getattr(s, "graphs", ())]
    return _block(anchor, str(s.title), inner)


def _toc(entries: Sequence[tuple[str, str]]) -> str:
    items = "".join(f'<li><a href="#{a}">{html.escape(label)}</a></li>' for a, label in entries)
    return f'<nav class="toc" aria-label="contents"><strong>Contents</strong><ol>{items}</ol></nav>'


def render_report(title: str, *, tables: Sequence[Table] = (), plots: Sequence[Plot] = (),
                  features: dict[str, Any] | None = None, notes: Sequence[str] = (),
                  sections: Sequence[Any] = ()) -> str:
    """The report's HTML text.

    ``sections`` are :class:`assay.report.section.Section` values (anything with ``title``,
    ``notes``, ``tables`` and ``plots``), shown in the given order. ``features`` is the feature
    browser's data (``{"title": …, "latents": [...]}``); without latents there is no browser.
    """
    blocks: list[tuple[str, str, str]] = []  # (anchor, heading, html)
    if tables:
        blocks.append(("summary", "Summary", _block("summary", "Summary", [_table_html(t) for t in tables])))
    if plots:
        blocks.append(("plots", "Plots", _block("plots", "Plots", [_plots_html(plots)])))
    for i, s in enumerate(sections, 1):
        blocks.append((f"section-{i}", str(s.title), _section_block(f"section-{i}", s)))
    if features and features.get("latents"):
        sub = features.get("title")
        browser = _fill(_asset("browser.html"), DATA=embed_json({"features": json_safe(features)}),
                        SUBTITLE=f'<p class="muted small">{html.escape(str(sub))}</p>' if sub else "")
        blocks.append(("feature-browser", "Feature browser", browser))
    parts = [f'<p class="muted">{html.escape(str(n))}</p>' for n in notes]
    if len(blocks) >= 2:
        parts.append(_toc([(a, h) for a, h, _ in blocks]))
    parts += [b for _, _, b in blocks]
    if any(getattr(s, "graphs", ()) for s in sections):
        parts.append(_asset("graph.html"))
    return _fill(_asset("page.html"), TITLE=html.escape(str(title)), BODY="\n".join(parts))


def write_report(path: str | Path, title: str, **kw: Any) -> Path:
    """Render the report (keywords as :func:`render_report`) and write it atomically; returns its path."""
    from assay.artifact import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_report(title, **kw))
    return path
