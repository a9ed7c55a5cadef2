"""Benchmark: train the default tiny model of each sequence world; wall time and task metric vs acceptance.

Issue 3 acceptance: each default model reaches the threshold written in its world module
(``world.acceptance``) in under 10 minutes on 2 CPU cores. There is no peer library that trains
these models, so the ratios printed are against the budgets: time / 600 s and metric / threshold.

    .venv/bin/python benchmarks/world_models.py                 # all sequence worlds available
    .venv/bin/python benchmarks/world_models.py --worlds dyck expr --threads 2

Trains into a temporary cache (``--cache-dir`` to keep the models, e.g. ``$ASSAY_CACHE``).
Last line: one JSON object ``{world: {...}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback

import torch

SEQUENCE_WORLDS = ("dyck", "expr", "markov", "english", "bijections", "graph", "cyclic")
BUDGET_S = 600.0


def passes(acceptance, metrics) -> bool | None:
    """Whether ``metrics`` meet ``acceptance`` = (name, threshold[, "max" | "min"]); None if unknown."""
    if not acceptance or acceptance[0] not in metrics:
        return None
    name, threshold = acceptance[0], float(acceptance[1])
    lower_is_better = len(acceptance) > 2 and acceptance[2] in ("min", "lower", "<=")
    value = metrics[name]
    return value <= threshold if lower_is_better else value >= threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", nargs="*", default=list(SEQUENCE_WORLDS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=None, help="keep trained models here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the training steps (quick runs)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from assay.models.zoo import world_model

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or tmp
        for name in args.worlds:
            overrides = {"steps": args.steps} if args.steps else None
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                wm = world_model(name, seed=args.seed, cache_dir=cache, progress=args.progress,
                                 train_overrides=overrides, retrain=True)
            except Exception as e:  # a world not written yet, or a failure: report it and go on
                results[name] = {"error": f"{type(e).__name__}: {e}"}
                print(f"{name:12s} ERROR {type(e).__name__}: {e}", file=sys.stderr)
                traceback.print_exc(limit=3)
                continue
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            t0 = time.perf_counter()
            cached = world_model(name, seed=args.seed, cache_dir=cache, progress=False, train_overrides=overrides)
            load_seconds = time.perf_counter() - t0
            assert not cached.trained, "the second call should load from the cache"
            acc = tuple(getattr(wm.world, "acceptance", ()) or ())
            ok = passes(acc, wm.metrics)
            row = {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "time_ratio_vs_600s": round(seconds / BUDGET_S, 3),
                   "metric": acc[0] if acc else None, "value": wm.metrics.get(acc[0]) if acc else None,
                   "threshold": float(acc[1]) if acc else None, "pass": ok,
                   "steps": json.loads((wm.path / "config.json").read_text())["config"]["train"]["steps"],
                   "n_params": wm.model.n_params(), "cached_load_seconds": round(load_seconds, 3), "metrics": {k: round(v, 5) for k, v in wm.metrics.items()}}
            results[name] = row
            value = f"{row['value']:.4f}" if row["value"] is not None else "n/a"
            print(f"{name:12s} {seconds:7.1f}s wall, {cpu:7.1f}s CPU ({row['time_ratio_vs_600s']:.2f} of budget)  "
                  f"{row['metric']}={value} threshold {row['threshold']}  pass={ok}  cached load {load_seconds:.2f}s",
                  flush=True)
    print(json.dumps({"threads": args.threads, "torch": torch.__version__, "worlds": results}))


if __name__ == "__main__":
    main()
