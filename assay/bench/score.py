"""Score one fitted method on one world: every ground-truth metric of :mod:`assay.evaluate` that the
world supports, as a flat dict of numbers plus per-concept detection.

Reconstruction (FVU, explained variance, MSE) and sparsity (L0, dead fraction) always; latent
detection (best AUROC/F1, mean F1 of the best 5 latents, k-sparse probes k = 1, 2, 5), entanglement and feature splitting against the
world's concepts; with planted directions also Hungarian recovery (MCC, fraction ≥ 0.9), activation
MCC and intervention selectivity (readout = the true coefficients' linear read-out h Gᵀ); with a
hierarchy, absorption; with a model, CE loss recovered when the site is spliced.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from assay.bench.methods import atoms_of
from assay.bench.worlds import WorldData

__all__ = ["Score", "score_method", "SCALAR_METRICS"]

SCALAR_METRICS = ("l0", "fvu", "explained_variance", "dead_fraction", "recovery_mcc", "fraction_recovered",
                  "activation_mcc", "detect_auroc", "detect_f1", "f1_best5", "probe_auroc_k1",
                  "probe_auroc_k2", "probe_auroc_k5", "absorption", "recall_gap", "concepts_per_latent", "latents_per_concept",
                  "split_mean", "selectivity", "selectivity_relative", "ce_recovered", "fit_seconds")
"""Column order of the results table (a metric a world cannot support is NaN)."""


class Score(NamedTuple):
    """The scores of one run."""

    metrics: dict[str, float]
    """Metric name → value (NaN where the world lacks the ground truth)."""
    per_concept: dict[str, float]
    """Concept name → best single-latent AUROC."""
    best_latent: dict[str, int]
    """Concept name → that latent's index."""


def _f(v: Any) -> float:
    v = float(v)
    return v if math.isfinite(v) else float("nan")


@torch.no_grad()
def score_method(lens, data: WorldData, *, max_detect_rows: int = 4096, probe_ks=(1, 2, 5),
                 n_selectivity: int = 16) -> Score:
    """All metrics of ``lens`` (encode/decode, optional ``atoms``) on ``data`` (module docstring)."""
    from assay.evaluate.absorption import absorption, feature_splitting
    from assay.evaluate.detection import activation_mcc, best_k_f1, latent_detection
    from assay.evaluate.entanglement import entanglement
    from assay.evaluate.reconstruction import reconstruction_metrics
    from assay.evaluate.recovery import feature_recovery
    from assay.evaluate.selectivity import intervention_selectivity
    from assay.evaluate.sparsity import sparsity_metrics

    x = data.eval.float()
    z = lens.encode(x).float()
    x_hat = lens.decode(z).float()
    rec = reconstruction_metrics(x, x_hat)
    sp = sparsity_metrics(z)
    m: dict[str, float] = {k: float("nan") for k in SCALAR_METRICS}
    m.update(l0=sp.l0, fvu=_f(rec.fvu), explained_variance=_f(rec.explained_variance), dead_fraction=sp.dead_fraction)
    rows = slice(0, max_detect_rows)
    zd, yd = z[rows], data.concepts[rows]
    det = latent_detection(zd, yd, data.concept_names, probe_ks=probe_ks)
    m.update(detect_auroc=_f(det.mean_auroc), detect_f1=_f(det.mean_f1), f1_best5=_f(best_k_f1(zd, yd, k=5).mean()))
    for k, v in det.probe_auroc.items():
        m[f"probe_auroc_k{k}"] = _f(v.nanmean())
    ent = entanglement(zd, yd)
    m.update(concepts_per_latent=_f(ent.mean_concepts_per_latent), latents_per_concept=_f(ent.mean_latents_per_concept))
    m["split_mean"] = _f(feature_splitting(zd, yd).mean_split)
    atoms = atoms_of(lens)
    if data.directions is not None and atoms is not None:
        rc = feature_recovery(atoms.float(), data.directions)
        m.update(recovery_mcc=rc.mcc, fraction_recovered=rc.fraction_recovered)
        G = data.directions.float()
        order = torch.argsort(data.concepts.float().mean(0), descending=True)[:n_selectivity]
        pairs = [(int(c), int(det.best_auroc_latent[c])) for c in order]
        sel = intervention_selectivity(lens, x[:1024], pairs, lambda h: h @ G.t(), directions=G)
        m.update(selectivity=_f(sel.mean_selectivity), selectivity_relative=_f(sel.mean_relative))
    if data.acts is not None:
        m["activation_mcc"] = _f(activation_mcc(zd, data.acts[rows])[0])
    if data.parents is not None:
        kw = {"atoms": atoms.float(), "directions": data.directions} if atoms is not None and \
            data.directions is not None else {}
        ab = absorption(zd, yd, data.parents, **kw)
        m.update(absorption=_f(ab.mean_absorption), recall_gap=_f(ab.mean_recall_gap))
    if data.model is not None and data.token_rows is not None:
        from assay.evaluate.spliced import spliced_metrics

        tokens = data.token_rows
        mask = tokens != data.pad_id
        recon = lambda h: lens.decode(lens.encode(h)).to(h.dtype)  # noqa: E731
        m["ce_recovered"] = _f(spliced_metrics(data.model, data.site, [(tokens, mask)], recon).ce_recovered)
    per = {n: _f(v) for n, v in zip(data.concept_names, det.best_auroc.tolist())}
    best = {n: int(i) for n, i in zip(data.concept_names, det.best_auroc_latent.tolist())}
    return Score(m, per, best)
