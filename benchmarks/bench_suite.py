"""Ground-truth bench at small size: 4 methods x 3 worlds x 3 seeds (the issue's done-when), sanity ordering.

Run: .venv/bin/python benchmarks/bench_suite.py [out_dir]. Prints the recovery/detection means per world and
method, the wall time, and as the last line a JSON object. Re-running reuses the run cache (delete
out_dir/cache for a fresh timing).
"""

import json
import sys
import time

import torch

from assay.bench.dictionaries import FAMILY, DictionarySettings
from assay.bench.runner import run_family


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/bench_small"
    torch.set_num_threads(1)
    t = time.perf_counter()
    res = run_family(FAMILY, methods=("topk:k=2|4", "relu:l1_coef=1|3", "pca:n=4|8", "random"),
                     worlds=("superposition", "hierarchy", "dyck:model_steps=300"), seeds=(0, 1, 2),
                     settings=DictionarySettings(steps=300, batch_size=256, n_eval=2048), out_dir=out, log=print)
    wall = time.perf_counter() - t
    idx = {(r["world"], r["method"], r["level"], r["metric"]): r for r in res.summary}
    best: dict[str, float] = {}
    for (w, m, _lev, met), r in idx.items():
        if met in ("recovery_mcc", "detect_auroc", "activation_mcc") and r["mean"] == r["mean"]:
            key = f"{w.split(':')[0]}/{m}/{met}"
            best[key] = max(best.get(key, -1.0), r["mean"])
    for k in sorted(best):
        print(f"{k}: best level mean {best[k]:.3f}")
    print(json.dumps({"runs": len(res.runs), "computed": res.computed, "wall_s": round(wall, 1),
                      "best": {k: round(v, 4) for k, v in sorted(best.items())}}))


if __name__ == "__main__":
    main()
