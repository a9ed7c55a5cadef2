"""Benchmark: does the tiny encoder on ``matrix_completion`` plateau, then drop, and beat SVT?

Gopalani, Lubana, Hu 2024, "Abrupt Learning in Transformers: A Case Study on Matrix Completion"
(NeurIPS 2024). Trains the world's reference model (``assay.bench.phenomena.training.train_reference``) with the
``dynamics`` phenomenon's settings (:data:`assay.bench.phenomena.matrix_completion.WORLD`, ``TRAINING``; size,
rank, layout, loss and learning rate can be changed), logging every ``--every`` steps the masked-entry MSE
(plateau level r/9 = predicting 0, spec dynamics §1.5), the observed-entry MSE (copying), the masked token
accuracy and, in the encoder layout, each layer's row/column attention of masked queries; then scores the
singular-value-thresholding baseline (Cai, Candès & Shen 2010) on the same held-out matrices.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/matrix_completion_plateau.py [--steps 5000] [--size 4 --rank 1]

Prints one line per evaluation and, last, one JSON object (docs/dynamics_worlds.md records runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from assay.bench.phenomena.matrix_completion import TRAINING, WORLD, attention_probe, plateau_steps
from assay.bench.phenomena.training import train_reference
from assay.worlds.base import make_generator
from assay.worlds.matrix_completion import MatrixCompletionWorld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--size", type=int, default=WORLD.size)
    parser.add_argument("--rank", type=int, default=WORLD.rank)
    parser.add_argument("--layout", default=WORLD.layout, choices=("encoder", "copy"))
    parser.add_argument("--loss", default=WORLD.loss, choices=("mse", "ce"))
    parser.add_argument("--lr", type=float, default=TRAINING["lr"], help="constant learning rate after warmup")
    parser.add_argument("--every", type=int, default=100, help="evaluate every this many steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    world = MatrixCompletionWorld(dataclasses.replace(WORLD, size=args.size, rank=args.rank, layout=args.layout,
                                                      loss=args.loss))
    batch = world.sample(512, generator=make_generator(args.seed + 1))  # train()'s held-out batch
    n_layers = world.reference_model()["n_layers"]
    start = time.perf_counter()

    def show(entry: dict[str, float]) -> None:
        attn = " ".join(f"{entry[k]:.3f}" for k in sorted(entry) if k.startswith("line_attn_"))
        print(f"step {int(entry['step']):5d}  {time.perf_counter() - start:6.0f} s  loss {entry['eval_loss']:.4f}  "
              f"masked MSE {entry['masked_mse']:.4f}  observed MSE {entry['observed_mse']:.4f}  "
              f"masked acc {entry['masked_acc']:.3f}  row/col attention {attn}", flush=True)

    probe = (lambda model: attention_probe(model, batch, n_layers)) if args.layout == "encoder" else None
    res = train_reference(world, steps=args.steps, seed=args.seed, eval_every=args.every, eval_size=512, on_eval=show,
                          train_overrides={"lr": args.lr, "min_lr": args.lr}, probe=probe)
    seconds = time.perf_counter() - start
    M, mask = batch.labels["matrix"].double(), batch.labels["mask"]
    svt = float(((world.baseline(batch) - M) ** 2)[mask].mean())
    plateau = world.config.rank / 9
    curve = [(int(h["step"]), h["masked_mse"]) for h in res.history]
    last_on, first_below = plateau_steps(curve, plateau)
    out = {"steps": args.steps, "seconds": round(seconds, 1), "plateau_mse": round(plateau, 4),
           "final_masked_mse": round(res.metrics["masked_mse"], 4), "final_observed_mse": round(res.metrics["observed_mse"], 4),
           "final_masked_acc": round(res.metrics["masked_acc"], 4), "svt_masked_mse": round(svt, 4),
           "last_plateau_step": last_on, "first_half_plateau_step": first_below,
           "curve": [(s, round(v, 4)) for s, v in curve]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
