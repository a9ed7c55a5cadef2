"""Benchmark: does the default tiny transformer on ``matrix_completion`` plateau, then drop, and beat SVT?

Gopalani, Lubana, Hu 2024, "Abrupt Learning in Transformers: A Case Study on Matrix Completion"
(NeurIPS 2024). Trains the world's reference model (``assay.bench.phenomena.training.train_reference``), logging every
``--every`` steps the masked-entry MSE (plateau level r/9 = predicting 0, spec dynamics §1.5), the
observed-entry MSE (copying) and the masked token accuracy; then scores the singular-value-thresholding
baseline (Cai, Candès & Shen 2010) on the same held-out matrices.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/matrix_completion_plateau.py [--steps 3000] [--rank 2]

Prints one line per evaluation and, last, one JSON object (docs/dynamics_worlds.md records a run).
"""

from __future__ import annotations

import argparse
import json
import time

from assay.bench.phenomena.matrix_completion import plateau_steps
from assay.bench.phenomena.training import train_reference
from assay.worlds.base import make_generator
from assay.worlds.matrix_completion import MatrixCompletionConfig, MatrixCompletionWorld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the world's reference)")
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument("--size", type=int, default=5)
    parser.add_argument("--every", type=int, default=100, help="evaluate every this many steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    world = MatrixCompletionWorld(MatrixCompletionConfig(size=args.size, rank=args.rank))
    steps = args.steps or world.reference_model()["steps"]
    start = time.perf_counter()

    def show(entry: dict[str, float]) -> None:
        print(f"step {int(entry['step']):5d}  {time.perf_counter() - start:6.0f} s  loss {entry['eval_loss']:.4f}  "
              f"masked MSE {entry['masked_mse']:.4f}  observed MSE {entry['observed_mse']:.4f}  "
              f"masked acc {entry['masked_acc']:.3f}", flush=True)

    res = train_reference(world, steps=steps, seed=args.seed, eval_every=args.every, eval_size=512, on_eval=show)
    seconds = time.perf_counter() - start
    batch = world.sample(512, generator=make_generator(args.seed + 1))  # train()'s held-out batch
    M, mask = batch.labels["matrix"].double(), batch.labels["mask"]
    svt = float(((world.baseline(batch) - M) ** 2)[mask].mean())
    plateau = world.config.rank / 9
    curve = [(int(h["step"]), h["masked_mse"]) for h in res.history]
    last_on, first_below = plateau_steps(curve, plateau)
    out = {"steps": steps, "seconds": round(seconds, 1), "plateau_mse": round(plateau, 4),
           "final_masked_mse": round(res.metrics["masked_mse"], 4), "final_observed_mse": round(res.metrics["observed_mse"], 4),
           "final_masked_acc": round(res.metrics["masked_acc"], 4), "svt_masked_mse": round(svt, 4),
           "last_plateau_step": last_on, "first_half_plateau_step": first_below,
           "curve": [(s, round(v, 4)) for s, v in curve]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
