"""The pruning bench family: which pruning rule finds what is really redundant, on worlds where it is known.

Worlds (:mod:`assay.bench.pruning_worlds`): the planted sparse teacher (truth: its support), the
planted-redundancy MLP (truth: its duplicate pairs) and the digits MLP of the spec (no truth; accuracy).
Methods (:mod:`assay.bench.pruning_methods`): magnitude (layer/global; Zhu & Gupta 2017), LAMP (Lee et al.
2021), SNIP (Lee, Ajanthan & Torr 2019), the gradient-flow measures (Lubana & Dick 2021), random (the
control), the one-shot / cubic / cyclical schedules (Zhu & Gupta 2017; Srinivas, Kuzmin, Nagel, van
Baalen, Skliar & Blankevoort 2022), N:M sparsity (Mishra et al. 2021), data-free surgery (Srinivas & Babu 2015), group-magnitude neuron
removal (Fang et al. 2023), hard-concrete L0 gates (Louizos, Welling & Kingma 2018), and ``early``
(Lubana & Dick's claim that magnitude pruning early in training converges faster than loss preservation).

Metrics: ``support_recovery`` (share of the teacher's support kept at the true sparsity, after matching
hidden units), ``pair_precision`` / ``pair_recall`` / ``output_change`` (planted pairs;
:mod:`assay.evaluate.redundancy`; output change is the FVU of the original outputs by the pruned model's),
``accuracy`` / ``fvu`` after pruning and ``…_finetuned`` after a fixed-mask fine-tune, parameters and MACs
(:mod:`assay.evaluate.cost`), and for ``early`` the mean retraining loss.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from assay.bench.pruning_methods import APPLIES, METHOD_PARAMS, check_method, score_method
from assay.bench.pruning_worlds import WORLD_NAMES, prepare_world
from assay.bench.runner import BenchResult, RunContext, check_params, summary_rows
from assay.bench.spec import SpecRun, expand_spec, parameter_defaults
from assay.config import ConfigError

__all__ = ["PruningSettings", "PruningFamily", "FAMILY", "SUMMARY_METRICS"]

SUMMARY_METRICS = ("support_recovery", "pair_precision", "pair_recall", "output_change", "units_removed", "accuracy",
                   "accuracy_finetuned", "fvu", "fvu_finetuned", "retrain_loss_mean", "sparsity", "params", "nonzero_macs")
"""Columns of the summary table."""

WORLD_METRICS = {
    "sparse_teacher": ("support_recovery", "fvu", "fvu_finetuned", "sparsity", "nonzero_params", "nonzero_macs"),
    "redundancy": ("pair_precision", "pair_recall", "output_change", "units_removed", "params", "macs"),
    "digits_mlp": ("accuracy", "accuracy_finetuned", "retrain_loss_mean", "retrain_loss_first_quarter",
                   "units_removed", "sparsity", "params", "nonzero_macs"),
}
"""The columns shown in each world's table."""


@dataclass(frozen=True, kw_only=True)
class PruningSettings:
    """The run budget of the pruning bench."""

    n_train: int = 4096
    """Training examples of the sparse teacher (and Gaussian inputs of the redundancy world)."""
    n_test: int = 1024
    """Held-out examples of the sparse teacher and the redundancy world."""
    train_steps: int = 1500
    """Adam steps training the dense student of the sparse teacher."""
    lr: float = 3e-3
    """Learning rate training the sparse teacher's student."""
    batch_size: int = 256
    """Minibatch size of training, fine-tuning and scoring batches."""
    digits_steps: int = 1500
    """Adam steps (batch 64) training the digits MLP."""
    digits_lr: float = 1e-3
    """Learning rate training the digits MLP (and retraining in ``early``)."""
    early_steps: int = 50
    """Training steps of the digits MLP before ``early`` prunes it."""
    retrain_steps: int = 300
    """Steps retraining after ``early`` prunes."""
    finetune_steps: int = 300
    """Fixed-mask fine-tuning steps after pruning; also a schedule's whole budget (80% pruning, 20% fine-tune)."""
    finetune_lr: float = 1e-3
    """Fine-tuning learning rate."""
    score_batches: int = 4
    """Batches of the training data the gradient-based scores average over (SNIP uses the first)."""
    gate_steps: int = 1000
    """Steps training L0 gates (and the weights) on the redundancy world."""
    gate_lr: float = 0.02
    """Weight learning rate while training gates (the gates' own is 0.05)."""
    plots: bool = True
    """Draw the plots."""

    def __post_init__(self) -> None:
        ints = ("n_train", "n_test", "train_steps", "batch_size", "digits_steps", "retrain_steps", "finetune_steps",
                "score_batches", "gate_steps")
        bad = [n for n in ints if getattr(self, n) < 1]
        if bad:
            raise ConfigError(f"PruningSettings fields {', '.join(bad)} must be >= 1")
        if not 0 <= self.early_steps < self.digits_steps:
            raise ConfigError(f"early_steps must lie in [0, digits_steps), got {self.early_steps}")
        if self.finetune_steps < 5:
            raise ConfigError("finetune_steps must be >= 5 (a schedule prunes over 80% of it, in up to 3 cycles)")


class PruningFamily:
    """Pruning rules × planted worlds (module docstring)."""

    name = "pruning"
    title = "Pruning bench: planted support, planted redundancy, digits"
    worlds = WORLD_NAMES
    methods = ("dense", "magnitude:scope=layer|global", "lamp", "snip",
               "flow:measure=loss_preservation|biased_loss|grasp|grad_preserve", "random", "nm:n=1|2",
               "schedule:kind=one_shot|cubic|cyclical", "schedule:kind=cubic|cyclical,sparsity=0.95",
               "surgery", "neuron_magnitude", "neuron_random", "gates", "early:measure=magnitude|loss_preservation")
    metrics = SUMMARY_METRICS
    settings_type = PruningSettings

    def world_names(self) -> dict[str, dict[str, Any]]:
        from assay.models.planted_redundancy import PlantedRedundancyConfig
        from assay.worlds.sparse_teacher import SparseTeacherConfig

        return {"sparse_teacher": parameter_defaults(SparseTeacherConfig, exclude=("seed",)),
                "redundancy": parameter_defaults(PlantedRedundancyConfig), "digits_mlp": {"hidden": (128, 64)}}

    def method_names(self) -> Collection[str]:
        return tuple(METHOD_PARAMS)

    def expand(self, spec: str) -> list[SpecRun]:
        runs = list(expand_spec(spec, METHOD_PARAMS))
        for run in runs:
            check_method(run.name, check_params(run, METHOD_PARAMS[run.name]))
        return runs

    def prepare(self, world: str, seed: int, settings: PruningSettings) -> Any:
        return prepare_world(world, seed, settings)

    def score(self, prepared: Any, run: SpecRun, ctx: RunContext) -> dict[str, float]:
        return score_method(run.name, check_params(run, METHOD_PARAMS[run.name]), prepared, ctx)

    def section(self, result: BenchResult) -> Any:
        from assay.report import Section, Table

        tables, skipped = [], []
        worlds = list(dict.fromkeys(r["world"] for r in result.runs))
        for world in worlds:
            mine = [s for s in result.summary if s["world"] == world]
            if not mine:
                skipped.append(world)
                continue
            base = world.partition(":")[0]
            metrics = [m for m in WORLD_METRICS.get(base, SUMMARY_METRICS) if any(s["metric"] == m for s in mine)]
            cols, rows = summary_rows(result._replace(summary=mine), metrics)
            n = max(s["n"] for s in mine)
            tables.append(Table(f"{world} (mean [95% interval] over {n} seed(s))", cols[1:], [r[1:] for r in rows]))
        plots = _plots(result) if result.settings.plots else []
        s = result.settings
        notes = [
            f"{len(result.runs)} runs. Methods score only where they apply: "
            + "; ".join(f"{w}: {', '.join(m)}" for w, m in APPLIES.items()) + ".",
            f"sparse_teacher: a dense student trained {s.train_steps} Adam steps on the teacher's outputs, pruned at "
            "the teacher's true sparsity over all its weights; support_recovery is the share of the true support "
            "kept after matching hidden units (random pruning keeps 1 − sparsity in expectation); fvu is the "
            "test error over the targets' variance, after pruning and after a fixed-mask fine-tune of "
            f"{s.finetune_steps} steps. SNIP prunes at initialisation and then trains the sparse network.",
            "redundancy: the planted MLP pruned to its number of planted copies (gates: as many as the L0 penalty "
            "closes); a pair counts when exactly one of its units is removed; output_change is the FVU of the "
            "original outputs by the smaller model's on Gaussian inputs.",
            f"digits_mlp: the 64→128→64→10 MLP on the 8×8 digits trained {s.digits_steps} steps; unstructured "
            "methods at 90% sparsity unless given; schedules prune while fine-tuning for "
            f"{s.finetune_steps} steps (80% pruning, cubic = one cycle of the cyclical schedule); neuron methods "
            f"remove half of each hidden layer; early prunes half of each hidden layer after {s.early_steps} steps "
            f"and retrains {s.retrain_steps} steps (retrain_loss_mean: lower = faster convergence).",
        ]
        if skipped:
            notes.append(f"no method applied to: {', '.join(skipped)}.")
        return Section(self.title, tables, plots, notes)


def _plots(result: BenchResult) -> list[Any]:
    """A bar chart per world of its headline metric by method level (mean and 95% interval)."""
    from assay.report import Plot, new_figure, save_figure

    headline = {"sparse_teacher": "support_recovery", "redundancy": "pair_recall", "digits_mlp": "accuracy_finetuned"}
    plots = []
    for world in dict.fromkeys(r["world"] for r in result.runs):
        metric = headline.get(world.partition(":")[0])
        rows = [s for s in result.summary if s["world"] == world and s["metric"] == metric]
        if not rows:
            continue
        fig = new_figure(figsize=(7, 0.3 * len(rows) + 1.2))
        ax = fig.add_subplot(111)
        labels = [f"{r['method']} {r['level']}".replace(" default", "") for r in rows]
        means = [r["mean"] for r in rows]
        err = [[r["mean"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean"] for r in rows]]
        ax.barh(range(len(rows)), means, xerr=err, color="#4c72b0")
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(metric)
        ax.set_title(world)
        fig.tight_layout()
        path = result.out_dir / "plots" / f"{world.replace(':', '_')}_{metric}.svg"
        save_figure(fig, path)
        plots.append(Plot(f"{world}: {metric}", path))
    return plots


FAMILY = PruningFamily()
"""The pruning family for :func:`assay.bench.runner.run_family`."""
