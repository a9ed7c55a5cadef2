"""Contamination forgetting on the bench: benchmark copies seen early in training are forgotten by its end;
the later they were seen, the larger the final accuracy gap to never-seen items.

Bordt, Srinivas, Boreiko & von Luxburg 2025, "How Much Can We Forget about Data Contamination?" (ICML 2025).
The study is :func:`assay.bench.forgetting.forgetting_curves` (one small transformer per insertion window on
the contaminated Markov world, AdamW weight decay 1.0 after the copies — the paper's forgetting mechanism),
run here for one seed. Metrics: ``final_gap_from_<s>`` = contaminated − clean accuracy at the end of training
for the copies inserted in [s, s + ¼]·T, and ``late_minus_early`` = the last window's gap − the first's
(> 0: later copies are remembered better). Curves: contaminated accuracy over training per window, and the
clean holdout's (mean over windows).
"""

from __future__ import annotations

from pathlib import Path

from assay.bench.forgetting import ForgettingConfig
from assay.bench.phenomena.base import Curve, Measurement

__all__ = ["FULL", "QUICK", "PHENOMENON"]

FULL = ForgettingConfig()
"""The documented budget (the study's defaults: 4 windows of 400 updates, ≈ 20 s per seed); ``seeds`` is
replaced by the bench seed."""
QUICK = ForgettingConfig(steps=48, items=4, repetitions=4, n_evals=4)
"""A seconds-long budget for tests (same windows)."""


def _gap_name(start: float) -> str:
    return f"final_gap_from_{start:g}"


class ContaminationPhenomenon:
    """Forgetting of contamination per insertion time (module docstring)."""

    name = "contamination"
    title = "Contamination is forgotten, late copies less (Bordt et al. 2025)"
    claim = ("Bordt et al. 2025: benchmark items inserted early in training are forgotten by its end (with weight "
             "decay), so the accuracy gap between contaminated and clean items grows with how late the copies were "
             "seen. Shown by final_gap_from_0 ≈ 0 and late_minus_early > 0.")
    metrics = (*(_gap_name(s) for s in FULL.insertion), "late_minus_early")

    def measure(self, seed: int, *, quick: bool, run_dir: Path) -> Measurement:
        import dataclasses

        from assay.bench.forgetting import forgetting_curves

        cfg = dataclasses.replace(QUICK if quick else FULL, seeds=(seed,))
        c = forgetting_curves(cfg)
        gaps = c.final_gap[:, 0].tolist()
        metrics = {**{_gap_name(s): g for s, g in zip(cfg.insertion, gaps)}, "late_minus_early": gaps[-1] - gaps[0]}
        steps = tuple(float(s) for s in c.steps.tolist())
        curves = tuple(Curve(f"inserted in [{s:g}, {s + cfg.window_length:g}]·T", "training update",
                             "multiple-choice accuracy", steps, tuple(c.contaminated[i, 0].tolist()))
                       for i, s in enumerate(cfg.insertion))
        clean = Curve("clean holdout (mean over windows)", "training update", "multiple-choice accuracy", steps,
                      tuple(c.clean[:, 0].mean(0).tolist()))
        return Measurement(metrics, (*curves, clean))


PHENOMENON = ContaminationPhenomenon()
"""The ``contamination`` phenomenon of the ``dynamics`` family."""
