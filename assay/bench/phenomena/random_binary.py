"""Random binary sequences on the bench: with more context the default tiny model's completions move from
Bernoulli-like to concept-following, as the exact Bayes predictor's do.

Bigelow, Lubana, Dick, Tanaka, Ullman 2024, "In-Context Learning Dynamics with Random Binary Sequences"
(ICLR 2024). The world is :class:`assay.worlds.random_binary.RandomBinaryWorld` (its defaults: half the
sequences from a Bernoulli(p) coin, half from one of six periodic concepts of period 2–4). Measured on
fresh sequences after training (:func:`concept_following`):

- on concept sequences, P(the next 5 flips continue the concept | t flips seen) — the paper's P(concept),
  :func:`assay.worlds.random_binary.continuation_probability` — for the model and for Bayes, and the first
  t where each reaches 0.5 (:func:`first_crossing`): ``cross_model``, ``cross_bayes``;
- ``continue_at_2`` / ``continue_at_16``: the model's P(continue 5) after 2 and 16 flips (Bernoulli-like
  ≈ 2⁻⁵ early, ≈ 1 once the concept is identified);
- on Bernoulli sequences, mean |P_model(1) − (k + 1)/(t + 2)| (Laplace's rule) per t (a curve);
- ``kl_bayes``: the world's mean KL(Bayes ‖ model) at positions ≥ 16.

``benchmarks/random_binary_icl.py`` runs the same measurement at the reference budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from assay.bench.phenomena.base import Curve, Measurement

__all__ = ["RandomBinaryBudget", "FULL", "QUICK", "ConceptFollowing", "concept_following", "first_crossing",
           "PHENOMENON"]


@dataclass(frozen=True, kw_only=True)
class RandomBinaryBudget:
    """How long the model trains and how much it is measured on."""

    steps: int
    """Training updates of the world's reference model (its own default: 1,500)."""
    n_eval: int
    """Fresh sequences measured (about half are concept sequences)."""


FULL = RandomBinaryBudget(steps=600, n_eval=2000)
"""The documented budget (≈ 1 CPU minute)."""
QUICK = RandomBinaryBudget(steps=20, n_eval=128)
"""A seconds-long budget for tests."""


class ConceptFollowing(NamedTuple):
    """Per number of flips seen t (index t), averaged over the measured sequences."""

    model: torch.Tensor
    """Model's P(next 5 flips continue the concept) on concept sequences ``[L − 4]``."""
    bayes: torch.Tensor
    """The same for the exact Bayes predictor ``[L − 4]``."""
    laplace_error: torch.Tensor
    """Mean |P_model(1) − (k + 1)/(t + 2)| on Bernoulli sequences ``[L]``."""


def concept_following(world, p1: torch.Tensor, batch, depth: int = 5) -> ConceptFollowing:
    """The curves of :class:`ConceptFollowing` from a model's P(next flip = 1) ``p1`` [n, L] on ``batch``."""
    from assay.worlds.random_binary import ZERO, continuation_probability

    x = batch.targets - ZERO
    concept = batch.labels["source"].bool()
    if not concept.any() or concept.all():
        raise ValueError("the batch needs both concept and Bernoulli sequences; draw more sequences")
    bayes = batch.labels["bayes_p1"].double()
    model = continuation_probability(p1[concept], x[concept], depth).mean(0)
    exact = continuation_probability(bayes[concept], x[concept], depth).mean(0)
    t = torch.arange(x.shape[1], dtype=torch.float64)
    k = torch.cat([torch.zeros(len(x), 1), x.cumsum(1)[:, :-1]], 1).double()
    laplace = (k + 1) / (t + 2)
    return ConceptFollowing(model, exact, (p1[~concept].double() - laplace[~concept]).abs().mean(0))


def first_crossing(curve: torch.Tensor, level: float = 0.5) -> int | None:
    """The first index where ``curve`` ≥ ``level`` (None if never)."""
    hit = torch.nonzero(curve >= level)
    return int(hit[0]) if len(hit) else None


class RandomBinaryPhenomenon:
    """Bernoulli-like → concept-following completions on ``random_binary`` (module docstring)."""

    name = "random_binary"
    title = "Random binary sequences: in-context concept learning (Bigelow et al. 2024)"
    claim = ("Bigelow et al. 2024: with little context a model's completions look like a Bernoulli coin; as the "
             "context grows they follow the repeated concept, as the Bayes predictor does. Shown by P(the next 5 "
             "flips continue the concept) rising from ≈ 2⁻⁵ (continue_at_2) to ≈ 1 (continue_at_16), crossing "
             "0.5 after cross_model flips, near Bayes's cross_bayes.")
    metrics = ("cross_model", "cross_bayes", "continue_at_2", "continue_at_16", "kl_bayes")

    def measure(self, seed: int, *, quick: bool, run_dir: Path) -> Measurement:
        from assay.bench.phenomena.training import train_reference
        from assay.worlds.base import make_generator
        from assay.worlds.random_binary import RandomBinaryWorld

        budget = QUICK if quick else FULL
        world = RandomBinaryWorld()
        res = train_reference(world, steps=budget.steps, seed=seed, eval_size=budget.n_eval)
        batch = world.sample(budget.n_eval, generator=make_generator(10_000 + seed))
        with torch.no_grad():
            logits = res.model(batch.inputs)
        f = concept_following(world, world.model_p1(logits), batch)

        def crossing(curve: torch.Tensor) -> float:
            t = first_crossing(curve)
            return math.nan if t is None else float(t)

        metrics = {"cross_model": crossing(f.model), "cross_bayes": crossing(f.bayes),
                   "continue_at_2": float(f.model[2]), "continue_at_16": float(f.model[16]),
                   "kl_bayes": world.evaluate(logits, batch)["kl_bayes"]}
        t = tuple(float(i) for i in range(len(f.model)))
        curves = (Curve("model: P(continue 5)", "flips seen t", "probability", t, tuple(f.model.tolist())),
                  Curve("Bayes: P(continue 5)", "flips seen t", "probability", t, tuple(f.bayes.tolist())),
                  Curve("model on Bernoulli: |P(1) − Laplace|", "flips seen t", "probability",
                        tuple(float(i) for i in range(len(f.laplace_error))), tuple(f.laplace_error.tolist())))
        return Measurement(metrics, curves)


PHENOMENON = RandomBinaryPhenomenon()
"""The ``random_binary`` phenomenon of the ``dynamics`` family."""
