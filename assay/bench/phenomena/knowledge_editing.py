"""Knowledge editing shatters entity geometry, more so the farther the counterfactual object (a dynamics phenomenon).

Nishi, Ramesh, Okawa, Khona, Tanaka, Lubana 2025, "Representation Shattering in Transformers: A
Synthetic Study with Knowledge Editing" (ICML 2025, arXiv 2410.17194); editors after Meng, Bau,
Andonian, Belinkov 2022, "Locating and Editing Factual Associations in GPT" (ROME, NeurIPS 2022).

One seed: the world :mod:`assay.worlds.knowledge_graph` (orders drawn from ``seed``) and its default tiny
transformer (:func:`assay.models.zoo.world_model`, cached under ``run_dir``) are built; then

1. every fact (e, r) is asked in ``n_contexts`` random contexts (walks ending at e); the model's
   accuracy per fact and each entity's representation h_e (the residual stream after the last block at
   the subject token, averaged over all its prompts) are recorded before any edit;
2. ``n_edits`` facts (e, r) → e′ are drawn, and each is rewritten to the counterfactual e″ that lies d
   hops beyond e′ along r's ring and direction, for d = 1 … max_hops (the paper's edit distance), by
   ROME (:func:`assay.dynamics.editing.rome_edit` on block ``edit_layer``, 0 by default; C from the MLP
   keys at every position of ``cov_walks`` training walks, as ROME takes every position of its text
   corpus) and by fine-tuning (:func:`assay.dynamics.editing.fine_tune_edit`, same block). ROME's key and value sit at the relation
   token by default, not at the subject as in ROME: the trained 2-layer model reads the subject's
   embedding at the relation token through its first attention layer, so a value written after layer 0
   at the subject does not reach the answer (measured, seed 0: an unconstrained δ of norm 30 there lifts
   P(new object) only to 5e-6; at the relation token δ of norm 24 gives 0.99). ``rome_key="subject"``
   runs ROME's own choice;
3. after each edit: efficacy P(e″ | e, r); shattering R(D*) (:func:`assay.evaluate.shattering.shattering`)
   of all entities, and of the far entities only (the edited subject and its ring neighbours within
   max_hops in every order removed); the accuracy drop on the unedited facts.

Metrics per editor E ∈ {rome, ft}: ``E_efficacy``; ``E_R_d1`` / ``E_R_dmax`` (mean R at the nearest /
farthest distance); ``E_R_spearman`` (Spearman of R against d over all edits), ``E_R_far_spearman``;
``E_drop_d1`` / ``E_drop_dmax`` and ``E_drop_spearman``; ``E_R_drop_r2`` (squared Pearson of R with the
drop, the paper's r²). Plus ``pre_edit_acc`` and ``ring_score`` (mean over orders of the pre-edit
representations' :func:`~assay.evaluate.shattering.ring_score`). The claim reproduces when R and the
drop rise with d (Spearman > 0 with an interval above 0 over seeds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from assay.bench.phenomena.base import Curve, Measurement
from assay.dynamics.editing import (
    EditRequest,
    FineTuneConfig,
    RomeConfig,
    fine_tune_edit,
    key_covariance,
    mlp_keys,
    rome_edit,
)
from assay.evaluate.shattering import ring_score, shattering
from assay.hooks import capture
from assay.stats import pearson, spearman
from assay.worlds.base import make_generator

__all__ = ["EditingBudget", "FULL", "QUICK", "KnowledgeEditing", "PHENOMENON", "measure_edits", "summarise",
           "edit_results", "edit_request", "counterfactual_object", "ring_neighbourhood", "EDITORS"]

EDITORS = ("rome", "ft")
"""The editors compared: ROME's rank-one edit and fine-tuning of the same projection."""


@dataclass(frozen=True, kw_only=True)
class EditingBudget:
    """How big one seed's run is."""

    world: dict
    """Overrides of the knowledge-graph world's config (besides its ``seed``)."""
    model: dict = dataclasses.field(default_factory=dict)
    """Overrides of the reference tiny transformer (e.g. ``{"n_layers": 4}``)."""
    train_steps: int | None
    """Training steps of the tiny model (None: the world's reference 3,000)."""
    edit_layer: int = 0
    """Block whose MLP output projection both editors change."""
    n_edits: int
    """Facts edited (each at every distance d = 1 … max_hops, by each editor)."""
    n_contexts: int
    """Contexts per fact for accuracy and representations (the paper averages over 5)."""
    context_steps: int
    """Relation steps in each context walk before the queried fact."""
    cov_walks: int
    """Training walks whose MLP keys (at every entity token) give ROME's covariance C."""
    kl_relations: int
    """Other relations of the edited subject in ROME's KL prompts."""
    rome_key: Literal["relation", "subject"] = "relation"
    """Where ROME reads its key and writes its value: the relation token (the prompt's last, where the 2-layer
    model looks the fact up) or the subject token (ROME's choice, which this model ignores: see the docs)."""


FULL = EditingBudget(world={}, train_steps=None, n_edits=8, n_contexts=5, context_steps=4, cov_walks=2000,
                     kl_relations=4)
"""The documented budget: N = 64 entities, 3 orders, 24 relations, the reference model."""
QUICK = EditingBudget(world={"n_entities": 12, "max_hops": 2, "n_orders": 2, "walk_steps": 6}, train_steps=60,
                      n_edits=2, n_contexts=2, context_steps=2, cov_walks=100, kl_relations=2)
"""A seconds-long budget for tests (the phenomenon need not show)."""


class FactEval:
    """Accuracy on every fact and the entity representations of one model, from one pass over all fact prompts."""

    def __init__(self, model: torch.nn.Module, world, tokens: torch.Tensor, n_contexts: int) -> None:
        N, R = world.config.n_entities, world.config.n_relations
        site = f"blocks.{len(model.blocks) - 1}"
        with torch.no_grad(), capture(model, [site]) as cap:
            logits = model(tokens)[:, -1]
        targets = world.entity_token(world.facts.reshape(-1)).repeat_interleave(n_contexts)
        correct = (logits.argmax(-1) == targets).double()
        self.correct = correct.view(N, R, n_contexts).mean(2)
        """Fraction of contexts in which each fact is answered [N, R]."""
        self.reps = cap[site][:, -2].double().view(N, R * n_contexts, -1).mean(1)
        """Mean residual at the subject token per entity [N, d_model]."""


def ring_neighbourhood(world, e: int) -> torch.Tensor:
    """Entities within max_hops of ``e`` on any ring (``e`` included), as a bool mask [N]."""
    near = torch.zeros(world.config.n_entities, dtype=torch.bool)
    near[e] = True
    near[world.facts[e]] = True
    return near


def counterfactual_object(world, e: int, r: int, d: int) -> int:
    """The entity d hops beyond the true object of (e, r), along r's ring and direction."""
    o, shift = int(world.relation_order[r]), int(world.relation_shift[r])
    N = world.config.n_entities
    step = shift + (d if shift > 0 else -d)
    return int(world.orders[o][(world.positions[o][e] + step) % N])


def edit_request(world, e: int, r: int, new_object: int, budget: EditingBudget, g: torch.Generator) -> EditRequest:
    """The request rewriting (e, r) to ``new_object``: the fact in ``n_contexts`` fresh contexts, ROME's key at
    ``budget.rome_key``, and KL prompts of e with ``kl_relations`` other relations."""
    p = world.fact_prompts(torch.tensor([e]), torch.tensor([r]), n_contexts=budget.n_contexts,
                           context_steps=budget.context_steps, generator=g)
    others = torch.tensor([x for x in range(world.config.n_relations) if x != r])
    kl_rel = others[torch.randperm(len(others), generator=g)[: budget.kl_relations]]
    kl = world.fact_prompts(torch.full((len(kl_rel),), e), kl_rel, n_contexts=1, context_steps=budget.context_steps,
                            generator=g)
    key = p.subject_position if budget.rome_key == "subject" else p.tokens.shape[1] - 1
    return EditRequest(tokens=p.tokens, key_position=key,
                       target=int(world.entity_token(new_object)), kl_tokens=kl.tokens)


def _covariance(model, world, budget: EditingBudget, seed: int) -> torch.Tensor:
    batch = world.sample(budget.cov_walks, generator=make_generator(seed + 7919))
    keys = mlp_keys(model, budget.edit_layer, batch.inputs)
    return key_covariance(keys[batch.inputs != world.pad_id])


def measure_edits(model, world, budget: EditingBudget, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Run every edit; per editor, tensors [n_edits, max_hops] of ``R``, ``R_far``, ``drop``, ``efficacy``, plus
    the pre-edit ``acc`` and ``ring`` (0-d)."""
    cfg = world.config
    N, R, H = cfg.n_entities, cfg.n_relations, cfg.max_hops
    g = make_generator(seed + 104729)
    all_prompts = world.fact_prompts(torch.arange(N).repeat_interleave(R), torch.arange(R).repeat(N),
                                     n_contexts=budget.n_contexts, context_steps=budget.context_steps, generator=g)
    before = FactEval(model, world, all_prompts.tokens, budget.n_contexts)
    cov = _covariance(model, world, budget, seed)
    picks = torch.randperm(N * R, generator=g)[: budget.n_edits]
    out = {E: {k: torch.zeros(budget.n_edits, H, dtype=torch.float64) for k in ("R", "R_far", "drop", "efficacy")}
           for E in EDITORS}
    for i, fact in enumerate(picks.tolist()):
        e, r = divmod(fact, R)
        unedited = torch.ones(N, R, dtype=torch.bool)
        unedited[e, r] = False
        far = ~ring_neighbourhood(world, e)
        for j, d in enumerate(range(1, H + 1)):
            req = edit_request(world, e, r, counterfactual_object(world, e, r, d), budget, g)
            edits = {"rome": rome_edit(model, req, cov, RomeConfig(layer=budget.edit_layer)),
                     "ft": fine_tune_edit(model, req, FineTuneConfig(layer=budget.edit_layer))}
            for E, res in edits.items():
                after = FactEval(res.model, world, all_prompts.tokens, budget.n_contexts)
                out[E]["R"][i, j] = shattering(before.reps, after.reps)
                out[E]["R_far"][i, j] = shattering(before.reps, after.reps, keep=far) if far.sum() >= 2 else float("nan")
                out[E]["drop"][i, j] = before.correct[unedited].mean() - after.correct[unedited].mean()
                out[E]["efficacy"][i, j] = res.target_prob
    rings = [ring_score(before.reps, world.positions[o]) for o in range(cfg.n_orders)]
    out["pre"] = {"acc": before.correct.mean(), "ring": torch.tensor(rings).mean()}
    return out


def summarise(results: dict[str, dict[str, torch.Tensor]]) -> tuple[dict[str, float], tuple[Curve, ...]]:
    """The metrics and curves of :func:`measure_edits`' tensors (module docstring)."""
    metrics = {"pre_edit_acc": float(results["pre"]["acc"]), "ring_score": float(results["pre"]["ring"])}
    curves = []
    for E in EDITORS:
        res = results[E]
        n, H = res["R"].shape
        dist = torch.arange(1, H + 1, dtype=torch.float64).expand(n, H).reshape(-1)
        Rv, drop = res["R"].reshape(-1), res["drop"].reshape(-1)
        far = res["R_far"].reshape(-1)
        ok = ~far.isnan()
        metrics |= {
            f"{E}_efficacy": float(res["efficacy"].mean()),
            f"{E}_R_d1": float(res["R"][:, 0].mean()), f"{E}_R_dmax": float(res["R"][:, -1].mean()),
            f"{E}_R_spearman": float(spearman(dist, Rv)),
            f"{E}_R_far_spearman": float(spearman(dist[ok], far[ok])) if ok.sum() > 2 else float("nan"),
            f"{E}_drop_d1": float(res["drop"][:, 0].mean()), f"{E}_drop_dmax": float(res["drop"][:, -1].mean()),
            f"{E}_drop_spearman": float(spearman(dist, drop)),
            f"{E}_R_drop_r2": float(pearson(Rv, drop) ** 2),
        }
        xs = tuple(float(d) for d in range(1, H + 1))
        curves += [Curve(f"{E}: R(D*)", "edit distance d", "shattering R(D*)", xs,
                         tuple(float(v) for v in res["R"].mean(0))),
                   Curve(f"{E}: accuracy drop", "edit distance d", "accuracy drop (unedited facts)", xs,
                         tuple(float(v) for v in res["drop"].mean(0)))]
    return metrics, tuple(curves)


class KnowledgeEditing:
    """Counterfactual edits of the cyclic knowledge graph at growing edit distance, by ROME and fine-tuning."""

    name = "knowledge_editing"
    title = "Knowledge editing shatters representations (Nishi et al. 2025)"
    claim = ("Nishi et al. 2025: editing a fact of a cyclic knowledge graph distorts ('shatters') the geometry of "
             "the other entities' representations, and more so the farther the new object is from the true one "
             "(R(D*) grows with edit distance d), with accuracy on unedited facts falling with it. Shown by "
             "E_R_spearman > 0 and E_drop_spearman > 0 (Spearman against d) for the editor E.")
    metrics = ("pre_edit_acc", "ring_score") + tuple(
        f"{E}_{m}" for E in EDITORS for m in ("efficacy", "R_d1", "R_dmax", "R_spearman", "R_far_spearman",
                                             "drop_d1", "drop_dmax", "drop_spearman", "R_drop_r2"))

    def measure(self, seed: int, *, quick: bool, run_dir: Path) -> Measurement:
        """Train (or load) the seed's model under ``run_dir``, run every edit and summarise (module docstring)."""
        metrics, curves = summarise(edit_results(seed, QUICK if quick else FULL, run_dir))
        return Measurement(metrics, curves)


def edit_results(seed: int, budget: EditingBudget, run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Train (or load from ``run_dir``) the seed's default model and run :func:`measure_edits` on it."""
    from assay.models.zoo import world_model

    train = {"steps": budget.train_steps} if budget.train_steps is not None else {}
    wm = world_model("knowledge_graph", world_overrides={**budget.world, "seed": seed}, model_overrides=budget.model,
                     train_overrides=train, seed=seed, cache_dir=run_dir, progress=False)
    return measure_edits(wm.model, wm.world, budget, seed)


PHENOMENON = KnowledgeEditing()
"""The registered phenomenon (:data:`assay.bench.phenomena.registry.PHENOMENA`)."""
