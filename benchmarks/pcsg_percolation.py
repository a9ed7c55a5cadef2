"""Benchmark: does the percolation PCSG's tiny transformer learn grammar first, then types, with type
inference emerging at the bond-percolation threshold?

Lubana, Kawaguchi, Dick, Tanaka 2025, "A Percolation Model of Emergence: Analyzing Transformers Trained on
a Formal Language" (ICLR 2025). Runs the ``pcsg`` phenomenon (:mod:`assay.bench.phenomena.pcsg`,
``quick=False``) for each seed: the order-in-steps run on the default world and the sweep of the number
of properties across q·√(n₁n₂) = 1, with a rerun at half the density and 4× the properties (same β). Draws one figure (curves per seed) and prints one JSON object with
every seed's metrics and curves (docs/dynamics.md records a run).

    flock /tmp/assay-bench.lock nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=. \\
        .venv/bin/python benchmarks/pcsg_percolation.py [--seeds 0 1 2] [--figure docs/figures/pcsg_percolation.svg]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from assay.bench.phenomena.pcsg import PHENOMENON
from assay.report import new_figure, save_figure


def draw(results: dict[int, object], path: Path) -> Path:
    """Left: accuracies over training steps; right: held-out type score and graph prediction vs β."""
    fig = new_figure((11, 4))
    left, right = fig.subplots(1, 2)
    colours = {"grammar_acc": "tab:blue", "type_acc": "tab:orange", "held-out type AUROC": "tab:green"}
    for seed, m in results.items():
        for c in m.curves:
            if c.name in colours:
                left.plot(c.xs, c.ys, color=colours[c.name], alpha=0.8, label=c.name if seed == min(results) else None)
            elif c.name.startswith("model"):
                style, colour = ("^:", "tab:purple") if "4×" in c.name else ("o-", "tab:red")
                right.plot(c.xs, c.ys, style, color=colour, alpha=0.8, label=c.name if seed == min(results) else None)
            else:
                style, colour = ("v:", "tab:olive") if "4×" in c.name else ("s--", "tab:gray")
                right.plot(c.xs, c.ys, style, color=colour, alpha=0.8, label=c.name if seed == min(results) else None)
    left.set(xscale="log", xlabel="training step", ylabel="accuracy / AUROC",
             title="default world: grammar, types, held-out types")
    right.axvline(1.0, color="k", lw=0.8, ls=":", label="giant component, q·√(n₁n₂) = 1")
    right.set(xscale="log", xlabel="bond parameter q·√(n₁n₂) (n_properties swept)", ylabel="score",
              title="type inference vs percolation")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/pcsg_percolation.svg"))
    args = parser.parse_args()
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            start = time.perf_counter()
            results[seed] = PHENOMENON.measure(seed, quick=False, run_dir=Path(tmp) / f"seed{seed}")
            seconds[seed] = round(time.perf_counter() - start, 1)
            print(f"seed {seed}: {seconds[seed]} s", {k: round(v, 4) for k, v in results[seed].metrics.items()},
                  flush=True)
    draw(results, args.figure)
    print(json.dumps({"seconds": seconds,
                      "metrics": {s: m.metrics for s, m in results.items()},
                      "curves": {s: {c.name: [list(c.xs), list(c.ys)] for c in m.curves} for s, m in results.items()}}))


if __name__ == "__main__":
    main()
