"""The cyclic world's abrupt transition on the bench: answer accuracy sits at chance, then jumps within a
fraction of a decade of training steps, while the loss falls gradually.

Lubana, Kawaguchi, Dick, Tanaka 2025, "A Percolation Model of Emergence" (ICLR 2025) and Park, Okawa, Lee,
Lubana, Tanaka 2024, "Emergence of Hidden Capabilities" (NeurIPS 2024) for the phenomenon; assay's
transition definition (:mod:`assay.dynamics.transitions`: a sigmoid in log-step, *abrupt* when its 10→90%
width is ≤ 0.5 decade and the jump ≥ 3 plateau standard deviations). The experiment is
:func:`assay.bench.dynamics.run_dynamics` on the ``cyclic`` world (a log-spaced checkpoint series in the run
folder, reused on resume). Metrics: ``answer_t0`` and ``answer_width_decades`` of the answer accuracy's fit,
``answer_abrupt`` (1/0), and ``loss_width_decades`` / ``loss_abrupt`` of the held-out loss.
"""

from __future__ import annotations

import math
from pathlib import Path

from assay.bench.phenomena.base import Curve, Measurement

__all__ = ["FULL", "QUICK", "PHENOMENON"]

FULL = {"steps": 1200, "n_checkpoints": 24, "first": 10}
"""The documented budget (``assay dynamics``'s defaults: 1,200 steps, 24 log-spaced checkpoints; ≈ 25 s)."""
QUICK = {"steps": 40, "n_checkpoints": 6, "first": 2, "probe_rows": 16}
"""A seconds-long budget for tests."""


class CyclicPhenomenon:
    """Abrupt learning of the cyclic world's answer (module docstring)."""

    name = "cyclic"
    title = "Cyclic world: an abrupt transition in answer accuracy (emergence)"
    claim = ("Emergence (Lubana et al. 2025; Park et al. 2024): a capability's accuracy can sit at chance and then "
             "rise within a narrow band of training steps. Shown by answer_abrupt = 1 (a 10→90% width "
             "answer_width_decades ≤ 0.5 decade) while the loss is not abrupt (loss_abrupt = 0, wider).")
    metrics = ("answer_t0", "answer_width_decades", "answer_abrupt", "loss_width_decades", "loss_abrupt")

    def measure(self, seed: int, *, quick: bool, run_dir: Path) -> Measurement:
        from assay.bench.dynamics import DynamicsConfig, normalised_curve, run_dynamics

        cfg = DynamicsConfig(world="cyclic", seed=seed, out_dir=Path(run_dir) / "cyclic", **(QUICK if quick else FULL))
        r = run_dynamics(cfg)
        nan = math.nan
        answer, loss = r.transitions.get("answer_acc"), r.transitions.get("eval_loss")
        metrics = {"answer_t0": answer.t0 if answer else nan,
                   "answer_width_decades": answer.width_decades if answer else nan,
                   "answer_abrupt": float(answer.abrupt) if answer else nan,
                   "loss_width_decades": loss.width_decades if loss else nan,
                   "loss_abrupt": float(loss.abrupt) if loss else nan}
        curves = []
        for name, label in (("answer_acc", "answer accuracy, normalised"), ("eval_loss", "held-out loss, normalised")):
            pts = [(s, v) for s, v in r.curves[name] if s > 0]
            norm = normalised_curve(name, [v for _, v in r.curves[name]])
            if norm is not None:
                ys = [float(v) for (s, _), v in zip(r.curves[name], norm) if s > 0]
                curves.append(Curve(label, "training step", "normalised value", tuple(float(s) for s, _ in pts),
                                    tuple(ys), log_x=True))
        return Measurement(metrics, tuple(curves))


PHENOMENON = CyclicPhenomenon()
"""The ``cyclic`` phenomenon of the ``dynamics`` family."""
