"""Temporal SAE training step vs a TopK SAE step of the same width, on the same tokens.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/temporal_sae.py [--steps 6] [--heads 4]

Both go through assay's one trainer (:class:`assay.dictionaries.trainer.SAETrainer`: input scaling, Adam,
clipping, decoder hooks, statistics). The temporal SAE (Lubana et al. 2025, "Priors in Time", arXiv
2511.01836) gets ``[windows, T, d]`` with a padding mask (BOS masked, as from the store); the TopK SAE
gets the same tokens as ``[windows·T, d]`` rows. Same d, n and k. The two are stepped round-robin (one
step of each in turn) so load from other jobs hits both alike; medians over the steps after one warm-up
step. The goal (issue 16) is a ratio ≤ 2 of wall-clock step times; the ratio of CPU times (process time,
all threads) is printed too, since on a shared machine other jobs stretch wall time, not CPU time. The
last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--n", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    args = ap.parse_args()

    from assay.dictionaries.temporal import TemporalConfig, TemporalSAE
    from assay.dictionaries.topk import TopKConfig, TopKSAE
    from assay.dictionaries.trainer import SAETrainConfig, SAETrainer
    from assay.store import SequenceBatch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.windows, args.window, args.d, generator=g)
    mask = torch.ones(args.windows, args.window, dtype=torch.bool)
    mask[:, 0] = False
    batch = SequenceBatch(x, mask, torch.arange(args.windows))
    rows = x[mask]
    cfg = SAETrainConfig(steps=args.steps + 1, warmup_steps=1)
    temporal = SAETrainer(TemporalSAE(TemporalConfig(d_in=args.d, d_sae=args.n, k=args.k, n_heads=args.heads)), cfg)
    topk = SAETrainer(TopKSAE(TopKConfig(d_in=args.d, d_sae=args.n, k=args.k)), cfg)
    times: dict[str, list[float]] = {"temporal": [], "topk": []}
    cpu: dict[str, list[float]] = {"temporal": [], "topk": []}
    for step in range(args.steps + 1):
        for name, trainer, data in (("temporal", temporal, batch), ("topk", topk, rows)):
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.train_step(data)
            if step:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    tokens = int(mask.sum())
    print(f"tokens/step {tokens}  d {args.d}  n {args.n}  k {args.k}  window {args.window}  heads {args.heads}  "
          f"threads {torch.get_num_threads()}")
    for name in ("topk", "temporal"):
        print(f"{name:9s} median {med[name]:.3f} s/step  ({tokens / med[name]:,.0f} tokens/s), "
              f"CPU {med_cpu[name]:.3f} s/step")
    ratio, ratio_cpu = med["temporal"] / med["topk"], med_cpu["temporal"] / med_cpu["topk"]
    print(f"temporal / topk step time: {ratio:.2f}x (goal <= 2); CPU time {ratio_cpu:.2f}x")
    print(json.dumps({"topk_s": med["topk"], "temporal_s": med["temporal"], "ratio": ratio, "ratio_cpu": ratio_cpu,
                      "topk_cpu_s": med_cpu["topk"], "temporal_cpu_s": med_cpu["temporal"], "tokens": tokens,
                      "d": args.d, "n": args.n, "k": args.k, "window": args.window, "heads": args.heads}))


if __name__ == "__main__":
    main()
