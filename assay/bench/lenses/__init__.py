"""The lenses family of the experiment layer: probes, steering vectors and lenses run and scored.

- :mod:`~assay.bench.lenses.family` — ``assay bench --family lenses``: the encoder–decoder comparison of
  Bhalla, Srinivas, Ghandeharioun & Lakkaraju 2024 ("Towards Unifying Interpretability and Control") on a
  trained cyclic-weekday world model (:mod:`~assay.bench.lenses.cyclic`) and, optionally, SmolLM2 with the
  bundled sentiment sentences (:mod:`~assay.bench.lenses.sentiment`);
- :mod:`~assay.bench.lenses.probe_sweep`, :mod:`~assay.bench.lenses.sentiment_steering`,
  :mod:`~assay.bench.lenses.logit_lens` — the experiments of ``assay probe``, ``assay steer``, ``assay lens``.

``FAMILY`` is imported on first access, so the command line can import the experiment configs cheaply.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FAMILY"]


def __getattr__(name: str) -> Any:
    if name == "FAMILY":
        from assay.bench.lenses.family import FAMILY

        return FAMILY
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
