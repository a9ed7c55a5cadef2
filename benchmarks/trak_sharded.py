"""Sharded TRAK (Park et al. 2023) under torchrun: correctness against one process, and the overhead.

An MLP 64-256-256-10 (≈85k parameters, seeded random weights: scores need no trained model to be compared),
an ensemble of 2, 8,000 random train / 200 target points, projection to 512 dims (factored path).

    PYTHONPATH=. python benchmarks/trak_sharded.py --out runs/bench-trak            # one process: trak.trak
    PYTHONPATH=. torchrun --nproc-per-node 2 benchmarks/trak_sharded.py --out runs/bench-trak   # 2 ranks

The one-process run saves its scores; the torchrun run compares against them (max |Δ| / max |S|), times the
call on rank 0, and times it again as a resume (every feature on disk: only reading, the kernel all-reduce,
finalising, scoring and the score all-reduce remain). Last line: JSON. Wall time from process start to exit
(imports, rendezvous) is measured outside, with /usr/bin/time.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from assay.data_attribution import trak
from assay.data_attribution.projection import ProjectionConfig
from assay.data_attribution.sharded import trak_sharded
from assay.store.ranks import launched_by_torchrun, torchrun_group

PROJ = ProjectionConfig(dim=512, seed=0)


def _problem(n: int, m: int):
    g = torch.Generator().manual_seed(0)
    models = []
    for s in range(2):
        torch.manual_seed(s)  # benchmark-local model init
        models.append(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)))
    x, y = torch.randn(n + m, 64, generator=g), torch.randint(0, 10, (n + m,), generator=g)
    return models, (x[:n], y[:n]), (x[n:], y[n:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--n-target", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    models, train, target = _problem(args.n_train, args.n_target)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not launched_by_torchrun():
        scores = trak.trak(models, train, target, projection=PROJ, lambda_reg=1e-3, batch_size=256)
        wall = time.perf_counter() - t0
        torch.save(scores, args.out / "scores_single.pt")
        cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        print(json.dumps({"mode": "single", "n": args.n_train, "seconds": round(wall, 2), "cpu_user_s": round(cpu, 1)}))
        return
    import torch.distributed as dist

    with torchrun_group(600) as group:
        rank = dist.get_rank(group)
        feats = args.out / "feats"
        if rank == 0 and feats.exists():
            shutil.rmtree(feats)
        dist.barrier(group)
        res = trak_sharded(models, train, target, projection=PROJ, out_dir=feats, lambda_reg=1e-3, batch_size=256,
                           group=group)
        wall = time.perf_counter() - t0
        dist.barrier(group)
        t1 = time.perf_counter()  # a resumed run: every feature is on disk, only the reduction and scoring remain
        again = trak_sharded(models, train, target, projection=PROJ, out_dir=feats, lambda_reg=1e-3, batch_size=256,
                             group=group)
        resumed_wall = time.perf_counter() - t1
        cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        if rank == 0:
            single = torch.load(args.out / "scores_single.pt")
            diff = float((res.scores - single).abs().max() / single.abs().max())
            print(json.dumps({"mode": "torchrun", "world": dist.get_world_size(group), "n": args.n_train,
                              "seconds": round(wall, 2), "resumed_seconds": round(resumed_wall, 2),
                              "rank0_cpu_user_s": round(cpu, 1), "max_rel_diff_vs_single": diff,
                              "resumed_equal": bool(torch.equal(again.scores, res.scores)),
                              "rank0_rows": [res.resumed_rows, res.computed_rows]}))


if __name__ == "__main__":
    main()
