"""The methods of the pruning bench family, built from spec parameters and scored on a prepared world.

``dense`` is the unpruned reference. Three kinds, each scored by the metrics its world's truth supports:

- **weight masks** (unstructured, every Linear layer, one global ranking unless ``scope=layer``):
  ``magnitude`` (Zhu & Gupta 2017), ``lamp`` (Lee et al. 2021), ``snip`` (Lee, Ajanthan & Torr 2019: scored
  at initialisation, then the sparse network is trained with the mask fixed), ``flow`` (the per-weight
  gradient-flow measures of Lubana & Dick 2021), ``random`` (the control), ``nm`` (N:M semi-structured
  sparsity, Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks": the ``n`` largest |θ| of every
  ``m`` consecutive inputs kept, sparsity 1 − n/m; the masks are saved in the run folder); and ``schedule`` — magnitude
  pruning while fine-tuning the trained model with :func:`assay.pruning.schedules.prune_and_finetune`:
  ``one_shot``, ``cubic`` (one cycle of gradual magnitude pruning, Zhu & Gupta 2017) or ``cyclical``
  (Srinivas et al. 2022), over the same budget;
- **neuron removal** (structured, physical, :func:`assay.pruning.structured.remove_units`):
  ``surgery`` (data-free merging, Srinivas & Babu 2015), ``neuron_magnitude`` (group magnitude, Fang et al.
  2023), ``neuron_random`` (the control), ``gates`` (hard-concrete L0 gates, Louizos et al. 2018, trained
  with the weights, then materialised);
- ``early`` — Lubana & Dick's claim (i): prune neurons by ``measure`` after a few training steps, keep
  training, and record how fast the loss falls.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from assay.bench.pruning_worlds import PreparedPruning, task_loss, train_steps
from assay.bench.runner import RunContext

__all__ = ["METHOD_PARAMS", "APPLIES", "check_method", "finetune_masked", "score_method"]

WEIGHT_MASKS = ("magnitude", "lamp", "snip", "flow", "random", "nm")
NEURONS = ("surgery", "neuron_magnitude", "neuron_random", "gates")

METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "dense": {},
    "magnitude": {"scope": "global", "sparsity": None},
    "lamp": {"sparsity": None},
    "snip": {"sparsity": None},
    "flow": {"measure": "loss_preservation", "sparsity": None},
    "random": {"sparsity": None},
    "nm": {"n": 2, "m": 4},
    "schedule": {"kind": "cubic", "sparsity": None, "cycles": 3},
    "surgery": {"share": None, "scale_invariant": True},
    "neuron_magnitude": {"share": None},
    "neuron_random": {"share": None},
    "gates": {"lam": 0.5},
    "early": {"measure": "magnitude", "share": 0.5},
}
"""Method name → its spec parameters and their defaults (None: the world's default)."""

APPLIES = {
    "sparse_teacher": ("dense", *WEIGHT_MASKS, "schedule"),
    "redundancy": NEURONS,
    "digits_mlp": ("dense", *WEIGHT_MASKS, "schedule", "surgery", "neuron_magnitude", "neuron_random", "early"),
}
"""World name → the methods scored on it (others return no metrics)."""

SCHEDULE_KINDS = ("one_shot", "cubic", "cyclical")
PRUNE_FRACTION = 0.8
"""Share of a schedule's steps spent pruning; the rest fine-tunes with the mask fixed."""


def check_method(name: str, p: dict[str, Any]) -> None:
    """Refuse a bad choice in a method's parameters before any work starts (ConfigError naming the valid ones)."""
    from assay.config import check_choice
    from assay.pruning.importance import EXTRA_MEASURES, MEASURES
    from assay.pruning.masks import check_sparsity

    choices = {"scope": ("layer", "global"), "kind": SCHEDULE_KINDS, "measure": MEASURES + EXTRA_MEASURES}
    for key, valid in choices.items():
        if key in p:
            check_choice(f"{name} {key}", p[key], valid)
    for key in ("sparsity", "share"):
        if p.get(key) is not None:
            check_sparsity(p[key], f"{name} {key}")
    if name == "nm" and not (isinstance(p["n"], int) and isinstance(p["m"], int) and 0 < p["n"] < p["m"]):
        from assay.config import ConfigError

        raise ConfigError(f"nm needs integers 0 < n < m (n of every m weights kept), got n={p['n']!r}, m={p['m']!r}")


def _layers(model: nn.Module) -> tuple[str, ...]:
    from assay.pruning.masks import prunable_layers

    return prunable_layers(model)


def _loss_fn(prepared: PreparedPruning, temperature: float = 1.0):
    fn = task_loss(prepared.loss)
    return lambda model, batch: fn(model(batch[0]) / temperature if prepared.loss == "cross_entropy"
                                   else model(batch[0]), batch[1])


def _batches(prepared: PreparedPruning, settings: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y = prepared.train
    n = min(len(x), settings.score_batches * settings.batch_size)
    return [(x[i : i + settings.batch_size], y[i : i + settings.batch_size]) for i in range(0, n, settings.batch_size)]


@torch.no_grad()
def _task(model: nn.Module, prepared: PreparedPruning) -> dict[str, float]:
    """Test accuracy (classification) or FVU of the targets (regression)."""
    x, y = prepared.test
    out = model(x)
    if prepared.loss == "cross_entropy":
        return {"accuracy": float((out.argmax(-1) == y).float().mean()), "loss": float(F.cross_entropy(out, y))}
    from assay.evaluate.reconstruction import fvu

    return {"fvu": float(fvu(y, out))}


def _cost(model: nn.Module, prepared: PreparedPruning) -> dict[str, float]:
    from assay.evaluate.cost import count_macs, count_parameters

    macs = count_macs(model, prepared.test[0][:1])
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {"params": count_parameters(model), "nonzero_params": nonzero, "macs": macs.macs,
            "nonzero_macs": macs.nonzero_macs}


def _weight_masks(name: str, p: dict[str, Any], prepared: PreparedPruning, s: float, settings: Any,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    from assay.pruning.importance import flow_scores, lamp_scores, nm_masks
    from assay.pruning.magnitude import magnitude_masks, prune_lowest

    model = prepared.model
    weights = {n: model.get_submodule(n).weight.detach() for n in _layers(model)}
    if name == "nm":
        return nm_masks(weights, p["n"], p["m"])
    if name == "magnitude":
        return magnitude_masks(weights, s, scope=p["scope"])
    if name == "lamp":
        return prune_lowest(lamp_scores(weights), s, scope="global")
    if name == "random":
        return prune_lowest({n: torch.rand(w.shape, generator=generator) for n, w in weights.items()}, s)
    temperature = 1.0 if prepared.loss == "mse" else (200.0 if p["measure"] in ("grasp", "grad_preserve") else 5.0)
    scores = flow_scores(model, p["measure"], _loss_fn(prepared, temperature), _batches(prepared, settings),
                         unit="weight")
    return prune_lowest(scores, s, scope="global")


def finetune_masked(model: nn.Module, masks: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor], loss: str,
                    *, steps: int, lr: float, batch_size: int, generator: torch.Generator) -> nn.Module:
    """A copy of ``model`` masked by ``masks`` (masked weights frozen at 0) trained ``steps`` Adam steps
    on ``data``, the masks baked in."""
    from assay.pruning.masks import apply_masks, materialize

    tuned = copy.deepcopy(model)
    apply_masks(tuned, masks, regrow=False)
    train_steps(tuned, data, loss, steps=steps, lr=lr, batch_size=batch_size, generator=generator)
    return materialize(tuned)


def _support(masks: dict[str, torch.Tensor], model: nn.Module, prepared: PreparedPruning) -> dict[str, float]:
    if prepared.name != "sparse_teacher":
        return {}
    from assay.worlds.sparse_teacher import match_hidden_units, support_recovery

    world = prepared.truth
    perms = match_hidden_units(model, world.teacher, prepared.test[0])
    return {"support_recovery": support_recovery(masks, world.support, perms)}


def _masked(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    from assay.pruning.masks import apply_masks, materialize

    return materialize(apply_masks(copy.deepcopy(model), masks))


def _score_weight_masks(name: str, p: dict[str, Any], prepared: PreparedPruning, ctx: RunContext,
                        g: torch.Generator) -> dict[str, float]:
    if name == "nm":
        s = 1 - p["n"] / p["m"]
    else:
        s = prepared.default_sparsity if p["sparsity"] is None else float(p["sparsity"])
    settings = ctx.settings
    if name == "snip":  # score at initialisation, then train the sparse network from there
        from assay.pruning.importance import snip_scores
        from assay.pruning.magnitude import prune_lowest

        model = copy.deepcopy(prepared.model)
        model.load_state_dict(prepared.init_state)
        masks = prune_lowest(snip_scores(model, _loss_fn(prepared), _batches(prepared, settings)[0]), s)
        steps = settings.train_steps if prepared.name == "sparse_teacher" else settings.digits_steps
        trained = finetune_masked(model, masks, prepared.train, prepared.loss, steps=steps, lr=settings.finetune_lr,
                                  batch_size=settings.batch_size, generator=g)
        return {**_support(masks, trained, prepared), **{f"{k}_finetuned": v for k, v in _task(trained, prepared).items()},
                **_cost(trained, prepared), "sparsity": s}
    masks = _weight_masks(name, p, prepared, s, settings, g)
    if name == "nm":
        from assay.pruning.masks import save_masks

        save_masks(ctx.run_dir / "masks", masks, meta={"rule": f"{p['n']}:{p['m']}"})
    pruned = _masked(prepared.model, masks)
    tuned = finetune_masked(prepared.model, masks, prepared.train, prepared.loss, steps=settings.finetune_steps,
                            lr=settings.finetune_lr, batch_size=settings.batch_size, generator=g)
    return {**_support(masks, prepared.model, prepared), **_task(pruned, prepared),
            **{f"{k}_finetuned": v for k, v in _task(tuned, prepared).items()}, **_cost(pruned, prepared), "sparsity": s}


def _score_schedule(p: dict[str, Any], prepared: PreparedPruning, ctx: RunContext, g: torch.Generator
                    ) -> dict[str, float]:
    from assay.pruning.masks import materialize
    from assay.pruning.schedules import PruneConfig, ScheduleConfig, prune_and_finetune

    settings = ctx.settings
    s = prepared.default_sparsity if p["sparsity"] is None else float(p["sparsity"])
    pruning = round(PRUNE_FRACTION * settings.finetune_steps)
    if p["kind"] == "one_shot":
        schedule = ScheduleConfig(kind="one_shot", final_sparsity=s)
    else:
        cycles = 1 if p["kind"] == "cubic" else int(p["cycles"])
        schedule = ScheduleConfig(kind="cyclical", final_sparsity=s, cycles=cycles, cycle_steps=pruning // cycles)
    cfg = PruneConfig(schedule=schedule, steps=settings.finetune_steps, batch_size=settings.batch_size,
                      lr=settings.finetune_lr, layers=_layers(prepared.model), loss=prepared.loss,
                      checkpoint_every=settings.finetune_steps)
    res = prune_and_finetune(copy.deepcopy(prepared.model), prepared.train, cfg, out_dir=ctx.run_dir / "schedule",
                             generator=g)
    model = materialize(res.model)
    return {**_support(res.masks, model, prepared), **{f"{k}_finetuned": v for k, v in _task(model, prepared).items()},
            **_cost(model, prepared), "sparsity": res.sparsity.global_sparsity}


def _hidden_keep(name: str, p: dict[str, Any], prepared: PreparedPruning, g: torch.Generator, settings: Any
                 ) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """Keep-masks over each hidden layer's units and the model they apply to (merged or gated)."""
    from assay.pruning.magnitude import n_pruned, prune_lowest
    from assay.pruning.structured import dependency_groups, structured_keep

    model = prepared.model
    share = prepared.default_share if p.get("share") is None else float(p["share"])
    if name == "gates":
        return _gated_keep(p, prepared, g, settings)
    if name == "surgery":
        from assay.pruning.surgery import SurgeryConfig, merge_neurons, neuron_layers

        merged, keep = model, {}
        for layer in neuron_layers(model):  # one layer at a time (widths differ), each on the previous result
            n = n_pruned(model.get_submodule(layer.incoming).out_features, share)
            res = merge_neurons(merged, SurgeryConfig(n_merges=n, scale_invariant=bool(p["scale_invariant"])), [layer])
            merged = res.model
            keep.update(res.keep)
        return keep, merged
    if name == "neuron_magnitude":
        return structured_keep(model, share), model
    groups = dependency_groups(model)
    scores = {n: torch.rand(gr.n_units, generator=g) for n, gr in groups.items()}
    return prune_lowest(scores, share, scope="layer"), model


def _gated_keep(p: dict[str, Any], prepared: PreparedPruning, g: torch.Generator, settings: Any
                ) -> tuple[dict[str, torch.Tensor], nn.Module]:
    from assay.pruning.gates import Gates, HardConcreteConfig
    from assay.pruning.structured import unit_sites

    student = copy.deepcopy(prepared.model)
    sites = unit_sites(student)
    sizes = {site: student.get_submodule(layer).out_features for site, layer in sites.items()}
    gates = Gates(sizes, HardConcreteConfig(init_log_alpha=0.0))
    n = sum(sizes.values())
    var = prepared.train[1].var(0).sum()
    lam = float(p["lam"])
    params = [{"params": student.parameters(), "lr": settings.gate_lr}, {"params": gates.parameters(), "lr": 0.05}]
    with gates.attached(student, generator=g):
        x, y = prepared.train
        opt = torch.optim.Adam(params)
        student.train()
        for _ in range(settings.gate_steps):
            idx = torch.randint(len(x), (settings.batch_size,), generator=g)
            loss = (student(x[idx]) - y[idx]).pow(2).mean(0).sum() / var + lam * gates.expected_l0() / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        student.eval()
    gates.eval()
    small = gates.materialize(student)
    keep = {sites[s]: k for s, k in gates.keep_mask().items()}
    return keep, small


def _score_neurons(name: str, p: dict[str, Any], prepared: PreparedPruning, ctx: RunContext, g: torch.Generator
                   ) -> dict[str, float]:
    from assay.evaluate.reconstruction import fvu
    from assay.pruning.structured import remove_units

    keep, base = _hidden_keep(name, p, prepared, g, ctx.settings)
    small = base if name == "gates" else remove_units(base, keep)
    out: dict[str, float] = {"units_removed": float(sum(int((~k).sum()) for k in keep.values()))}
    if prepared.name == "redundancy":
        from assay.evaluate.redundancy import pair_removal

        pr = pair_removal(~keep["fc0"], prepared.truth.pairs())
        with torch.no_grad():
            change = fvu(prepared.test[1], small(prepared.test[0]))
        return {**out, "pair_precision": pr.precision, "pair_recall": pr.recall, "output_change": float(change),
                **_cost(small, prepared)}
    tuned = copy.deepcopy(small)
    train_steps(tuned, prepared.train, prepared.loss, steps=ctx.settings.finetune_steps, lr=ctx.settings.finetune_lr,
                batch_size=ctx.settings.batch_size, generator=g)
    return {**out, **_task(small, prepared), **{f"{k}_finetuned": v for k, v in _task(tuned, prepared).items()},
            **_cost(small, prepared)}


def _score_early(p: dict[str, Any], prepared: PreparedPruning, ctx: RunContext, g: torch.Generator) -> dict[str, float]:
    from assay.pruning.importance import flow_scores
    from assay.pruning.magnitude import prune_lowest
    from assay.pruning.structured import dependency_groups, remove_units

    if prepared.early_state is None:
        return {}
    settings = ctx.settings
    model = copy.deepcopy(prepared.model)
    model.load_state_dict(prepared.early_state)
    hidden = tuple(dependency_groups(model))
    temperature = 200.0 if p["measure"] in ("grasp", "grad_preserve") else 5.0
    scores = flow_scores(model, p["measure"], _loss_fn(prepared, temperature), _batches(prepared, settings),
                         layers=hidden, unit="neuron")
    small = remove_units(model, prune_lowest(scores, float(p["share"]), scope="layer"))
    start = _task(small, prepared)
    losses = train_steps(small, prepared.train, prepared.loss, steps=settings.retrain_steps, lr=settings.digits_lr,
                         batch_size=64, generator=g)
    quarter = max(1, len(losses) // 4)
    return {"accuracy": start["accuracy"], "loss": start["loss"], **{f"{k}_finetuned": v for k, v in
                                                                       _task(small, prepared).items()},
            "retrain_loss_mean": sum(losses) / len(losses), "retrain_loss_first_quarter": sum(losses[:quarter]) / quarter,
            **_cost(small, prepared)}


def score_method(name: str, p: dict[str, Any], prepared: PreparedPruning, ctx: RunContext) -> dict[str, float]:
    """Metric name → value of method ``name`` with parameters ``p`` on ``prepared``; ``{}`` where the
    method does not apply to the world (:data:`APPLIES`)."""
    from assay.worlds.base import make_generator

    if name not in APPLIES[prepared.name]:
        return {}
    g = make_generator(ctx.seed + 7)
    if name == "dense":  # the unpruned reference
        return {**_task(prepared.model, prepared), **_cost(prepared.model, prepared), "sparsity": 0.0}
    if name in WEIGHT_MASKS:
        return _score_weight_masks(name, p, prepared, ctx, g)
    if name == "schedule":
        return _score_schedule(p, prepared, ctx, g)
    if name == "early":
        return _score_early(p, prepared, ctx, g)
    return _score_neurons(name, p, prepared, ctx, g)
