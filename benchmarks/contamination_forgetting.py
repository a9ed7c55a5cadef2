"""Contamination forgetting (Bordt et al. 2025): final accuracy gap per insertion time, and the curves.

Runs :func:`assay.bench.forgetting.forgetting_curves` (defaults: insertion windows starting at 0, ¼, ½, ¾
of 400 updates, 32 copies of each of 24 items, constant lr 1e-2 after warmup, weight decay 1.0, seeds 0–2)
and prints the final gap (contaminated − clean accuracy) per window with a 95% t-interval over seeds, then
writes the accuracy-over-training figure. Options override any ForgettingConfig field (``key=value``).

    python benchmarks/contamination_forgetting.py [--plot docs/figures/contamination_forgetting.svg] [weight_decay=0 ...]

Last line: JSON with the final gaps (mean per window).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import time

from assay.bench.forgetting import ForgettingConfig, forgetting_curves, plot_forgetting
from assay.stats import t_interval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", default=None, help="write the curves to this file (svg, png, …)")
    ap.add_argument("overrides", nargs="*", help="ForgettingConfig fields as key=value (python literals)")
    args = ap.parse_args()
    fields = {f.name for f in dataclasses.fields(ForgettingConfig)}
    kw = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown ForgettingConfig field {key!r}; choose from {sorted(fields)}")
        kw[key] = ast.literal_eval(value)
    cfg = ForgettingConfig(**kw)
    t0 = time.perf_counter()
    curves = forgetting_curves(cfg)
    seconds = time.perf_counter() - t0
    print(f"{len(cfg.insertion) * len(cfg.seeds)} runs in {seconds:.0f} s; clean accuracy at the end "
          f"{curves.clean[..., -1].mean():.2f} (chance {1 / 8:.2f})")
    print("| insertion window | final accuracy gap [95% t-interval over seeds] | per seed |")
    print("|---|---|---|")
    for start, gaps in zip(cfg.insertion, curves.final_gap):
        ci = t_interval(gaps)
        print(f"| [{start:g}, {start + cfg.window_length:g}]·T | {ci.mean:.2f} [{ci.low:.2f}, {ci.high:.2f}] | "
              f"{' / '.join(f'{g:.2f}' for g in gaps.tolist())} |")
    if args.plot:
        print("wrote", plot_forgetting(curves, args.plot, window_length=cfg.window_length))
    print(json.dumps({"insertion": list(cfg.insertion), "final_gap": curves.final_gap.mean(1).tolist(),
                      "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
