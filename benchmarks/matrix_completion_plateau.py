"""Benchmark: does the default tiny transformer on ``matrix_completion`` plateau, then drop, and beat SVT?

Gopalani, Lubana, Hu 2024, "Abrupt Learning in Transformers: A Case Study on Matrix Completion"
(NeurIPS 2024). Trains the world's reference model (``assay.models.train``), logging every
``--every`` steps the masked-entry MSE (plateau level r/9 = predicting 0, spec dynamics §1.5), the
observed-entry MSE (copying) and the masked token accuracy; then scores the singular-value-thresholding
baseline (Cai, Candès & Shen 2010) on the same held-out matrices.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/matrix_completion_plateau.py [--steps 3000] [--rank 2]

Prints one line per evaluation and, last, one JSON object (docs/dynamics_worlds.md records a run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from assay.models.train import train
from assay.models.transformer import Transformer
from assay.models.zoo import reference_configs
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
    overrides = {"steps": args.steps} if args.steps else {}
    model_cfg, train_cfg = reference_configs(world, train_overrides={**overrides, "eval_every": args.every,
                                                                     "eval_size": 512}, seed=args.seed)
    train_cfg = dataclasses.replace(train_cfg, checkpoint_every=None)  # the zoo's default; no folder here
    model = Transformer(model_cfg, generator=make_generator(args.seed))
    start = time.perf_counter()

    def show(entry: dict[str, float]) -> None:
        print(f"step {int(entry['step']):5d}  {time.perf_counter() - start:6.0f} s  loss {entry['eval_loss']:.4f}  "
              f"masked MSE {entry['masked_mse']:.4f}  observed MSE {entry['observed_mse']:.4f}  "
              f"masked acc {entry['masked_acc']:.3f}", flush=True)

    res = train(model, world, train_cfg, on_eval=show)
    seconds = time.perf_counter() - start
    batch = world.sample(512, generator=make_generator(train_cfg.seed + 1))  # train()'s held-out batch
    M, mask = batch.labels["matrix"].double(), batch.labels["mask"]
    svt = float(((world.baseline(batch) - M) ** 2)[mask].mean())
    plateau = world.config.rank / 9
    curve = [(int(h["step"]), h["masked_mse"]) for h in res.history]
    on_plateau = [s for s, v in curve if v > 0.9 * plateau]
    below_half = [s for s, v in curve if v < 0.5 * plateau]
    out = {"steps": train_cfg.steps, "seconds": round(seconds, 1), "plateau_mse": round(plateau, 4),
           "final_masked_mse": round(res.metrics["masked_mse"], 4), "final_observed_mse": round(res.metrics["observed_mse"], 4),
           "final_masked_acc": round(res.metrics["masked_acc"], 4), "svt_masked_mse": round(svt, 4),
           "last_plateau_step": on_plateau[-1] if on_plateau else None,
           "first_half_plateau_step": below_half[0] if below_half else None,
           "curve": [(s, round(v, 4)) for s, v in curve]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
