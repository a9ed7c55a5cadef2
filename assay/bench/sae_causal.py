"""Bench family ``sae-causal``: does editing an SAE latent matched to a grammar concept move the model's
next-token validity mass the way the grammar says, and are two such edits isolated or entangled?

Menon, Shrivastava, Krueger & Lubana 2025, "Analyzing (In)Abilities of SAEs via Formal Languages" (NAACL 2025,
arXiv 2410.11767), §5 (causal interventions on latents of SAEs trained on formal-language models). The metrics
are :mod:`assay.evaluate.validity`; every edit goes through :func:`assay.lenses.intervene.intervene`.

**World** ``dyck[:site=…,sae=…,k=…,expansion=…]``: the Dyck-2 world's tiny transformer from the model zoo
(:func:`assay.models.zoo.world_model`; width, depth, context and steps from the settings), cached, and one SAE
(default TopK, k = 8, 4 × d_model latents) trained at ``site`` (default ``blocks.0``, the residual between the
two blocks) on every bracket token (no pad, BOS or EOS) of ``n_sequences`` documents; the same tokens match
latents to concepts and give the probe's class means. Edits are measured on ``n_edit`` fresh documents.

**Concepts** (method parameter ``concept``), each a state change a → b at the *edited* positions:

    depth   a: depth 0 (the string so far is balanced)  →  b: depth ≥ 1     grammar: closing brackets become valid,
                                                                             <eos> invalid
    top     a: stack top o0 (depth ≥ 1)                 →  b: stack top o1   grammar: c1 becomes valid, c0 invalid

Edit A raises b, edit B suppresses a. Every edit is made at one position at a time (the others untouched) and
read at that position. V is the world's ``valid_next`` there, V′ the union of ``valid_next`` over the b
positions; ``predicted`` is the mass the unedited model puts on V′ \\ V at real b positions minus its mass on
V′ \\ V at the edited positions — the shift the grammar asks of a perfect concept edit.

**Methods** (parameter ``scale``, default 1, multiplies the value A is set to):

    latent  A: Set the latent with the highest AUROC for b to scale × its mean where b holds and it fires;
            B: Set the latent with the highest AUROC for a to 0
    random  the same edits on two random live latents other than those, A set to the value whose decoder step
            is as long as the matched A's: the control
    probe   difference-of-means directions with lens None: A adds scale × (μ_b − μ), B adds μ − μ_a
            (μ the mean over eligible positions), so A + B moves the class-a mean onto the class-b mean

**Metrics** (means over edited positions): ``gained_a``, ``gained_b``, ``gained_ab`` (Δ mass on V′ \\ V under
A, B, both), ``lost_ab`` (Δ mass on V \\ V′ under both), ``predicted``, ``ratio_ab`` = gained_ab / predicted,
``gap_rel`` = mean ‖Δ_{A+B} − Δ_A − Δ_B‖ / mean ‖Δ_{A+B}‖ of centred next-token logits (0: isolated),
``auroc_a`` / ``auroc_b`` (how well the edited code reads b / a), ``edit_norm`` (mean ‖h′ − h‖ of A + B over
the mean ‖h‖ at the site), ``base_valid`` (the unedited model's validity mass at the edited positions),
``sae_fvu``, ``sae_l0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from assay.bench.runner import BenchResult, RunContext, check_params, expand_with, summary_rows
from assay.bench.spec import SpecRun, world_params
from assay.config import ConfigError, check_choice
from assay.worlds.base import make_generator

__all__ = ["WORLD_PARAMS", "METHOD_PARAMS", "CONCEPTS", "CausalSettings", "CausalWorld", "ConceptEdits",
           "prepare_world", "concept_positions", "concept_edits", "edited_logits", "score_run", "FAMILY"]

WORLD_PARAMS: dict[str, dict[str, Any]] = {"dyck": {"site": "blocks.0", "sae": "topk", "k": 8, "expansion": 4}}
"""World name → its spec parameters with their defaults."""

CONCEPTS = ("depth", "top")
"""The grammar concepts a run may edit (module docstring)."""

METHOD_PARAMS: dict[str, dict[str, Any]] = {m: {"concept": "depth", "scale": 1.0} for m in ("latent", "random", "probe")}
"""Method name → its spec parameters with their defaults."""

RANDOM_SEED_OFFSET = 1_000_003
"""The random control draws its latents from seed + this offset."""


@dataclass(frozen=True, kw_only=True)
class CausalSettings:
    """The run budget of the SAE causal bench (``--options key=value``)."""

    model_steps: int = 600
    """AdamW updates of the world model (the zoo trains it once per world and seed and caches it)."""
    d_model: int = 32
    """Width of the world model."""
    n_layers: int = 2
    """Blocks of the world model."""
    context: int = 32
    """Context of the world model; documents are cut to it."""
    sae_steps: int = 400
    """SAE training steps (batches of 256 activation rows, lr 1e-3)."""
    n_sequences: int = 256
    """Documents whose bracket tokens train the SAE, match latents and give the probe means."""
    n_edit: int = 128
    """Fresh documents whose eligible positions are edited."""

    def __post_init__(self) -> None:
        for name in ("model_steps", "d_model", "n_layers", "sae_steps", "n_sequences", "n_edit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % 2:
            raise ConfigError(f"d_model must be even (2 attention heads), got {self.d_model}")
        if self.context < 4:
            raise ConfigError(f"context must be >= 4, got {self.context}")


class Docs(NamedTuple):
    """Documents with their per-token labels and site activations."""

    tokens: Tensor
    """Token ids ``[N, T]``."""
    text: Tensor
    """Bracket positions (no pad, BOS or EOS) ``[N, T]``."""
    depth: Tensor
    """Stack depth after each token ``[N, T]``."""
    top: Tensor
    """Type of the innermost open bracket (−1: none) ``[N, T]``."""
    valid: Tensor
    """The grammar's valid next tokens ``[N, T, V]`` (bool)."""
    h: Tensor
    """Activations at the site ``[N, T, d]``."""


class CausalWorld(NamedTuple):
    """A prepared world: the model, its SAE and the documents to match and to edit."""

    name: str
    """The world spec."""
    model: Any
    """The trained world model (eval mode, no gradients)."""
    site: str
    """The edited site."""
    sae: Any
    """The SAE trained at the site."""
    fit: Docs
    """Documents that trained the SAE; they match latents and give the probe means."""
    edit: Docs
    """Fresh documents whose positions are edited."""
    sae_fvu: float
    """The SAE's fraction of variance unexplained on its training rows."""
    sae_l0: float
    """Its mean number of active latents per row."""


def _docs(model: Any, world: Any, site: str, n: int, context: int, seed: int) -> Docs:
    from assay.hooks import run_to

    b = world.sample(n, generator=make_generator(seed))
    tok = b.inputs[:, :context]
    text = (tok != world.pad_id) & (tok != world.bos_id) & (tok != world.eos_id)
    with torch.no_grad():
        h = run_to(model, site, tok)
    return Docs(tok, text, b.labels["depth"][:, :context], b.labels["top"][:, :context],
                b.labels["valid_next"][:, :context], h)


def prepare_world(spec: str, seed: int, settings: CausalSettings) -> CausalWorld:
    """Train (or load) the world model, train its SAE, draw the documents (module docstring)."""
    from assay.bench.sae_fragility import SAE_ARCHS, sae_quality, train_sae
    from assay.hooks import SiteError, resolve
    from assay.models.zoo import world_model

    name, p = world_params(spec, WORLD_PARAMS)
    check_choice("sae", p["sae"], SAE_ARCHS)
    s = settings
    wm = world_model(name, model_overrides={"n_layers": s.n_layers, "n_heads": 2, "d_model": s.d_model,
                                            "context": s.context},
                     train_overrides={"steps": s.model_steps, "warmup": max(1, min(100, s.model_steps // 10)),
                                      "eval_every": None, "eval_size": 64},
                     seed=seed, progress=False)
    model = wm.model.eval().requires_grad_(False)
    site = str(p["site"])
    try:
        resolve(model, site)
    except SiteError as e:
        raise ConfigError(f"{name} world: {e}; the sites are embed and blocks.0..blocks.{s.n_layers - 1}") from None
    fit = _docs(model, wm.world, site, s.n_sequences, s.context, 10_000 + seed)
    edit = _docs(model, wm.world, site, s.n_edit, s.context, 30_000 + seed)
    acts = fit.h[fit.text]
    sae = train_sae(str(p["sae"]), acts, d_sae=int(p["expansion"]) * acts.shape[1], k=int(p["k"]),
                    steps=s.sae_steps, batch_size=256, seed=seed)
    l0, fvu = sae_quality(sae, acts)
    return CausalWorld(spec, model, site, sae, fit, edit, fvu, l0)


def concept_positions(docs: Docs, concept: str) -> tuple[Tensor, Tensor]:
    """``(in_a, in_b)`` ``[N, T]`` bool: the positions in state a and in state b of ``concept`` (module docstring)."""
    check_choice("concept", concept, CONCEPTS)
    if concept == "depth":
        return docs.text & (docs.depth == 0), docs.text & (docs.depth >= 1)
    deep = docs.text & (docs.depth >= 1)
    return deep & (docs.top == 0), deep & (docs.top == 1)


class ConceptEdits(NamedTuple):
    """The three edits of a run, each a ``(lens, edit)`` pair for :func:`intervene`, and what the codes read."""

    a: tuple[Any, Any]
    """Raise b."""
    b: tuple[Any, Any]
    """Suppress a."""
    both: tuple[Any, Any]
    """A and B together."""
    auroc_a: float
    """AUROC of A's code for b over the eligible fitting positions."""
    auroc_b: float
    """AUROC of B's code for a."""


def concept_edits(w: CausalWorld, method: str, concept: str, scale: float, seed: int) -> ConceptEdits:
    """The edits of ``method`` for ``concept`` (module docstring), matched on the fitting documents."""
    from assay.lens import Add, Set
    from assay.stats import auroc, auroc_matrix

    in_a, in_b = concept_positions(w.fit, concept)
    elig = in_a | in_b
    h, is_b = w.fit.h[elig], in_b[elig]
    if method == "probe":
        mu, mu_a, mu_b = h.mean(0), h[~is_b].mean(0), h[is_b].mean(0)
        read = h @ (mu_b - mu_a)
        va, vb = scale * (mu_b - mu), mu - mu_a
        return ConceptEdits((None, Add(amount=va)), (None, Add(amount=vb)), (None, Add(amount=va + vb)),
                            auroc(read, is_b), auroc(-read, ~is_b))
    with torch.no_grad():
        z = w.sae.encode(h)
    au = auroc_matrix(z, torch.stack([is_b, ~is_b], 1)).nan_to_num(0.5)
    ma, mb = int(au[:, 0].argmax()), int(au[:, 1].argmax())
    la, lb = ma, mb
    if method == "random":
        live = ((z != 0).any(0)).nonzero().squeeze(1)
        pool = torch.tensor([i for i in live.tolist() if i not in (ma, mb)])
        if len(pool) < 2:
            raise ConfigError("the SAE has fewer than two live latents besides the matched ones; train it longer")
        la, lb = pool[torch.randperm(len(pool), generator=make_generator(seed + RANDOM_SEED_OFFSET))[:2]].tolist()
    on = is_b & (z[:, ma] != 0)
    va = scale * float(z[on, ma].mean()) if on.any() else scale * float(z[:, ma].abs().max())
    if la != ma:  # the random latent's step is as long as the matched latent's: the same edit size, another atom
        with torch.no_grad():
            unit = torch.eye(z.shape[1], dtype=z.dtype)[[ma, la]]
            norms = (w.sae.decode(unit) - w.sae.decode(torch.zeros_like(unit))).norm(dim=-1)
        va *= float(norms[0] / norms[1])
    return ConceptEdits((w.sae, Set(concepts=la, value=va)), (w.sae, Set(concepts=lb, value=0.0)),
                        (w.sae, Set(concepts=[la, lb], value=torch.tensor([va, 0.0]))),
                        float(au[la, 0]), float(au[lb, 1]))


def edited_logits(model: Any, site: str, tokens: Tensor, where: Tensor, pair: tuple[Any, Any] | None) -> Tensor:
    """Next-token logits ``[n, V]`` at the ``where`` positions (bool ``[N, T]``, row-major order), each read with
    the edit ``pair`` made at that position alone (``None``: unedited)."""
    from assay.lenses.intervene import At, intervene

    rows, cols = where.nonzero(as_tuple=True)
    out = torch.empty(len(rows), model.config.vocab_size)
    with torch.no_grad():
        for p in cols.unique().tolist():
            pick = (cols == p).nonzero().squeeze(1)
            x = tokens[rows[pick]]
            if pair is None:
                out[pick] = model(x)[:, p].float()
                continue
            with intervene(model, site, pair[0], pair[1], positions=At(p), record=False):
                out[pick] = model(x)[:, p].float()
    return out


def score_run(w: CausalWorld, run: SpecRun, ctx: RunContext) -> dict[str, float]:
    """Edit every eligible position of the edit documents with the run's three edits (module docstring)."""
    from assay.evaluate.validity import additivity_gap, validity_mass, validity_shift
    from assay.lens import apply_edit

    p = method_params(run)
    edits = concept_edits(w, run.name, p["concept"], float(p["scale"]), ctx.seed)
    d = w.edit
    in_a, in_b = concept_positions(d, p["concept"])
    if not in_a.any() or not in_b.any():
        raise ConfigError(f"the edit documents hold no positions of both states of {p['concept']!r}; raise n_edit")
    valid = d.valid[in_a]
    changed = concept_positions(w.fit, p["concept"])[1]
    valid_changed = w.fit.valid[changed].any(0).expand_as(valid)
    base = edited_logits(w.model, w.site, d.tokens, in_a, None)
    logits = {k: edited_logits(w.model, w.site, d.tokens, in_a, getattr(edits, k)) for k in ("a", "b", "both")}
    shift = {k: validity_shift(base, v, valid, valid_changed) for k, v in logits.items()}
    new = valid_changed & ~valid
    at_b = edited_logits(w.model, w.site, d.tokens, in_b, None)
    predicted = float(validity_mass(at_b, new[:1].expand_as(at_b)).mean() - validity_mass(base, new).mean())
    gap, size = additivity_gap(base, logits["a"], logits["b"], logits["both"])
    h = d.h[in_a]
    moved = apply_edit(h, *edits.both)[0] - h
    gained_ab = float(shift["both"].gained.mean())
    return {
        "gained_a": float(shift["a"].gained.mean()), "gained_b": float(shift["b"].gained.mean()),
        "gained_ab": gained_ab, "lost_ab": float(shift["both"].lost.mean()), "predicted": predicted,
        "ratio_ab": gained_ab / predicted if predicted > 0 else float("nan"),
        "gap_rel": float(gap.mean() / size.mean().clamp_min(1e-12)), "gap": float(gap.mean()),
        "auroc_a": edits.auroc_a, "auroc_b": edits.auroc_b,
        "edit_norm": float(moved.norm(dim=-1).mean() / h.norm(dim=-1).mean()),
        "base_valid": float(validity_mass(base, valid).mean()), "sae_fvu": w.sae_fvu, "sae_l0": w.sae_l0,
    }


def method_params(run: SpecRun) -> dict[str, Any]:
    """The parameters of a run over its method's defaults, validated."""
    p = check_params(run, METHOD_PARAMS[run.name])
    check_choice("concept", p["concept"], CONCEPTS)
    if isinstance(p["scale"], bool) or not isinstance(p["scale"], (int, float)) or not p["scale"] > 0:
        raise ConfigError(f"scale of {run.name!r} must be a number > 0, got {p['scale']!r}")
    return p


class CausalFamily:
    """Concept edits on SAE latents, random latents and probe directions of a Dyck world model (module docstring)."""

    name = "sae-causal"
    title = "SAE causal test: concept edits against the grammar's valid continuations (Menon et al.)"
    worlds: tuple[str, ...] = ("dyck",)
    methods: tuple[str, ...] = ("latent:concept=depth|top", "random:concept=depth|top", "probe:concept=depth|top")
    metrics: tuple[str, ...] = ("gained_a", "gained_b", "gained_ab", "predicted", "ratio_ab", "lost_ab", "gap_rel",
                                "auroc_a", "auroc_b", "edit_norm")
    settings_type = CausalSettings

    def world_names(self) -> dict[str, dict[str, Any]]:
        return WORLD_PARAMS

    def method_names(self) -> tuple[str, ...]:
        return tuple(METHOD_PARAMS)

    def expand(self, spec: str) -> list[SpecRun]:
        runs = expand_with(METHOD_PARAMS)(spec)
        for run in runs:
            method_params(run)
        return runs

    def prepare(self, world: str, seed: int, settings: CausalSettings) -> CausalWorld:
        return prepare_world(world, seed, settings)

    def score(self, prepared: CausalWorld, run: SpecRun, ctx: RunContext) -> dict[str, float]:
        return score_run(prepared, run, ctx)

    def section(self, result: BenchResult) -> Any:
        from assay.report import Section, Table

        columns, rows = summary_rows(result, self.metrics)
        s = result.settings
        seeds = sorted({r["seed"] for r in result.runs})
        sae = {(r["metrics"]["sae_fvu"], r["metrics"]["sae_l0"]) for r in result.runs if r["seed"] == seeds[0]}
        notes = [
            f"World model: {s.n_layers}-layer d={s.d_model} transformer on Dyck-2 (model zoo, {s.model_steps} steps, "
            f"context {s.context}); SAE trained {s.sae_steps} steps on {s.n_sequences} documents (seed {seeds[0]}: "
            + "; ".join(f"FVU {f:.3f}, L0 {l0:.1f}" for f, l0 in sae) + f"); {s.n_edit} edit documents. Cells: mean "
            f"over seeds ({', '.join(map(str, seeds))}) with a 95% Student-t interval.",
            "gained_*: change of the next-token probability on tokens the grammar makes valid by the concept change "
            "(depth: closing brackets at a depth-0 position; top: c1 where the stack top is o0), under edit A (raise "
            "the new state), B (suppress the old) and both. predicted: what a perfect edit would gain (the model's "
            "mass on those tokens where the state really holds, minus before). ratio_ab = gained_ab / predicted.",
            "gap_rel: ‖Δ(A+B) − ΔA − ΔB‖ / ‖Δ(A+B)‖ of centred next-token logits (0: the two edits are isolated; "
            "large: entangled). random: the same edits on two random live latents (control); probe: "
            "difference-of-means directions (reference). edit_norm: ‖h′ − h‖ / ‖h‖ of A + B at the site.",
        ]
        return Section(self.title, [Table("Concept edits: validity-mass shift and additivity", columns, rows)], [],
                       notes)


FAMILY = CausalFamily()
"""The family object ``assay bench --family sae-causal`` runs."""
