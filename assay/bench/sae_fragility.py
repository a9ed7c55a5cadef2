"""Bench family ``sae-fragility``: how easily an input change rewrites an SAE's code while the model's
output stays put, on a tiny world model whose SAE is trained here.

Li, Srinivas, Bhalla & Lakkaraju 2025/2026, "Interpretability Illusions with Sparse Autoencoders:
Evaluating Robustness of Concept Representations" (arXiv 2505.16004; reference code
``AI4LIFE-GROUP/sae_robustness``); the attacks are :mod:`assay.robustness.sae_fragility`.

**Worlds** ``name[:site=…,sae=…,k=…,expansion=…]`` for the sequence worlds ``dyck`` (default),
``expr`` and ``english``: the world's tiny transformer from the model zoo (:func:`world_model`; width,
depth, context and steps from the settings), trained once per (world, seed) and cached, and one SAE
(architecture ``sae``, default TopK with k = 8 and 4 × d_model latents) trained on its activations at
``site`` (default ``blocks.0``) over every non-pad, non-BOS token of ``n_sequences`` sampled documents.
The attacked inputs are ``n_prompts`` document prefixes of ``prompt_len`` tokens (``<bos>`` first), read
at the last position.

**Methods** (spec keys with defaults in :data:`METHOD_PARAMS`; ``objective`` is activate, deactivate or
untargeted):

    pgd      continuous L2 PGD on the token embeddings (ε = eps × the median embedding norm)  control: a random direction of the same norm
    replace  token replacement at the prompt's last ``positions`` tokens by generalised GCG     control: random tokens at as many positions as the attack edited
    suffix   ``length`` tokens appended (the paper's suffix mode), ``init`` greedy (the model's own
             continuation) or random, then optimised by the same search                        control: a random suffix of that length

The activate target is, per prompt, the latent that fires most often over the training activations
among those off at the prompt; the deactivate target the prompt's strongest active latent. Success
also needs KL(p(x) ‖ p(x′)) ≤ ``kl_bound`` of the next-token distribution (``kl_bound=none``: no bound,
the suffix default as in the paper, where the suffix moves the read position anyway).

**Metrics** (means over prompts; ``control_*`` the same for the random control): ``success`` (objective
met), ``latent_change`` (Δ of the target latent's pre-activation in units of its mean value where it
fires, :func:`assay.evaluate.fragility.latent_change`; activate/deactivate), ``overlap`` (active-set
overlap with the clean prompt), ``kl``, ``size`` (relative L2 norm for pgd; tokens edited for replace;
suffix tokens changed from their init for suffix); suffix runs add ``init_success`` and
``init_latent_change`` (the initial suffix before any search). ``sae_fvu`` and ``sae_l0`` describe the SAE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from assay.bench.runner import BenchResult, RunContext, check_params, expand_with, summary_rows
from assay.bench.spec import SpecRun, world_params
from assay.config import ConfigError, check_choice
from assay.worlds.base import make_generator

__all__ = ["WORLD_PARAMS", "METHOD_PARAMS", "SAE_ARCHS", "FragilitySettings", "FragilityWorld", "FAMILY",
           "site_rows", "train_sae", "sae_quality", "embeds_forward", "common_off_latent", "target_latents",
           "prepare_world", "method_params", "CONTROL_SEED_OFFSET"]

SAE_ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka", "mp")
"""SAE architectures a world spec's ``sae`` may name."""

WORLD_PARAMS: dict[str, dict[str, Any]] = {w: {"site": "blocks.0", "sae": "topk", "k": 8, "expansion": 4}
                                           for w in ("dyck", "expr", "english")}
"""World name → its spec parameters with their defaults."""

_SEARCH = {"objective": "activate", "iters": 10, "top_k": 8, "candidates": 32}
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "pgd": {"objective": "activate", "eps": 0.5, "steps": 30, "kl_bound": 0.01},
    "replace": {**_SEARCH, "positions": 4, "kl_bound": 0.05},
    "suffix": {**_SEARCH, "length": 4, "init": "greedy", "kl_bound": "none"},
}
"""Method name → its spec parameters with their defaults."""

_OBJECTIVES = ("activate", "deactivate", "untargeted")

CONTROL_SEED_OFFSET = 1_000_003
"""The random controls draw from seed + this offset, so that every level of a method (e.g. both suffix
inits) faces the same control draw, whatever randomness its attack used."""


@dataclass(frozen=True, kw_only=True)
class FragilitySettings:
    """The run budget of the SAE-fragility bench (``--options key=value``)."""

    model_steps: int = 600
    """AdamW updates of the world model (the zoo trains it once per world and seed and caches it)."""
    d_model: int = 32
    """Width of the world model."""
    n_layers: int = 2
    """Blocks of the world model."""
    context: int = 32
    """Context of the world model (prompt_len + a suffix must fit)."""
    sae_steps: int = 400
    """SAE training steps (batches of 256 activation rows, lr 1e-3)."""
    n_sequences: int = 256
    """Sampled documents whose token activations train the SAE."""
    n_prompts: int = 64
    """Prompts attacked per run."""
    prompt_len: int = 12
    """Tokens per prompt (document prefixes of at least this length)."""

    def __post_init__(self) -> None:
        for name in ("model_steps", "d_model", "n_layers", "sae_steps", "n_sequences", "n_prompts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % 2:
            raise ConfigError(f"d_model must be even (2 attention heads), got {self.d_model}")
        if not 2 <= self.prompt_len < self.context:
            raise ConfigError(f"need 2 <= prompt_len < context, got prompt_len {self.prompt_len}, "
                              f"context {self.context}")


class FragilityWorld(NamedTuple):
    """A prepared world: the model, its SAE, the prompts and what the attacks need."""

    name: str
    """The world spec."""
    model: Any
    """The trained world model (eval mode, no gradients on its weights)."""
    forward: Any
    """``forward(embeds [B, T, d]) -> (h [B, d_site], logits [B, V])`` at the last position."""
    embedding: Tensor
    """Token embedding matrix ``[V, d]``."""
    prompts: Tensor
    """Attacked prompts ``[n_prompts, prompt_len]``."""
    allowed: Tensor
    """Tokens an attack may insert ``[V]`` (bool: every non-special token)."""
    sae: Any
    """The SAE trained on the site's activations."""
    frequency: Tensor
    """How often each latent fires over the training activations ``[L]``."""
    scale: Tensor
    """Each latent's mean value where it fires ``[L]`` (:func:`typical_activation`)."""
    sae_fvu: float
    """The SAE's fraction of variance unexplained on its training activations."""
    sae_l0: float
    """Its mean number of active latents per row."""


def site_rows(model: torch.nn.Module, tokens: Tensor, site: str, *, skip: tuple[int, ...] = (0,), batch: int = 128
              ) -> Tensor:
    """Activations at ``site`` for every token of ``tokens [N, T]`` not in ``skip`` (default: pad) ``[n_rows, d]``."""
    from assay.hooks import capture

    out = []
    with torch.no_grad():
        for a in range(0, tokens.shape[0], batch):
            t = tokens[a:a + batch]
            with capture(model, [site]) as cap:
                model(t)
            out.append(cap[site][~torch.isin(t, torch.tensor(skip))])
    return torch.cat(out)


def train_sae(arch: str, acts: Tensor, *, d_sae: int, k: int, steps: int, batch_size: int, seed: int):
    """A small SAE of ``arch`` on rows ``acts`` (assay's trainer, inputs normalised, scale folded in)."""
    from assay.dictionaries.registry import build_sae
    from assay.dictionaries.trainer import SAETrainConfig, train_saes

    kw: dict[str, Any] = {"d_in": acts.shape[1], "d_sae": d_sae, "seed": seed}
    if arch in ("topk", "batchtopk", "matryoshka", "mp"):
        kw["k"] = k
    if arch in ("batchtopk", "matryoshka"):
        kw["threshold_start"] = steps // 4  # estimate the inference threshold within this short run
    if arch == "jumprelu":
        kw["target_l0"], kw["l0_coef"] = float(k), 10.0
    if arch == "relu":
        kw["l1_coef"] = 3.0
    sae = build_sae(arch, **kw)
    g = torch.Generator().manual_seed(seed)

    def batches(start: int):
        for _ in range(start, steps):
            yield acts[torch.randint(0, acts.shape[0], (batch_size,), generator=g)]

    # lr 1e-3 for every architecture: the ReLU/JumpReLU defaults (5e-5, 7e-5) are for runs 100x longer
    sae, _ = train_saes(sae, SAETrainConfig(steps=steps, lr=1e-3, warmup_steps=max(1, steps // 10)), batches)
    return sae.eval().requires_grad_(False)


@torch.no_grad()
def sae_quality(sae, acts: Tensor) -> tuple[float, float]:
    """(L0, FVU) of ``sae`` on ``acts``."""
    from assay.evaluate.reconstruction import fvu

    z = sae.encode(acts)
    return float((z != 0).sum(1).float().mean()), float(fvu(acts, sae.decode(z)))


def embeds_forward(model: torch.nn.Module, site: str, *, embed_site: str = "embed"):
    """``forward(e [B, T, d]) -> (h, logits)`` at the last position, ``e`` replacing the token embeddings (any T)."""
    from assay.hooks import patch
    from assay.robustness.sae_fragility import site_forward

    def call(m: torch.nn.Module, e: Tensor) -> Tensor:
        with patch(m, {embed_site: lambda _: e}):
            return m(torch.zeros(e.shape[:2], dtype=torch.long, device=e.device))

    return site_forward(model, site, position=-1, call=call)


def common_off_latent(sae, h: Tensor, acts: Tensor) -> Tensor:
    """Per example, the latent that fires most often on ``acts`` among those off at ``h``."""
    with torch.no_grad():
        freq = (sae.encode(acts) != 0).float().mean(0)
    return _most_frequent_off(sae, h, freq)


def _most_frequent_off(sae, h: Tensor, freq: Tensor) -> Tensor:
    with torch.no_grad():
        off = sae.encode(h) == 0
    return torch.where(off, freq, torch.full_like(freq, -1.0)).argmax(1)


def target_latents(w: FragilityWorld, objective: str) -> Tensor | None:
    """The per-prompt target latent of ``objective`` (module docstring), None for untargeted."""
    if objective == "untargeted":
        return None
    with torch.no_grad():
        h, _ = w.forward(w.embedding[w.prompts])
        if objective == "activate":
            return _most_frequent_off(w.sae, h, w.frequency)
        return w.sae.encode(h).argmax(1)


def _prompts(world: Any, n: int, length: int, seed: int) -> Tensor:
    """``n`` document prefixes of ``length`` tokens (documents drawn until enough are long enough)."""
    pad = world.pad_id
    found: list[Tensor] = []
    g = make_generator(seed)
    for _ in range(20):
        x = world.sample(4 * n, generator=g).inputs
        if x.shape[1] >= length:
            found.append(x[(x[:, :length] != pad).all(1), :length])
        if sum(len(f) for f in found) >= n:
            return torch.cat(found)[:n]
    raise ConfigError(f"the world's documents are rarely {length} tokens long; lower prompt_len")


def prepare_world(spec: str, seed: int, settings: FragilitySettings) -> FragilityWorld:
    """Train (or load) the world model, train its SAE, draw the prompts (module docstring)."""
    from assay.evaluate.fragility import typical_activation
    from assay.hooks import SiteError, resolve
    from assay.models.zoo import world_model
    from assay.worlds.vocab import SPECIALS

    name, p = world_params(spec, WORLD_PARAMS)
    check_choice("sae", p["sae"], SAE_ARCHS)
    s = settings
    wm = world_model(name, model_overrides={"n_layers": s.n_layers, "n_heads": 2, "d_model": s.d_model,
                                            "context": s.context},
                     train_overrides={"steps": s.model_steps, "warmup": max(1, min(100, s.model_steps // 10)),
                                      "eval_every": None, "eval_size": 64},
                     seed=seed, progress=False)
    model = wm.model.eval().requires_grad_(False)
    try:
        resolve(model, str(p["site"]))
    except SiteError as e:
        raise ConfigError(f"{name} world: {e}; the sites are embed and blocks.0..blocks.{s.n_layers - 1}") from None
    world = wm.world
    docs = world.sample(s.n_sequences, generator=make_generator(10_000 + seed)).inputs[:, :s.context]
    acts = site_rows(model, docs, str(p["site"]), skip=(world.pad_id, world.bos_id))
    sae = train_sae(str(p["sae"]), acts, d_sae=int(p["expansion"]) * acts.shape[1], k=int(p["k"]),
                    steps=s.sae_steps, batch_size=256, seed=seed)
    l0, fvu = sae_quality(sae, acts)
    with torch.no_grad():
        codes = sae.encode(acts)
    allowed = torch.ones(model.config.vocab_size, dtype=torch.bool)
    allowed[:len(SPECIALS)] = False  # pad, bos, eos, sep: every DocWorld's vocabulary starts with them
    return FragilityWorld(spec, model, embeds_forward(model, str(p["site"])), model.embed.weight.detach(),
                          _prompts(world, s.n_prompts, s.prompt_len, 20_000 + seed), allowed, sae,
                          (codes != 0).float().mean(0), typical_activation(codes), fvu, l0)


def _kl_bound(value: Any, run: SpecRun) -> float | None:
    if value == "none":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"kl_bound of {run.name!r} must be a number > 0 or none, got {value!r}")
    return float(value)


def method_params(run: SpecRun) -> dict[str, Any]:
    """The parameters of a run over its method's defaults, validated."""
    p = check_params(run, METHOD_PARAMS[run.name])
    check_choice("objective", p["objective"], _OBJECTIVES)
    _kl_bound(p["kl_bound"], run)
    ints = {"pgd": ("steps",), "replace": ("iters", "top_k", "candidates", "positions"),
            "suffix": ("iters", "top_k", "candidates", "length")}[run.name]
    for key in ints:
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{key} of {run.name!r} must be an integer >= 1, got {v!r}")
    if run.name == "pgd" and (isinstance(p["eps"], bool) or not isinstance(p["eps"], (int, float))
                              or not 0 < p["eps"] < math.inf):
        raise ConfigError(f"eps of 'pgd' must be a number > 0 (a fraction of the embedding norm), got {p['eps']!r}")
    if run.name == "suffix":
        check_choice("init", p["init"], ("greedy", "random"))
    return p


class _Outcome(NamedTuple):
    success: Tensor
    overlap: Tensor
    kl: Tensor
    pre: Tensor


def _outcome(w: FragilityWorld, embeds: Tensor, ref: tuple[Tensor, Tensor], objective: str, latent: Tensor | None,
             kl_bound: float | None) -> _Outcome:
    """Success, overlap, KL against the clean prompt, and pre-activations of the inputs ``embeds``."""
    from assay.robustness.sae_fragility import objective_met, output_kl, pre_activations

    with torch.no_grad():
        h, logits = w.forward(embeds)
        ok, overlap = objective_met(objective, w.sae.encode(h), ref[0], latent, 0.5)
        kl = output_kl(ref[1], logits)
        if kl_bound is not None:
            ok &= kl <= kl_bound
        return _Outcome(ok, overlap, kl, pre_activations(w.sae, h))


def _random_replacement(w: FragilityWorld, n_edits: Tensor, positions: int, g: torch.Generator) -> Tensor:
    from assay.robustness.sae_fragility import random_suffix

    out = w.prompts.clone()
    T = out.shape[1]
    for i, n in enumerate(n_edits.clamp_min(1).tolist()):
        where = T - positions + torch.randperm(positions, generator=g)[:n]
        out[i, where] = random_suffix(w.allowed, 1, len(where), generator=g)[0]
    return out


def score_run(w: FragilityWorld, run: SpecRun, ctx: RunContext) -> dict[str, float]:
    """Attack the prompts with ``run`` and its random control (module docstring)."""
    from assay.evaluate.fragility import latent_change
    from assay.robustness import sae_fragility as sf

    p = method_params(run)
    objective, kl_bound = p["objective"], _kl_bound(p["kl_bound"], run)
    latent = target_latents(w, objective)
    g, g_control = make_generator(ctx.seed), make_generator(ctx.seed + CONTROL_SEED_OFFSET)
    x = w.embedding[w.prompts]
    with torch.no_grad():
        h0, logits0 = w.forward(x)
        ref = (w.sae.encode(h0), logits0.log_softmax(-1))
        pre0 = sf.pre_activations(w.sae, h0)
    search = {"iters": p.get("iters"), "top_k": p.get("top_k"), "n_candidates": p.get("candidates"),
              "kl_bound": kl_bound, "allowed": w.allowed, "generator": g}
    extra: dict[str, float] = {}
    if run.name == "pgd":
        eps = float(p["eps"]) * float(x.flatten(1).norm(dim=1).median())
        res = sf.fragility_attack(w.forward, w.sae, x, objective=objective, latent=latent, eps=eps, steps=p["steps"],
                                  kl_bound=kl_bound)
        adv = res.x_adv
        sizes = torch.where(res.success, res.perturbation_norm, torch.full_like(res.perturbation_norm, eps))
        control = sf.random_baseline(w.forward, w.sae, x, sizes, objective=objective, latent=latent,
                                     generator=g_control).x_adv
        size = float(res.relative_perturbation.median())
    elif run.name == "replace":
        if p["positions"] >= w.prompts.shape[1]:
            raise ConfigError(f"replace:positions must be < prompt_len = {w.prompts.shape[1]} (<bos> stays)")
        editable = torch.arange(w.prompts.shape[1]) >= w.prompts.shape[1] - p["positions"]
        res = sf.token_fragility_attack(w.forward, w.embedding, w.prompts, w.sae, editable=editable,
                                        objective=objective, latent=latent, **search)
        adv = w.embedding[res.tokens]
        control = w.embedding[_random_replacement(w, res.n_edits, p["positions"], g_control)]
        size = float(res.n_edits.float().mean())
    else:
        if w.prompts.shape[1] + p["length"] > w.model.config.context:
            raise ConfigError(f"suffix:length {p['length']} + prompt_len {w.prompts.shape[1]} exceeds the "
                              f"model context {w.model.config.context}")
        res = sf.suffix_fragility_attack(w.forward, w.embedding, w.prompts, w.sae, length=p["length"], init=p["init"],
                                         objective=objective, latent=latent, **search)
        adv = w.embedding[res.tokens]
        control = w.embedding[torch.cat([w.prompts, sf.random_suffix(w.allowed, len(w.prompts), p["length"],
                                                                     generator=g_control)], 1)]
        size = float((res.suffix != res.init).sum(1).float().mean())
        init = _outcome(w, w.embedding[torch.cat([w.prompts, res.init], 1)], ref, objective, latent, kl_bound)
        extra["init_success"] = float(init.success.float().mean())
        if latent is not None:
            extra["init_latent_change"] = float(latent_change(pre0, init.pre, latent, w.scale).mean())
    out: dict[str, float] = {"size": size, "sae_fvu": w.sae_fvu, "sae_l0": w.sae_l0, **extra}
    for prefix, e in (("", adv), ("control_", control)):
        o = _outcome(w, e, ref, objective, latent, kl_bound)
        out[f"{prefix}success"] = float(o.success.float().mean())
        out[f"{prefix}overlap"] = float(o.overlap.mean())
        out[f"{prefix}kl"] = float(o.kl.mean())
        if latent is not None:
            out[f"{prefix}latent_change"] = float(latent_change(pre0, o.pre, latent, w.scale).mean())
    return out


class FragilityFamily:
    """SAE fragility attacks and random controls on tiny world models (module docstring)."""

    name = "sae-fragility"
    title = "SAE fragility: attacks on an SAE's code against random perturbations of the same size"
    worlds: tuple[str, ...] = ("dyck",)
    methods: tuple[str, ...] = ("pgd", "replace", "suffix:init=greedy|random")
    metrics: tuple[str, ...] = ("success", "control_success", "latent_change", "control_latent_change", "overlap",
                                "kl", "size", "init_latent_change")
    settings_type = FragilitySettings

    def world_names(self) -> dict[str, dict[str, Any]]:
        return WORLD_PARAMS

    def method_names(self) -> tuple[str, ...]:
        return tuple(METHOD_PARAMS)

    def expand(self, spec: str) -> list[SpecRun]:
        runs = expand_with(METHOD_PARAMS)(spec)
        for run in runs:
            method_params(run)
        return runs

    def prepare(self, world: str, seed: int, settings: FragilitySettings) -> FragilityWorld:
        return prepare_world(world, seed, settings)

    def score(self, prepared: FragilityWorld, run: SpecRun, ctx: RunContext) -> dict[str, float]:
        return score_run(prepared, run, ctx)

    def section(self, result: BenchResult) -> Any:
        from assay.report import Plot, Section, Table

        columns, rows = summary_rows(result, self.metrics)
        s = result.settings
        seeds = sorted({r["seed"] for r in result.runs})
        sae = {r["world"]: (r["metrics"]["sae_fvu"], r["metrics"]["sae_l0"]) for r in result.runs if r["seed"] == seeds[0]}
        notes = [
            f"World models: {s.n_layers}-layer d={s.d_model} transformers (model zoo, {s.model_steps} steps, context "
            f"{s.context}); SAE per world and seed trained {s.sae_steps} steps on the site's activations over "
            f"{s.n_sequences} documents (seed {seeds[0]}: " + "; ".join(f"{w} FVU {f:.3f}, L0 {l0:.1f}"
                                                                       for w, (f, l0) in sae.items()) + "). "
            f"{s.n_prompts} prompts of {s.prompt_len} tokens per run; cells are means over seeds "
            f"({', '.join(map(str, seeds))}) with a 95% Student-t interval.",
            "success: the objective is met (activate: the target latent fires; deactivate: it stops firing; "
            "untargeted: half the active set replaced) with KL(p(x) ‖ p(x′)) ≤ kl_bound where one is set. "
            "latent_change: Δ of the target latent's pre-activation in units of its mean value where it fires. "
            "control_*: the same for a random perturbation of the same size (pgd: a random direction of the same "
            "norm; replace: random tokens at as many positions; suffix: a random suffix).",
            "suffix: the paper's suffix-append mode; init=greedy starts from the model's own greedy continuation, "
            "init=random from random tokens; init_latent_change / init_success score that start before any search. "
            "size: relative L2 norm (pgd), tokens edited (replace), suffix tokens changed from the init (suffix).",
        ]
        plot = _plot(result)
        return Section(self.title, [Table("Attack vs random control", columns, rows)],
                       [Plot("Target-latent change: attack vs random control", plot)] if plot else [], notes)


def _plot(result: BenchResult) -> Path | None:
    """Bars of latent_change, attack vs control, per world × method × level (None without such runs)."""
    from assay.report import new_figure, save_figure

    by = {(s["world"], s["method"], s["level"], s["metric"]): s["mean"] for s in result.summary}
    keys = list(dict.fromkeys(k[:3] for k in by if k[3] == "latent_change"))
    if not keys:
        return None
    fig = new_figure((max(4.0, 1.2 * len(keys)), 3.2))
    ax = fig.add_subplot()
    xs = range(len(keys))
    ax.bar([i - 0.2 for i in xs], [by[(*k, "latent_change")] for k in keys], 0.4, label="attack")
    ax.bar([i + 0.2 for i in xs], [by.get((*k, "control_latent_change"), float("nan")) for k in keys], 0.4,
           label="random control")
    ax.set_xticks(list(xs), [f"{w}\n{m} {lev}" for w, m, lev in keys], fontsize=7)
    ax.set_ylabel("Δ target latent (typical units)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(result.out_dir) / "plots" / "latent_change.svg"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path


FAMILY = FragilityFamily()
"""The family object ``assay bench --family sae-fragility`` runs."""
