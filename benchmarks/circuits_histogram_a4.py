"""A4 on the compiled histogram program: learned k = 1 TopK transcoders under several training recipes.

Spec circuits.md §4.3 A4 (feature ↔ compiled value |cos| ≥ 0.9; node precision and recall of the pruned graph
≥ 0.8; replacement ≥ 0.8). Transcoders after Dunefsky, Chlenski & Nanda 2024 (TopK as Gao et al. 2024 /
EleutherAI sparsify); graphs as Ameisen et al. 2025 ("Circuit Tracing"); the compiled program after tracr
(Lindner et al. 2023). Each recipe is a :class:`~assay.circuits.learned.TranscoderTraining`; the checks are
the bench's own (:func:`assay.bench.circuits.learned_checks`, on the bench's histogram world and seeds).

    PYTHONPATH=. flock /tmp/assay-bench.lock nice -n 10 env OMP_NUM_THREADS=1 python \\
        benchmarks/circuits_histogram_a4.py [--seeds 0 1 2] [--recipes bench resample data]

One JSON line per (recipe, seed): fvu, matched_share, replacement (worst prompt), node_precision, node_recall.
"""

from __future__ import annotations

import argparse
import json
import time

from assay.bench.circuits import FAMILY, INIT_RECIPES, CircuitSettings, learned_checks
from assay.circuits.learned import TranscoderTraining

RECIPES = {
    "bench": {"steps": 1000},  # the bench's transcoder method with init=random: unit-norm atoms, b_dec = 0
    "free_norm": {"steps": 1000, "unit_decoder": False},  # sparsify's decoder: from 0, never renormalised
    "resample": {"steps": 4000, "resample_every": 250, "decay_fraction": 0.5},
    # one feature per input centre of the training positions, free norms (assay.dictionaries.centre_init):
    "data_init_only": {"steps": 1, "lr": 1e-9, "unit_decoder": False, "data_init": True},  # the initialisation
    "data": {"steps": 1000, **INIT_RECIPES["data"]},  # the bench's default transcoder recipe (init=data, lr 1e-5)
    "data_default_lr": {"steps": 1000, "unit_decoder": False, "data_init": True},  # the TopK default lr 6.4e-3
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = ap.parse_args()
    for seed in args.seeds:
        prepared = FAMILY.prepare("histogram", seed, CircuitSettings())
        for name in args.recipes:
            cfg = TranscoderTraining(d_sae=16, k=1, seed=seed, zero_decoder_bias=True, **RECIPES[name])
            start = time.perf_counter()
            out = learned_checks(prepared, cfg)
            keep = ("fvu", "matched_share", "replacement", "node_precision", "node_recall")
            print(json.dumps({"recipe": name, "seed": seed, **{k: round(out[k], 4) for k in keep},
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
