"""Emergence in the percolation PCSG: grammar first, then types; type inference follows bond percolation.

Lubana, Kawaguchi, Dick, Tanaka 2025, "A Percolation Model of Emergence: Analyzing Transformers
Trained on a Formal Language" (ICLR 2025, arXiv 2408.12578) [code: EkdeepSLubana/ConceptPercolation].
The paper's claims: a transformer trained on the typed grammar learns grammaticality before the type
constraints, and its ability to respect the constraints emerges abruptly at a point set by the
percolation of the bipartite graph of entities and properties seen together in training.

Two measurements per seed, both on :class:`assay.worlds.pcsg.PCSGWorld`'s default tiny transformer:

1. **Order in training steps.** Train on the default world (seed = ``seed``) with a log-spaced
   checkpoint series (:func:`assay.dynamics.checkpoints.train_series`, kept in ``run_dir/series`` and
   reused when the same series is asked for again); at each checkpoint read, on a
   fixed held-out batch, ``grammar_acc`` (argmax next token is syntactically valid) and ``type_acc``
   (argmax among the typed slot's tokens is type-consistent), normalised from their step-0 value to 1,
   and fit a sigmoid in log step to each (:func:`assay.dynamics.transitions.fit_transition`).
   ``type_lag_decades`` = log₁₀(t₀ of type_acc / t₀ of grammar_acc) > 0 means grammar came first. The
   held-out type AUROC (below; normalised from chance 0.5 to 1) gets the same fit (``heldout_*``).
   Generations (64 samples) at the last checkpoint are judged with :meth:`PCSGWorld.check`.
2. **Threshold in the number of properties.** A world whose class membership can only be inferred from
   descriptive (entity, property) pairs (no relative clauses, no conjoined subjects), bond probability
   q = ``pair_density``, and ``n_properties`` swept so that the bond parameter β = q·√(n₁n₂) (n₁, n₂
   entities and properties per class) crosses 1. After a fixed budget the model's held-out type score
   s = 2·AUROC − 1 (:meth:`PCSGWorld.heldout_type_auroc`: held-out allowed properties vs disallowed
   ones, 0 = chance) is compared with the graph's prediction, the fraction of held-out pairs connected
   by training pairs (:meth:`PCSGWorld.percolation`). ``threshold_beta`` is the β at which s first
   reaches half its maximum over the sweep (log-linear interpolation), ``graph_threshold_beta`` the same
   for the graph prediction; random-graph theory puts the giant component at β = 1. ``half_density_properties``
   are run again at half the density q/2 (4·n properties at q/2 have the β of n at q; the graph's
   connected fraction is *not* a function of β alone away from the threshold, since the entity and
   property degrees q·n₂ and q·n₁ change separately). ``score_graph_pearson`` (over both densities) says
   whether the model follows the graph; ``shortfall`` / ``shortfall_half_density`` are the mean graph
   prediction minus model score at q and at q/2.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from assay.bench.phenomena.base import Curve, Measurement
from assay.worlds.base import make_generator
from assay.worlds.pcsg import PCSGConfig, PCSGWorld

__all__ = ["PCSGBudget", "FULL", "QUICK", "PERCOLATION_WORLD", "PHENOMENON", "generate", "half_max_crossing"]


@dataclass(frozen=True, kw_only=True)
class PCSGBudget:
    """How much training one seed of the phenomenon gets."""

    steps: int
    """Training steps of the order-in-steps run."""
    n_checkpoints: int
    """Log-spaced checkpoints of that run (plus step 0)."""
    first_checkpoint: int
    """First non-zero checkpoint step."""
    sweep_properties: tuple[int, ...]
    """Property counts of the percolation sweep."""
    half_density_properties: tuple[int, ...]
    """Property counts run at half the pair density (4× a count of the sweep has its β)."""
    sweep_steps: int
    """Training steps of each sweep run."""
    eval_size: int
    """Held-out sentences per checkpoint evaluation."""
    n_generations: int
    """Sentences generated at the last checkpoint."""


FULL = PCSGBudget(steps=600, n_checkpoints=12, first_checkpoint=5, sweep_properties=(4, 8, 16, 32, 64, 128),
                  half_density_properties=(16, 64, 256), sweep_steps=300, eval_size=256, n_generations=64)
"""The documented budget (``quick=False``)."""
QUICK = PCSGBudget(steps=12, n_checkpoints=5, first_checkpoint=2, sweep_properties=(4, 16),
                   half_density_properties=(16,), sweep_steps=6,
                   eval_size=16, n_generations=4)
"""Seconds-long budget for tests (the phenomenon need not show)."""
PERCOLATION_WORLD = {"np_conj": 0.0, "vp_probs": (0.8, 0.0, 0.2), "max_len": 16, "pair_density": 0.2}
"""World settings of the sweep: class membership only through (entity, property) pairs."""


@torch.no_grad()
def generate(model: torch.nn.Module, world: PCSGWorld, n: int, *, generator: torch.Generator) -> list[list[int]]:
    """``n`` sentences sampled from ``model`` (temperature 1) after ``<bos>``, each cut after its first
    ``<eos>`` (or at the model context)."""
    context = model.config.context
    ids = torch.full((n, 1), world.bos_id, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    while ids.shape[1] < context and not done.all():
        p = torch.softmax(model(ids)[:, -1].double(), -1)
        nxt = torch.multinomial(p, 1, generator=generator)
        ids = torch.cat([ids, nxt], 1)
        done |= nxt[:, 0] == world.eos_id
    out = []
    for row in ids[:, 1:].tolist():
        out.append(row[: row.index(world.eos_id) + 1] if world.eos_id in row else row)
    return out


def half_max_crossing(xs: list[float], ys: list[float]) -> float:
    """The first x (log-linear interpolation between sweep points, xs increasing) at which ys reach half
    their maximum; NaN when the maximum is not positive."""
    y = np.asarray(ys, dtype=float)
    top = np.nanmax(y) if np.isfinite(y).any() else math.nan
    if not top > 0:
        return math.nan
    half = top / 2
    i = int(np.flatnonzero(y >= half)[0])
    if i == 0:
        return float(xs[0])
    u0, u1 = math.log(xs[i - 1]), math.log(xs[i])
    frac = (half - y[i - 1]) / (y[i] - y[i - 1])
    return float(math.exp(u0 + frac * (u1 - u0)))


def _property_logits(model: torch.nn.Module, world: PCSGWorld) -> torch.Tensor:
    with torch.no_grad():
        logits = model(world.property_prompts())[:, -1]
    return logits[:, world.property_ids:world.relation_ids]


def _configs(world: PCSGWorld, steps: int, seed: int, eval_size: int):
    from assay.models.zoo import reference_configs

    model_cfg, train_cfg = reference_configs(world, seed=seed, train_overrides={
        "steps": steps, "eval_every": None, "eval_size": eval_size, "warmup": min(100, max(1, steps // 10))})
    return model_cfg, dataclasses.replace(train_cfg, checkpoint_every=None)


def _normalised(values: list[float]) -> list[float]:
    from assay.dynamics.transitions import normalise

    start = values[0]
    return normalise(values, chance=start, target=1.0).tolist() if start < 1.0 else [1.0] * len(values)


def _order_in_steps(seed: int, budget: PCSGBudget, run_dir: Path) -> tuple[dict[str, float], list[Curve]]:
    from assay.config import to_dict
    from assay.dynamics.checkpoints import evaluate_series, load_series, log_steps, map_series, train_series
    from assay.dynamics.transitions import fit_transition, normalise
    from assay.models.transformer import Transformer

    world = PCSGWorld(PCSGConfig(seed=seed))
    model_cfg, train_cfg = _configs(world, budget.steps, seed, budget.eval_size)
    model = Transformer(model_cfg, generator=make_generator(seed))
    steps = log_steps(budget.steps, budget.n_checkpoints, budget.first_checkpoint)
    path = run_dir / "series"
    series = load_series(path) if (path / "config.json").is_file() else None
    if series is None or series.steps != steps or series.config.get("train") != to_dict(train_cfg):
        series = train_series(model, world, train_cfg, path, steps=steps, world_name="pcsg")
    batch = world.sample(budget.eval_size, generator=make_generator(10_000 + seed))
    evals = map_series(series, lambda m: world.evaluate(m(batch.inputs), batch), model=model)
    held = evaluate_series(series, lambda m: world.heldout_type_auroc(_property_logits(m, world)), model=model)
    xs = [float(s) for s, _ in evals]
    grammar, typed = [e["grammar_acc"] for _, e in evals], [e["type_acc"] for _, e in evals]
    fits = {k: fit_transition(xs, _normalised(v)) for k, v in (("grammar", grammar), ("type", typed))}
    fits["heldout"] = fit_transition(xs, normalise([v for _, v in held], chance=0.5, target=1.0).tolist())
    sentences = generate(model, world, budget.n_generations, generator=make_generator(20_000 + seed))
    checks = [world.check(s) for s in sentences]
    gram = [c for c in checks if c.grammatical]
    metrics = {
        "grammar_t0": fits["grammar"].t0, "type_t0": fits["type"].t0,
        "type_lag_decades": math.log10(fits["type"].t0 / fits["grammar"].t0)
        if fits["type"].t0 > 0 and fits["grammar"].t0 > 0 else math.nan,
        "type_width_decades": fits["type"].width_decades, "type_abrupt": float(fits["type"].abrupt),
        "heldout_t0": fits["heldout"].t0, "heldout_width_decades": fits["heldout"].width_decades,
        "heldout_abrupt": float(fits["heldout"].abrupt),
        "gen_grammatical": len(gram) / len(checks),
        "gen_type_ok": sum(c.type_ok for c in gram) / len(gram) if gram else math.nan,
    }
    curves = [Curve("grammar_acc", "training step", "accuracy", tuple(xs[1:]), tuple(grammar[1:]), log_x=True),
              Curve("type_acc", "training step", "accuracy", tuple(xs[1:]), tuple(typed[1:]), log_x=True),
              Curve("held-out type AUROC", "training step", "accuracy", tuple(xs[1:]),
                    tuple(v for _, v in held[1:]), log_x=True)]
    return metrics, curves


def _sweep_point(n_properties: int, density: float, seed: int, budget: PCSGBudget) -> tuple[float, float, float]:
    """``(β, model score 2·AUROC − 1, graph prediction)`` of one sweep world after ``budget.sweep_steps``."""
    from assay.models.train import train
    from assay.models.transformer import Transformer

    world = PCSGWorld(PCSGConfig(n_properties=n_properties, seed=seed, **{**PERCOLATION_WORLD, "pair_density": density}))
    model_cfg, train_cfg = _configs(world, budget.sweep_steps, seed, budget.eval_size)
    model = Transformer(model_cfg, generator=make_generator(seed))
    train(model, world, train_cfg)
    perc = world.percolation()
    return perc.bond_parameter, 2 * world.heldout_type_auroc(_property_logits(model, world)) - 1, perc.connected_heldout


def _mean_gap(pairs: list[tuple[float, float]]) -> float:
    """Mean of a − b over the pairs with both finite (NaN if none)."""
    gaps = [a - b for a, b in pairs if np.isfinite(a) and np.isfinite(b)]
    return float(np.mean(gaps)) if gaps else math.nan


def _percolation_sweep(seed: int, budget: PCSGBudget) -> tuple[dict[str, float], list[Curve]]:
    from assay.stats import pearson

    q = PERCOLATION_WORLD["pair_density"]
    betas, scores, graph = (list(v) for v in zip(*(_sweep_point(n, q, seed, budget) for n in budget.sweep_properties)))
    half = {n: _sweep_point(n, q / 2, seed, budget) for n in budget.half_density_properties}
    ok = [i for i, (s, g) in enumerate(zip(scores, graph)) if np.isfinite(s) and np.isfinite(g)]
    below = [scores[i] for i in ok if betas[i] < 1]
    above = [scores[i] for i in ok if betas[i] > 1]
    pairs = [(scores[i], graph[i]) for i in ok] + [(s, g) for _, s, g in half.values() if np.isfinite(s) and np.isfinite(g)]
    corr = pearson(*(torch.tensor(v) for v in zip(*pairs))) if len(pairs) > 2 else math.nan
    metrics = {
        "threshold_beta": half_max_crossing(betas, scores), "graph_threshold_beta": half_max_crossing(betas, graph),
        "score_below": float(np.mean(below)) if below else math.nan,
        "score_above": float(np.mean(above)) if above else math.nan, "score_graph_pearson": float(corr),
        "shortfall": _mean_gap([(graph[i], scores[i]) for i in ok]),
        "shortfall_half_density": _mean_gap([(g, s) for _, s, g in half.values()]),
    }
    axis = "bond parameter q·√(n₁n₂)"
    hb, hs, hg = (tuple(v[k] for v in half.values()) for k in range(3))
    curves = [Curve(f"model, q = {q:g}: held-out type score 2·AUROC−1", axis, "score", tuple(betas), tuple(scores),
                    log_x=True),
              Curve(f"graph, q = {q:g}: held-out pairs connected", axis, "score", tuple(betas), tuple(graph), log_x=True),
              Curve(f"model, q = {q / 2:g} (4× the properties)", axis, "score", hb, hs, log_x=True),
              Curve(f"graph, q = {q / 2:g} (4× the properties)", axis, "score", hb, hg, log_x=True)]
    return metrics, curves


class PCSGPercolation:
    """The percolation PCSG phenomenon (see the module docstring)."""

    name = "pcsg"
    title = "Grammar first, then types at a percolation threshold (Lubana et al. 2025)"
    claim = ("Type-constraint accuracy emerges abruptly, after grammaticality, as the number of properties "
             "(or training steps) crosses a threshold that follows bipartite-graph bond percolation "
             "(giant component at q·√(n₁n₂) = 1). Shown by type_lag_decades > 0 (grammar first), "
             "type_abrupt / heldout_abrupt, and threshold_beta near graph_threshold_beta ≈ 1 with "
             "score_below ≈ 0 < score_above, and score_graph_pearson near 1 (the model follows the graph).")
    metrics = ("grammar_t0", "type_t0", "type_lag_decades", "type_width_decades", "type_abrupt", "heldout_t0",
               "heldout_width_decades", "heldout_abrupt", "gen_grammatical",
               "gen_type_ok", "threshold_beta", "graph_threshold_beta", "score_below", "score_above",
               "score_graph_pearson", "shortfall", "shortfall_half_density")

    def measure(self, seed: int, *, quick: bool, run_dir: Path) -> Measurement:
        """Both measurements of the module docstring for ``seed``."""
        budget = QUICK if quick else FULL
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        order, order_curves = _order_in_steps(seed, budget, run_dir)
        sweep, sweep_curves = _percolation_sweep(seed, budget)
        return Measurement({**order, **sweep}, tuple(order_curves + sweep_curves))


PHENOMENON = PCSGPercolation()
"""The phenomenon the ``dynamics`` bench family runs as ``--worlds pcsg``."""
