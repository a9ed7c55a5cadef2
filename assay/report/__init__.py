"""TEMPORARY shim (replaced by the report-floor move): the report floor's public names."""

from assay.bench.report import Plot, Table, write_report
from assay.bench.section import Section, SectionError, collect_sections, read_section, write_section

__all__ = ["Plot", "Table", "write_report", "Section", "SectionError", "collect_sections", "read_section",
           "write_section"]
