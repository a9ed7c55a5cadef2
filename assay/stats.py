"""TEMPORARY shim (replaced by the statistics floor): t_interval."""

from assay.bench.suite import t_interval

__all__ = ["t_interval"]
