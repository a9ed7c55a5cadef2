"""The HTML report: one self-contained file (styles, script and images inlined; no network) with summary
tables, plots and a feature browser.

Safety: every text from data goes through :func:`html.escape` in the server-rendered part; the
browser's data is embedded as JSON in a ``<script type="application/json">`` block with ``<``, ``>``
and ``&`` written as ``\\u003c``, ``\\u003e``, ``\\u0026`` (so ``</script>`` inside a token cannot
close the block), and the script renders it with ``textContent`` only. Plots are embedded as
``data:`` images (SVG, or PNG), which cannot run script. Navigation is hash-driven
(``report.html#latent=5``) and the latent list is paginated (50 per page), so thousands of latents
stay responsive.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["Table", "Plot", "render_report", "write_report", "embed_json", "write_suite_report",
           "summary_table"]


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


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4g}"
    return html.escape("–" if v is None else str(v))


def _table_html(t: Table) -> str:
    head = "".join(f'<th class="{"l" if i < 1 else ""}">{html.escape(str(c))}</th>' for i, c in enumerate(t.columns))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < 1 else ""}">{_cell(v)}</td>' for i, v in enumerate(r))
                   + "</tr>" for r in t.rows)
    return (f"<h3>{html.escape(t.title)}</h3><div class=\"tablewrap\"><table class=\"data\"><thead><tr>{head}</tr>"
            f"</thead><tbody>{body}</tbody></table></div>")


def _plot_html(p: Plot) -> str:
    path = Path(p.path)
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    b64 = base64.b64encode(path.read_bytes()).decode()
    cap = html.escape(p.caption)
    return f'<figure><img alt="{cap}" src="data:{mime};base64,{b64}"><figcaption>{cap}</figcaption></figure>'


def _section_html(s: Any) -> str:
    parts = [f"<h2>{html.escape(str(s.title))}</h2>"]
    parts += [f'<p class="muted">{html.escape(str(n))}</p>' for n in s.notes]
    parts += [_table_html(t) for t in s.tables]
    if s.plots:
        parts.append('<div class="plots">' + "".join(_plot_html(p) for p in s.plots) + "</div>")
    return "<section>" + "".join(parts) + "</section>"


def render_report(title: str, *, tables: Sequence[Table] = (), plots: Sequence[Plot] = (),
                  features: dict[str, Any] | None = None, notes: Sequence[str] = (),
                  sections: Sequence[Any] = ()) -> str:
    """The report's HTML text: notes, summary tables, plots, then one block per
    :class:`assay.bench.section.Section`, then the feature browser."""
    template = resources.files("assay.bench").joinpath("report_template.html").read_text(encoding="utf-8")
    parts = [f'<p class="muted">{html.escape(n)}</p>' for n in notes]
    if tables:
        parts.append("<h2>Summary</h2>" + "".join(_table_html(t) for t in tables))
    if plots:
        parts.append('<h2>Plots</h2><div class="plots">' + "".join(_plot_html(p) for p in plots) + "</div>")
    parts += [_section_html(s) for s in sections]
    if features and features.get("title"):
        parts.append(f'<p class="muted small">Feature browser: {html.escape(str(features["title"]))}</p>')
    data = embed_json({"features": _clean(features) if features else None})
    return (template.replace("{{TITLE}}", html.escape(title)).replace("{{BODY}}", "\n".join(parts))
            .replace("{{DATA}}", data))


def write_report(path: str | Path, title: str, **kw: Any) -> Path:
    """Render and write the report atomically; returns its path."""
    from assay.artifact import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_report(title, **kw))
    return path


SUMMARY_METRICS = ("l0", "fvu", "recovery_mcc", "activation_mcc", "detect_auroc", "detect_f1", "probe_auroc_k1",
                   "probe_auroc_k5", "absorption", "concepts_per_latent", "selectivity_relative", "ce_recovered")
"""Columns of the report's summary tables."""


def summary_table(summary: list[dict[str, Any]], world: str, metrics: Sequence[str] = SUMMARY_METRICS) -> Table:
    """One world's methods × metrics as ``mean ± half-width`` (95% interval over seeds)."""
    idx = {(r["method"], r["level"], r["metric"]): r for r in summary if r["world"] == world}
    keys = list(dict.fromkeys((m, lev) for m, lev, _ in idx))
    present = [m for m in metrics if any(idx.get((a, b, m), {}).get("n") for a, b in keys)]
    rows = []
    for meth, lev in keys:
        row: list[Any] = [f"{meth} ({lev})"]
        for met in present:
            r = idx.get((meth, lev, met))
            if not r or not r["n"]:
                row.append(None)
            else:
                half = (r["ci_high"] - r["ci_low"]) / 2
                row.append(f"{r['mean']:.3f} ± {half:.3f}" if r["n"] > 1 else f"{r['mean']:.3f}")
        rows.append(row)
    n = max((r["n"] for r in idx.values()), default=0)
    return Table(f"{world} (mean ± 95% interval over {n} seed(s))", ["method (level)", *present], rows)


def write_suite_report(out: Path, cfg: Any, runs: list[dict[str, Any]], summary: list[dict[str, Any]]) -> Path:
    """``out/report.html`` for a bench suite: per-world tables, the plots, and the browsed run's latents."""
    worlds = list(dict.fromkeys(r["world"] for r in runs))
    tables = [summary_table(summary, w) for w in worlds]
    plots = [Plot(p.stem.replace("_", " "), p) for p in sorted((Path(out) / "plots").glob("*.svg"))]
    features = None
    for r in runs:
        f = r.get("features_file")
        if f and Path(f).exists():
            features = json.loads(Path(f).read_text())
            break
    notes = [f"{len(runs)} runs: {len(cfg.methods)} method spec(s) x {len(worlds)} world(s) x {len(cfg.seeds)} "
             f"seed(s); SAE steps {cfg.steps}, batch {cfg.batch_size}, {cfg.n_eval} evaluation rows."]
    from assay.bench.section import Section, write_section

    write_section(out, Section("Dictionary bench: ground-truth recovery on worlds", tables, plots, notes),
                  report=False)
    return write_report(Path(out) / "report.html", "assay bench report", tables=tables, plots=plots,
                        features=features, notes=notes)
