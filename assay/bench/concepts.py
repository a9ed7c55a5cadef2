"""The concepts family: SpLiCE (Bhalla, Oesterling, Srinivas, Calmon & Lakkaraju 2024, "Interpreting CLIP
with Sparse Linear Concept Embeddings", arXiv 2402.10376) scored against planted concept codes.

World: :class:`assay.worlds.two_modality.TwoModalityWorld` — queries are sparse nonnegative mixes of planted
concept vectors plus a query-modality offset and noise; the dictionary is built from the concepts' "name"
embeddings, which carry another modality's offset. Methods:

- ``splice:lam=…`` — SpLiCE with both centrings (dictionary rows and queries), the paper's method;
- ``splice_uncentred:lam=…`` — the same lasso without centring (rows only normalised, queries only
  normalised): the modality offsets are left in, which is what the centring step exists to remove;
- ``nnls`` — centred, nonnegative least squares without the ℓ1 term (scipy's Lawson–Hanson ``nnls``): the
  role of sparsity.

Metrics (:mod:`assay.evaluate`): support ``f1`` / ``precision`` / ``recall`` against the planted support, the
code's ``l0``, and the recomposition ``cosine`` with the (normalised) query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from assay.bench.runner import BenchResult, RunContext, check_params, expand_with, summary_rows
from assay.bench.spec import SpecRun, parameter_defaults, world_params
from assay.config import ConfigError

__all__ = ["ConceptSettings", "ConceptFamily", "FAMILY", "PreparedWorld", "nnls_codes"]

METHODS = {"splice": {"lam": 0.25}, "splice_uncentred": {"lam": 0.25}, "nnls": {}}
"""Method name → its parameters and their defaults."""
WORLD_NAMES = ("two_modality",)


@dataclass(frozen=True, kw_only=True)
class ConceptSettings:
    """The run budget of a concepts bench."""

    n_eval: int = 256
    """Queries decomposed and scored per (world, seed)."""
    n_reference: int = 512
    """Reference queries the query-modality mean is computed from (a separate draw)."""
    plots: bool = True
    """Draw the plots (matplotlib; SVG)."""

    def __post_init__(self) -> None:
        if self.n_eval < 1 or self.n_reference < 1:
            raise ConfigError(f"n_eval and n_reference must be >= 1, got {self.n_eval}, {self.n_reference}")


class PreparedWorld(NamedTuple):
    """A world drawn for one seed."""

    world: Any
    """The :class:`TwoModalityWorld`."""
    queries: torch.Tensor
    """Evaluation queries ``[n, d]``."""
    support: torch.Tensor
    """Their planted support ``[n, c]`` (bool)."""
    query_mean: torch.Tensor
    """Mean normalised query of the reference draw ``[d]``."""


def nnls_codes(C: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """argmin_{w ≥ 0} ‖Cᵀw − z‖ per query row (scipy's Lawson–Hanson NNLS), ``[B, c]``."""
    from scipy.optimize import nnls

    A = C.T.double().numpy()
    return torch.stack([torch.from_numpy(nnls(A, zi)[0]) for zi in z.double().numpy()]).to(z.dtype)


class ConceptFamily:
    """SpLiCE centred / uncentred / NNLS × the two-modality world (module docstring)."""

    name = "concepts"
    title = "Concept decomposition bench (SpLiCE): planted support recovery across a modality gap"
    worlds = WORLD_NAMES
    methods = ("splice:lam=0.05|0.1|0.2|0.3|0.5", "splice_uncentred:lam=0.05|0.1|0.2|0.3|0.5", "nnls")
    metrics = ("f1", "precision", "recall", "l0", "cosine")
    settings_type = ConceptSettings

    def world_names(self) -> dict[str, dict[str, Any]]:
        from assay.worlds.two_modality import TwoModalityConfig

        return {"two_modality": parameter_defaults(TwoModalityConfig, exclude=("seed",))}

    def method_names(self) -> tuple[str, ...]:
        return tuple(METHODS)

    def expand(self, spec: str) -> list[SpecRun]:
        runs = expand_with(METHODS)(spec)
        for run in runs:
            params = check_params(run, METHODS[run.name])
            if "lam" in params and not float(params["lam"]) >= 0:
                raise ConfigError(f"lam must be >= 0 in {spec!r}, got {params['lam']}")
        return runs

    def prepare(self, world: str, seed: int, settings: ConceptSettings) -> PreparedWorld:
        from assay.concepts.dictionary import modality_mean
        from assay.worlds.base import make_generator
        from assay.worlds.two_modality import TwoModalityConfig, TwoModalityWorld

        _, params = world_params(world, self.world_names())
        w = TwoModalityWorld(TwoModalityConfig(**{**params, "seed": seed}))
        g = make_generator(10_000 + seed)
        ref = w.sample(settings.n_reference, generator=g).inputs
        batch = w.sample(settings.n_eval, generator=g)
        return PreparedWorld(w, batch.inputs, batch.labels["support"], modality_mean(ref))

    def score(self, prepared: PreparedWorld, run: SpecRun, ctx: RunContext) -> dict[str, float]:
        from assay.concepts.dictionary import from_embeddings, normalise
        from assay.concepts.splice import Splice, SpliceConfig
        from assay.evaluate.reconstruction import reconstruction_metrics
        from assay.evaluate.support import support_recovery

        params = check_params(run, METHODS[run.name])
        w = prepared.world
        centred = run.name != "splice_uncentred"
        dic = from_embeddings(w.names, w.name_embeddings, query_mean=prepared.query_mean if centred else None,
                              centred=centred)
        lens = Splice(dic, SpliceConfig(lam=float(params.get("lam", 0.0)), centre=centred))
        if run.name == "nnls":
            code = nnls_codes(dic.rows, dic.centre_queries(prepared.queries))
        else:
            code = lens.encode(prepared.queries)
        s = support_recovery(code, prepared.support)
        rec = reconstruction_metrics(normalise(prepared.queries), lens.decode(code))
        return {"f1": s.f1, "precision": s.precision, "recall": s.recall, "l0": s.l0, "cosine": rec.cosine}

    def section(self, result: BenchResult) -> Any:
        from assay.report import Plot, Section, Table

        cols, rows = summary_rows(result, self.metrics)
        n = max((s["n"] for s in result.summary), default=0)
        tables = [Table(f"Support recovery (mean [95% interval] over {n} seed(s))", cols, rows)]
        plots = [Plot(caption, path) for caption, path in _draw(result)] if result.settings.plots else []
        s = result.settings
        notes = [f"{len(result.runs)} runs; {s.n_eval} evaluation queries per seed, the query mean from "
                 f"{s.n_reference} reference queries.",
                 "f1 / precision / recall: recovered support (w > 0) against the planted concepts, per query then "
                 "averaged; l0: mean number of nonzero concept weights; cosine: recomposition vs the normalised query.",
                 "splice_uncentred leaves both modality offsets in: the rows share the name-modality offset, the "
                 "queries carry another, so no sparse nonnegative mix of rows matches a query and the support is "
                 "lost — the failure SpLiCE's centring step removes."]
        return Section(self.title, tables, plots, notes)


FAMILY = ConceptFamily()
"""The concepts family for :func:`assay.bench.runner.run_family`."""


def _draw(result: BenchResult) -> list[tuple[str, Any]]:
    """F1 vs λ and cosine vs L0, one line per method (with the 95% interval as bars)."""
    from assay.report import new_figure, save_figure

    by: dict[tuple[str, str, str], dict[str, Any]] = {}
    for s in result.summary:
        by[(s["world"], s["method"], s["level"])] = {**by.get((s["world"], s["method"], s["level"]), {}),
                                                     s["metric"]: s}
    out = []
    fig = new_figure((9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    for method in dict.fromkeys(m for _, m, _ in by):
        pts = sorted(((float(lev.split("=")[1]) if lev.startswith("lam=") else 0.0), v)
                     for (_, m, lev), v in by.items() if m == method and "f1" in v)
        if not pts:
            continue
        lam = [p[0] for p in pts]
        f1 = [p[1]["f1"] for p in pts]
        ax1.errorbar(lam, [f["mean"] for f in f1], yerr=[[f["mean"] - f["ci_low"] for f in f1],
                                                          [f["ci_high"] - f["mean"] for f in f1]],
                     marker="o", capsize=3, label=method)
        ax2.plot([p[1]["l0"]["mean"] for p in pts], [p[1]["cosine"]["mean"] for p in pts], marker="o", label=method)
    ax1.set(xlabel="λ", ylabel="support F1", title="planted support recovery", ylim=(0, 1.05))
    ax2.set(xlabel="L0 (concepts per query)", ylabel="cosine(query, recomposition)", title="sparsity vs fidelity",
            xscale="symlog")
    ax1.legend(fontsize=8)
    out.append(("support F1 vs λ and cosine vs L0, centred and uncentred SpLiCE",
                save_figure(fig, result.out_dir / "plots" / "concepts_recovery.svg", tight=True)))
    return out

