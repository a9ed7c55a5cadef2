"""Representation shattering under knowledge editing (Nishi et al. 2025): R(D*) and accuracy drop vs edit distance.

Nishi, Ramesh, Okawa, Khona, Tanaka, Lubana 2025, "Representation Shattering in Transformers: A
Synthetic Study with Knowledge Editing" (ICML 2025, arXiv 2410.17194). Runs the ``knowledge_editing``
phenomenon (:mod:`assay.bench.phenomena.knowledge_editing`) at its full budget for each seed: the default
tiny transformer of the cyclic knowledge graph (N = 64, 3 orders, 24 relations, 3,000 steps; trained once
per seed and cached under ``--out``), 8 facts each rewritten at edit distance d = 1 … 4 by ROME and by
fine-tuning. Prints the metrics with 95% t-intervals over seeds, writes the per-edit numbers
(``--out``/results.json) and a figure: R(D*) and the accuracy drop on unedited facts against d per editor,
and R against the drop.

    flock /tmp/assay-bench.lock nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/knowledge_editing.py \\
        [--seeds 0 1 2] [--out /tmp/assay-bench-kg] [--plot docs/figures/knowledge_editing.svg] [rome_key=subject ...]

``--replot`` only redraws ``--plot`` from ``--out``/results.json.

Overrides set :class:`~assay.bench.phenomena.knowledge_editing.EditingBudget` fields (python literals).
Last line: JSON with the mean of every metric over seeds.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import time
from pathlib import Path

import torch

from assay.bench.phenomena.knowledge_editing import EDITORS, FULL, KnowledgeEditing, edit_results, summarise
from assay.report import new_figure, save_figure
from assay.stats import t_interval


def plot(results: list[dict], path: str) -> Path:
    """R(D*) and accuracy drop against edit distance (per-edit points, seed-mean line) and R against the drop."""
    fig = new_figure((13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    colours = {"rome": "tab:red", "ft": "tab:blue"}
    labels = {"rome": "ROME (rank-one)", "ft": "fine-tuning"}
    for E in EDITORS:
        R = torch.stack([r[E]["R"] for r in results])  # [seeds, edits, H]
        drop = torch.stack([r[E]["drop"] for r in results])
        H = R.shape[-1]
        d = torch.arange(1, H + 1, dtype=torch.float64)
        offset = -0.08 if E == "rome" else 0.08
        for ax, Y in ((axes[0], R), (axes[1], drop)):
            ax.plot((d + offset).expand(*Y.shape[:2], H).reshape(-1), Y.reshape(-1), ".", color=colours[E], alpha=0.3)
            ax.plot(d, Y.mean((0, 1)), "-o", color=colours[E], label=labels[E])
        axes[2].plot(R.reshape(-1), drop.reshape(-1), ".", color=colours[E], alpha=0.5, label=labels[E])
    axes[0].set(xlabel="edit distance d", ylabel="shattering R(D*)", title="R(D*) vs edit distance")
    axes[1].set(xlabel="edit distance d", ylabel="accuracy drop", title="drop on unedited facts vs distance")
    axes[2].set(xlabel="R(D*)", ylabel="accuracy drop", title="shattering vs accuracy drop")
    for ax in axes[:2]:
        ax.set_xticks(range(1, H + 1))
    axes[0].legend()
    return save_figure(fig, path, tight=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="/tmp/assay-bench-kg", help="folder for the cached models and results.json")
    ap.add_argument("--plot", default=None, help="write the figure to this file (svg, png, …)")
    ap.add_argument("--replot", action="store_true", help="only redraw --plot from --out/results.json")
    ap.add_argument("overrides", nargs="*", help="EditingBudget fields as key=value (python literals)")
    args = ap.parse_args()
    fields = {f.name for f in dataclasses.fields(FULL)}
    kw = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown EditingBudget field {key!r}; choose from {sorted(fields)}")
        kw[key] = value if key == "rome_key" else ast.literal_eval(value)
    budget = dataclasses.replace(FULL, **kw)
    out = Path(args.out)
    if args.replot:
        saved = json.loads((out / "results.json").read_text())["results"]
        print("wrote", plot([{E: {k: torch.tensor(v) for k, v in r[E].items()} for E in EDITORS} for r in saved],
                            args.plot))
        return
    t0 = time.perf_counter()
    results, metrics = [], []
    for seed in args.seeds:
        ts = time.perf_counter()
        res = edit_results(seed, budget, out / f"seed-{seed}")
        results.append(res)
        metrics.append(summarise(res)[0])
        print(f"seed {seed}: {time.perf_counter() - ts:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    print(f"{len(args.seeds)} seeds in {seconds:.0f} s; budget {budget}")
    print("| metric | mean [95% t-interval over seeds] | per seed |")
    print("|---|---|---|")
    for name in KnowledgeEditing.metrics:
        vals = [m[name] for m in metrics]
        ci = t_interval(vals)
        print(f"| {name} | {ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}] | {' / '.join(f'{v:.3f}' for v in vals)} |")
    for E in EDITORS:
        R = torch.stack([r[E]["R"] for r in results]).mean((0, 1))
        drop = torch.stack([r[E]["drop"] for r in results]).mean((0, 1))
        print(f"{E}: mean R(D*) by d = {[round(float(v), 4) for v in R]}; mean drop by d = "
              f"{[round(float(v), 4) for v in drop]}")
    out.mkdir(parents=True, exist_ok=True)
    raw = [{E: {k: v.tolist() for k, v in r[E].items()} for E in EDITORS} for r in results]
    (out / "results.json").write_text(json.dumps({"seeds": args.seeds, "budget": dataclasses.asdict(budget),
                                                  "results": raw, "metrics": metrics}))
    if args.plot:
        print("wrote", plot(results, args.plot))
    print(json.dumps({k: sum(m[k] for m in metrics) / len(metrics) for k in KnowledgeEditing.metrics}
                     | {"seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
