"""The report floor: what any layer shows a reader, as one self-contained HTML file.

* :mod:`assay.report.table` — :class:`Table` and :class:`Plot`, the plain data a report shows;
* :mod:`assay.report.section` — :class:`Section`: one command's results written to its folder as
  ``section.json`` + ``report.html``, and :func:`collect_sections` joining them into one report;
* :mod:`assay.report.html` — :func:`render_report` / :func:`write_report`, the HTML writer (escaped
  text, inlined images, a table of contents, the feature browser when there is feature data);
* :mod:`assay.report.figure` — matplotlib figures made and saved without pyplot, so that plotting never
  changes the user's backend (the library never calls ``matplotlib.use``).

A floor: it imports only the standard library, :mod:`assay.artifact` (atomic writes) and, inside the
functions that need it, matplotlib. It knows nothing of the experiments that fill it.
"""

from assay.report.figure import new_figure, save_figure
from assay.report.html import embed_json, json_safe, render_report, write_report
from assay.report.section import (
    SECTION_FILE,
    Section,
    SectionError,
    collect_sections,
    read_section,
    write_section,
)
from assay.report.table import Plot, Table

__all__ = ["json_safe", "Table", "Plot", "Section", "SectionError", "SECTION_FILE", "write_section", "read_section",
           "collect_sections", "render_report", "write_report", "embed_json", "new_figure", "save_figure"]
