"""Benchmark: does the default tiny transformer on ``random_binary`` move from Bernoulli-like to concept-following?

Bigelow, Lubana, Dick, Tanaka, Ullman 2024, "In-Context Learning Dynamics with Random Binary
Sequences" (ICLR 2024). Trains the world's reference model (``assay.models.train``) and, on fresh
sequences, compares it with the exact Bayes predictor of the world (``assay.worlds.random_binary``):

- concept contexts: P(the next 5 flips continue the concept | t flips seen) — the paper's
  P(concept) — for the model and for Bayes, and the first t where each crosses 0.5;
- Bernoulli contexts: mean |P_model(1) − (k+1)/(t+2)| (Laplace's rule, what Bayes does there);
- mean KL(Bayes ‖ model) at positions ≥ 16 (the spec's acceptance: < 0.05 nat).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/random_binary_icl.py [--steps 1500] [--seed 0]

Last line: one JSON object with the figures (docs/dynamics_worlds.md records a run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from assay.models.train import train
from assay.models.transformer import Transformer
from assay.models.zoo import reference_configs
from assay.worlds.base import make_generator
from assay.worlds.random_binary import RandomBinaryWorld, continuation_probability

POSITIONS = (0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48)


def first_crossing(curve: torch.Tensor, level: float = 0.5) -> int | None:
    """The first index where ``curve`` ≥ ``level`` (None if never)."""
    hit = torch.nonzero(curve >= level)
    return int(hit[0]) if len(hit) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the world's reference)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", type=int, default=4000, help="fresh sequences to measure on")
    args = parser.parse_args()
    world = RandomBinaryWorld()
    overrides = {"steps": args.steps} if args.steps else {}
    model_cfg, train_cfg = reference_configs(world, train_overrides={**overrides, "eval_every": 250}, seed=args.seed)
    train_cfg = dataclasses.replace(train_cfg, checkpoint_every=None)  # the zoo's default; no folder here
    model = Transformer(model_cfg, generator=make_generator(args.seed))
    start = time.perf_counter()
    res = train(model, world, train_cfg)
    seconds = time.perf_counter() - start
    batch = world.sample(args.eval, generator=make_generator(10_000 + args.seed))
    with torch.no_grad():
        q = world.model_p1(model(batch.inputs))
    x = batch.targets - 4
    bayes = batch.labels["bayes_p1"].double()
    concept = batch.labels["source"].bool()
    cont_model = continuation_probability(q[concept], x[concept]).mean(0)
    cont_bayes = continuation_probability(bayes[concept], x[concept]).mean(0)
    t = torch.arange(x.shape[1], dtype=torch.float64)
    k = torch.cat([torch.zeros(len(x), 1), x.cumsum(1)[:, :-1]], 1).double()
    laplace = (k + 1) / (t + 2)
    lap_err = (q[~concept] - laplace[~concept]).abs().mean(0)
    metrics = world.evaluate(model(batch.inputs).detach(), batch)
    print(f"trained {train_cfg.steps} steps in {seconds:.0f} s; eval loss {metrics['loss']:.4f} "
          f"(Bayes {metrics['bayes_loss']:.4f}), KL(Bayes‖model) at t ≥ 16: {metrics['kl_bayes']:.4f} nat")
    print("| t (flips seen) | " + " | ".join(str(p) for p in POSITIONS) + " |")
    print("|---" * (len(POSITIONS) + 1) + "|")
    print("| P(continue 5), model | " + " | ".join(f"{cont_model[p]:.2f}" for p in POSITIONS) + " |")
    print("| P(continue 5), Bayes | " + " | ".join(f"{cont_bayes[p]:.2f}" for p in POSITIONS) + " |")
    print("| Bernoulli: mean abs(model − Laplace) | " + " | ".join(f"{lap_err[p]:.3f}" for p in POSITIONS) + " |")
    out = {"steps": train_cfg.steps, "seconds": round(seconds, 1), **{k: round(v, 4) for k, v in metrics.items()},
           "cross_model": first_crossing(cont_model), "cross_bayes": first_crossing(cont_bayes),
           "continue_model": [round(float(cont_model[p]), 3) for p in POSITIONS],
           "continue_bayes": [round(float(cont_bayes[p]), 3) for p in POSITIONS],
           "laplace_err": [round(float(lap_err[p]), 4) for p in POSITIONS],
           "history_kl": [(int(h["step"]), round(h["kl_bayes"], 4)) for h in res.history]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
