"""Benchmark: does the default tiny transformer on ``random_binary`` move from Bernoulli-like to concept-following?

Bigelow, Lubana, Dick, Tanaka, Ullman 2024, "In-Context Learning Dynamics with Random Binary
Sequences" (ICLR 2024). Trains the world's reference model
(``assay.bench.phenomena.training.train_reference``) and, on fresh
sequences, compares it with the exact Bayes predictor of the world (``assay.worlds.random_binary``):

- concept contexts: P(the next 5 flips continue the concept | t flips seen) — the paper's
  P(concept) — for the model and for Bayes, and the first t where each crosses 0.5;
- Bernoulli contexts: mean |P_model(1) − (k+1)/(t+2)| (Laplace's rule, what Bayes does there);
- mean KL(Bayes ‖ model) at positions ≥ 16 (the spec's acceptance: < 0.05 nat).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/random_binary_icl.py [--steps 1500] [--seed 0]

Last line: one JSON object with the figures (docs/dynamics_worlds.md records a run). The measurement is
:mod:`assay.bench.phenomena.random_binary`'s (``assay bench --family dynamics --worlds random_binary`` runs it at
a smaller budget, with seeds).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from assay.bench.phenomena.random_binary import concept_following, first_crossing
from assay.bench.phenomena.training import train_reference
from assay.worlds.base import make_generator
from assay.worlds.random_binary import RandomBinaryWorld

POSITIONS = (0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the world's reference)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", type=int, default=4000, help="fresh sequences to measure on")
    args = parser.parse_args()
    world = RandomBinaryWorld()
    steps = args.steps or world.reference_model()["steps"]
    start = time.perf_counter()
    res = train_reference(world, steps=steps, seed=args.seed, eval_every=250)
    seconds = time.perf_counter() - start
    model = res.model
    batch = world.sample(args.eval, generator=make_generator(10_000 + args.seed))
    with torch.no_grad():
        logits = model(batch.inputs)
    cont_model, cont_bayes, lap_err = concept_following(world, world.model_p1(logits), batch)
    metrics = world.evaluate(logits, batch)
    print(f"trained {steps} steps in {seconds:.0f} s; eval loss {metrics['loss']:.4f} "
          f"(Bayes {metrics['bayes_loss']:.4f}), KL(Bayes‖model) at t ≥ 16: {metrics['kl_bayes']:.4f} nat")
    print("| t (flips seen) | " + " | ".join(str(p) for p in POSITIONS) + " |")
    print("|---" * (len(POSITIONS) + 1) + "|")
    print("| P(continue 5), model | " + " | ".join(f"{cont_model[p]:.2f}" for p in POSITIONS) + " |")
    print("| P(continue 5), Bayes | " + " | ".join(f"{cont_bayes[p]:.2f}" for p in POSITIONS) + " |")
    print("| Bernoulli: mean abs(model − Laplace) | " + " | ".join(f"{lap_err[p]:.3f}" for p in POSITIONS) + " |")
    out = {"steps": steps, "seconds": round(seconds, 1), **{k: round(v, 4) for k, v in metrics.items()},
           "cross_model": first_crossing(cont_model), "cross_bayes": first_crossing(cont_bayes),
           "continue_model": [round(float(cont_model[p]), 3) for p in POSITIONS],
           "continue_bayes": [round(float(cont_bayes[p]), 3) for p in POSITIONS],
           "laplace_err": [round(float(lap_err[p]), 4) for p in POSITIONS],
           "history_kl": [(int(h["step"]), round(h["kl_bayes"], 4)) for h in res.history]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
