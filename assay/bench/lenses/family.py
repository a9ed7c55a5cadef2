"""Bench family ``lenses``: the encoder–decoder comparison — read-out against truth, intervention success
against coherence.

Bhalla, Srinivas, Ghandeharioun & Lakkaraju 2024, "Towards Unifying Interpretability and Control:
Evaluation via Intervention" (arXiv 2411.04430): every method is an encoder E and a decoder D around an
activation h; it is scored by how well E(h) reads a concept out, and by whether editing the concept code
(h′ = h + D(z′) − D(z), :mod:`assay.lens`, applied with :func:`assay.lenses.intervene.intervene`) makes
the model produce the concept, against what the edit costs in coherence. The methods (spec names):

    diff_means   v = μ₊ − μ₋ (CAA over all positive × negative pairs)       Add  z ← z + α‖v‖ along v
    probe        v = w of a standardised logistic probe (C), rescaled        Add
    pca          v = PC₁ of the paired differences (variant), rescaled       Add
    random       a Gaussian direction (seeded), rescaled — the control        Add
    sae          a TopK SAE (k, expansion) fitted on the fit fold's tokens;   Set  z_j ← α·max z_j
                 the latent j with the best fit-fold AUROC for the concept
    logit_lens   z = h W_Uᵀ, decoded by the pseudo-inverse (UnembedLens)      Set  z_tok ← α·m
    tuned_lens   z = W_U((I + A)h + b) (a tuned lens fitted on the fit fold)  Set  z_tok ← α·m
    prompting    no edit: α copies of the concept's token before the prompt (the prompting baseline)

(m = mean over fit-fold rows of max_v z_v: Bhalla et al.'s "α·max(z)"; every direction is rescaled to the
diff-of-means norm, so α is the same size of edit for them.) Metrics (:mod:`assay.evaluate.intervention`):
``readout_auroc`` — AUROC of the encoded concept against the world's label on held-out inputs;
``success`` — fraction of held-out (input, target) pairs whose answer becomes the target, among those whose
answer was not the target already; ``kl`` — KL(unedited ‖ edited) per token on held-out inputs.

Worlds: ``cyclic`` (default; :mod:`assay.bench.lenses.cyclic` — a trained world model checked against
the world's own answers; ``site`` = ``blocks.1`` or ``blocks.0``) and ``smollm2`` (optional;
:mod:`assay.bench.lenses.sentiment` — SmolLM2-135M with the bundled sentiment sentences; ``layer``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from assay.bench.runner import BenchResult, RunContext, check_params, expand_with, summary_rows
from assay.bench.spec import SpecRun, world_params
from assay.config import ConfigError
from assay.worlds.base import make_generator

__all__ = ["WORLD_PARAMS", "METHOD_PARAMS", "LensesSettings", "Outcome", "LensWorld", "Fitted", "fit_method", "score_run",
           "LensesFamily", "FAMILY"]

WORLD_PARAMS: dict[str, dict[str, Any]] = {"cyclic": {"site": "blocks.1"}, "smollm2": {"layer": 15}}
"""World name → its spec parameters with their defaults."""

METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "diff_means": {"strength": 1.0},
    "probe": {"strength": 1.0, "C": 1.0},
    "pca": {"strength": 1.0, "variant": "center"},
    "random": {"strength": 1.0},
    "sae": {"strength": 1.0, "k": 4, "expansion": 4},
    "logit_lens": {"strength": 1.0},
    "tuned_lens": {"strength": 1.0},
    "prompting": {"strength": 1},
}
"""Method name → its spec parameters with their defaults (``strength`` is α, swept by the default specs)."""

_DIRECTIONS = {"diff_means": "caa", "probe": "probe", "pca": "pca"}


@dataclass(frozen=True, kw_only=True)
class LensesSettings:
    """The run budget of the lenses bench."""

    model_steps: int = 300
    """AdamW updates of the cyclic world model (the zoo trains it once per seed and caches it)."""
    d_model: int = 32
    """Width of the cyclic world model."""
    n_layers: int = 2
    """Blocks of the cyclic world model."""
    sae_steps: int = 300
    """Training steps of the ``sae`` method's TopK SAE (batches of 64 fit-fold tokens)."""
    tuned_steps: int = 100
    """SGD-Nesterov steps of the ``tuned_lens`` method's translator."""
    n_train: int = 60
    """smollm2 world: training sentences (balanced) for the directions and probes."""
    n_eval: int = 40
    """smollm2 world: held-out positive/negative sentence pairs (read-out and intervention)."""
    n_heldout: int = 8
    """smollm2 world: bundled ``lee`` documents on which the coherence cost (KL) is measured."""
    heldout_tokens: int = 64
    """smollm2 world: tokens per held-out document."""
    batch_size: int = 16
    """smollm2 world: sequences per forward pass."""

    def __post_init__(self) -> None:
        for name in ("model_steps", "d_model", "n_layers", "sae_steps", "tuned_steps", "n_heldout", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % 2:
            raise ConfigError(f"d_model must be even (2 attention heads), got {self.d_model}")
        if self.n_train < 4 or self.n_eval < 2 or self.n_train + 2 * self.n_eval > 200 or self.heldout_tokens < 2:
            raise ConfigError("smollm2 world: need n_train >= 4, n_eval >= 2, n_train + 2*n_eval <= 200 sentences "
                              "and heldout_tokens >= 2")


class Outcome(NamedTuple):
    """One intervention (or prompt) on one fold for one concept."""

    predicted: Tensor
    """The edited model's answer per held-out example ``[N]`` (a concept index; anything else never matches)."""
    target: Tensor
    """The target concept per example ``[N]``."""
    eligible: Tensor
    """Examples whose unedited answer was not the target ``[N]`` (bool)."""
    kl: float
    """Coherence cost: mean KL(unedited ‖ edited) per token on the held-out inputs (nats)."""


class LensWorld(Protocol):
    """What a prepared world gives the methods (:mod:`~assay.bench.lenses.cyclic`, :mod:`~assay.bench.lenses.sentiment`)."""

    applies: frozenset[str]
    """The methods that apply (the others score nothing)."""
    n_concepts: int
    """Concepts t = 0 … n_concepts − 1, each fitted and scored separately."""
    folds: tuple[Any, ...]
    """One entry per fold (fit on one part, score on the other)."""
    site: str
    """The site edited and read."""
    d_model: int
    """Width of the activations at the site."""
    norm: Any
    """The model's final norm (for tuned lenses)."""
    unembed: Any
    """The model's unembedding (``.weight`` is W_U ``[V, d]``)."""
    model_acc: float | None
    """The model's task accuracy (None when the world has no answer key)."""
    memo: dict[Any, Any]
    """Fitted objects shared across a method's strengths."""

    def concept_token(self, t: int) -> int:
        """The vocabulary id the lenses edit for concept t."""
        ...

    def fit_pairs(self, fold: int, t: int) -> tuple[Tensor, Tensor]:
        """Paired positive / negative activations of the fit part ``[n, d]`` each."""
        ...

    def fit_labelled(self, fold: int, t: int) -> tuple[Tensor, Tensor]:
        """Fit-part activations ``[n, d]`` and labels ``[n]`` (bool)."""
        ...

    def readout(self, fold: int, t: int) -> tuple[Tensor, Tensor]:
        """Held-out activations ``[n, d]`` and the world's labels ``[n]`` (bool)."""
        ...

    def fit_tokens(self, fold: int) -> tuple[Tensor, Tensor]:
        """Token activations ``[n, d]`` and the model's logits ``[n, V]`` of the fit part (SAEs, tuned lenses)."""
        ...

    def edited(self, fold: int, t: int, lens: Any, edit: Any) -> Outcome:
        """Score ``edit`` of ``lens``'s concepts at the site on the held-out part."""
        ...

    def prompted(self, fold: int, t: int, strength: int) -> Outcome:
        """Score the prompting baseline at ``strength`` on the held-out part."""
        ...


def _check_method(run: SpecRun) -> dict[str, Any]:
    p = check_params(run, METHOD_PARAMS[run.name])
    s = p["strength"]
    if run.name == "prompting":
        if not (isinstance(s, int) and not isinstance(s, bool) and s >= 1):
            raise ConfigError(f"prompting:strength is the number of prompt tokens (an integer >= 1), got {s!r}")
    elif not (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)):
        raise ConfigError(f"{run.name}:strength must be a finite number, got {s!r}")
    if run.name == "probe" and not (isinstance(p["C"], (int, float)) and p["C"] > 0):
        raise ConfigError(f"probe:C must be a positive number, got {p['C']!r}")
    if run.name == "pca" and p["variant"] not in ("diff", "center", "uncentred"):
        raise ConfigError(f"pca:variant must be diff, center or uncentred, got {p['variant']!r}")
    if run.name == "sae" and not all(isinstance(p[k], int) and p[k] >= 1 for k in ("k", "expansion")):
        raise ConfigError(f"sae:k and sae:expansion must be integers >= 1, got k={p['k']!r}, expansion={p['expansion']!r}")
    return p


class Fitted(NamedTuple):
    """A method fitted for one concept on one fold: everything but the strength."""

    lens: Any
    """The encoder–decoder (a :class:`~assay.lens.Lens`)."""
    concept: int
    """The code coordinate of the concept."""
    op: str
    """``add`` (z_c ← z_c + α·size) or ``set`` (z_c ← α·size)."""
    size: float
    """The amount added at α = 1, or the value set at α = 1."""

    def edit(self, strength: float) -> Any:
        """The edit at ``strength`` α."""
        from assay.lens import Add, Set

        if self.op == "add":
            return Add(concepts=self.concept, amount=self.size, strength=float(strength))
        return Set(concepts=self.concept, value=self.size, strength=float(strength))


def _sae(w: LensWorld, fold: int, k: int, expansion: int, seed: int, steps: int) -> Any:
    from assay.dictionaries.registry import build_sae
    from assay.dictionaries.trainer import SAETrainConfig, train_saes

    key = ("sae-model", k, expansion, fold)
    if key not in w.memo:
        x, _ = w.fit_tokens(fold)
        sae = build_sae("topk", d_in=w.d_model, d_sae=expansion * w.d_model, k=k, seed=seed)

        def batches(start: int):
            g = make_generator(seed * 7919 + fold)
            for _ in range(start, steps):
                yield x[torch.randint(0, x.shape[0], (64,), generator=g)]

        w.memo[key], _ = train_saes(sae, SAETrainConfig(steps=steps, warmup_steps=max(1, steps // 10)), batches)
    return w.memo[key]


def _tuned(w: LensWorld, fold: int, seed: int, steps: int) -> Any:
    from assay.lenses.tuned_lens import TunedLensConfig, fit_tuned_lens

    key = ("tuned-lens", fold)
    if key not in w.memo:
        x, logits = w.fit_tokens(fold)
        cfg = TunedLensConfig(d_model=w.d_model, sites=(w.site,), steps=steps, batch_tokens=x.shape[0], seed=seed)
        tuned, _ = fit_tuned_lens([x], logits, w.norm, w.unembed, cfg)
        w.memo[key] = tuned.lens(0, w.unembed.weight)
    return w.memo[key]


def fit_method(w: LensWorld, name: str, p: dict[str, Any], fold: int, t: int, seed: int, settings: LensesSettings) -> Fitted:
    """Fit method ``name`` (parameters ``p``; the strength is not used) for concept ``t`` on ``fold`` of the
    prepared world ``w``."""
    from assay.lenses.direction import DirectionLens
    from assay.lenses.logit_lens import UnembedLens
    from assay.lenses.steering import caa, contrast_direction, rescale
    from assay.stats import auroc_matrix

    if name in _DIRECTIONS or name == "random":
        pos, neg = w.fit_pairs(fold, t)
        ref = float(caa(pos, neg).double().norm())
        if name == "random":
            v = torch.randn(w.d_model, generator=make_generator(seed * 100_003 + fold * 101 + t))
        else:
            v = contrast_direction(_DIRECTIONS[name], pos, neg, C=p.get("C", 1.0), pca_variant=p.get("variant", "diff"))
        v = rescale(v.float(), ref)
        return Fitted(DirectionLens(v), 0, "add", float(v.norm()))
    if name == "sae":
        sae = _sae(w, fold, p["k"], p["expansion"], seed, settings.sae_steps)
        x, y = w.fit_labelled(fold, t)
        with torch.no_grad():
            j = int(torch.nan_to_num(auroc_matrix(sae.encode(x), y[:, None])[:, 0], nan=0.0).argmax())
            top = float(sae.encode(w.fit_tokens(fold)[0])[:, j].max())
        return Fitted(sae, j, "set", top)
    if name in ("logit_lens", "tuned_lens"):
        if name == "logit_lens":
            if ("unembed-lens",) not in w.memo:
                w.memo[("unembed-lens",)] = UnembedLens(w.unembed.weight.detach())
            lens = w.memo[("unembed-lens",)]
        else:
            lens = _tuned(w, fold, seed, settings.tuned_steps)
        x, _ = w.fit_labelled(fold, t)
        with torch.no_grad():
            m = float(lens.encode(x).max(-1).values.mean())
        return Fitted(lens, w.concept_token(t), "set", m)
    raise ConfigError(f"method {name!r} has no encoder–decoder")


def score_run(w: LensWorld, run: SpecRun, ctx: RunContext) -> dict[str, float]:
    """Fit and score one method level on every fold and concept of the prepared world ``w``."""
    from assay.evaluate.intervention import readout_auroc, target_success

    if run.name not in w.applies:
        return {}
    p = _check_method(run)
    fixed = tuple(sorted((k, str(v)) for k, v in p.items() if k != "strength"))
    outcomes, aurocs = [], []
    for fold in range(len(w.folds)):
        for t in range(w.n_concepts):
            if run.name == "prompting":
                outcomes.append(w.prompted(fold, t, p["strength"]))
                continue
            key = (run.name, fixed, fold, t)
            if key not in w.memo:
                w.memo[key] = fit_method(w, run.name, p, fold, t, ctx.seed, ctx.settings)
            f = w.memo[key]
            x, y = w.readout(fold, t)
            with torch.no_grad():
                aurocs.append(readout_auroc(f.lens.encode(x)[:, f.concept], y))
            outcomes.append(w.edited(fold, t, f.lens, f.edit(p["strength"])))
    out = {"success": target_success(torch.cat([o.predicted for o in outcomes]),
                                     torch.cat([o.target for o in outcomes]),
                                     torch.cat([o.eligible for o in outcomes])),
           "kl": sum(o.kl for o in outcomes) / len(outcomes)}
    if w.model_acc is not None:
        out["model_acc"] = w.model_acc
    if aurocs:
        out["readout_auroc"] = float(torch.tensor(aurocs, dtype=torch.float64).nanmean())
    return out


# ---------------------------------------------------------------- the report section


def _curves(result: BenchResult, world: str) -> list[Any]:
    from assay.evaluate.intervention import TradeoffCurve

    default = {name: p["strength"] for name, p in METHOD_PARAMS.items()}
    strength = {(r["method"], r["level"]): float(r["params"].get("strength", default.get(r["method"].split(",")[0], 1)))
                for r in result.runs if r["world"] == world}
    stats = {(s["method"], s["level"], s["metric"]): s for s in result.summary if s["world"] == world}
    curves = []
    for method in dict.fromkeys(m for m, _ in strength):
        levels = sorted((lev for m, lev in strength if m == method and (m, lev, "success") in stats),
                        key=lambda lev: strength[(method, lev)])
        if not levels:
            continue
        succ = [stats[(method, lev, "success")] for lev in levels]
        curves.append(TradeoffCurve(method, tuple(strength[(method, lev)] for lev in levels),
                                    tuple(s["mean"] for s in succ),
                                    tuple(stats[(method, lev, "kl")]["mean"] for lev in levels),
                                    tuple((s["ci_low"], s["ci_high"]) for s in succ)))
    return curves


def _plot(result: BenchResult, path: Path) -> Path | None:
    from assay.evaluate.intervention import draw_tradeoffs
    from assay.report import new_figure, save_figure

    worlds = list(dict.fromkeys(r["world"] for r in result.runs))
    panels = [(w, c) for w in worlds if (c := _curves(result, w))]
    if not panels:
        return None
    fig = new_figure((5.5 * len(panels), 4.2))
    for ax, (world, curves) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        draw_tradeoffs(ax, curves, xlabel="coherence cost: KL(unedited ‖ edited) per token (nats)",
                       ylabel="intervention success", title=world)
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=100)
    return path


def _section(result: BenchResult) -> Any:
    from assay.report import Plot, Section, Table

    columns, rows = summary_rows(result, ["readout_auroc", "success", "kl", "model_acc"])
    table = Table("Read-out AUROC against the world's label, intervention success and coherence cost (KL)", columns,
                  rows)
    plots = []
    path = _plot(result, result.out_dir / "plots" / "tradeoff.png")
    if path is not None:
        plots.append(Plot("Intervention success vs coherence cost per method over strengths α (labels); error "
                          "bars: 95% interval over seeds", path))
    s = result.settings
    notes = [
        "Bhalla et al. 2024's encoder–decoder comparison. Every method is fitted per concept on one fold of the "
        "inputs and scored on the other (then the folds swap); the edit h′ = h + D(z′) − D(z) is applied at every "
        "position through assay.lenses.intervene.",
        "cyclic: a trained transformer on the 42 weekday prompts '<bos> c_z + k =' "
        f"({s.n_layers} layers, d={s.d_model}, {s.model_steps} AdamW steps through the model zoo; model_acc = its "
        "answer accuracy). Concept t = 'the answer is t' (7 concepts); success = the answer at '=' becomes t on "
        "held-out prompts whose world answer is not t (chance ≈ 1/7); kl = KL at the four format positions "
        "(<bos>, c_z, +, k) of the same prompts.",
        "Directions (diff_means, probe, pca, random) are rescaled to the diff-of-means norm and added (α·v); the "
        "SAE sets its concept latent to α·(its fit-fold maximum); the logit and tuned lens set the concept "
        "token's logit to α·(mean fit-fold top logit); prompting puts α copies of the concept token before the "
        "prompt (no read-out). random is the control: a direction that ignores the concept.",
        "At the last block (blocks.1) the tuned lens equals the logit lens (the final norm and unembedding already "
        "give the model's output, so its translator stays zero).",
        "smollm2 (optional): SmolLM2-135M at a residual layer, concept = positive sentiment; success = held-out "
        "positive/negative sentence pairs whose continuation preference (LL pos > LL neg after a neutral prompt) "
        "moves to positive among those preferring negative unedited; kl on held-out lee documents. "
        "sae and tuned_lens do not apply there (–).",
    ]
    return Section("Lenses: read-out and intervention (encoder–decoder comparison)", [table], plots, notes)


# ---------------------------------------------------------------- the family


class LensesFamily:
    """The ``lenses`` bench family (module docstring)."""

    name = "lenses"
    title = "Lenses: read-out and intervention"
    worlds = ("cyclic", "cyclic:site=blocks.0")
    methods = ("diff_means:strength=0.5|1|2|4", "probe:strength=0.5|1|2|4", "pca:strength=0.5|1|2|4",
               "random:strength=0.5|1|2|4", "sae:strength=0.5|1|2|4", "logit_lens:strength=0.5|1|2|4",
               "tuned_lens:strength=0.5|1|2|4", "prompting:strength=1|2|3")
    metrics = ("readout_auroc", "success", "kl")
    settings_type = LensesSettings

    def world_names(self) -> dict[str, dict[str, Any]]:
        return WORLD_PARAMS

    def method_names(self) -> tuple[str, ...]:
        return tuple(METHOD_PARAMS)

    def expand(self, spec: str) -> list[SpecRun]:
        runs = expand_with(METHOD_PARAMS)(spec)
        for run in runs:
            _check_method(run)
        return runs

    def prepare(self, world: str, seed: int, settings: LensesSettings) -> Any:
        name, p = world_params(world, WORLD_PARAMS)
        if name == "cyclic":
            from assay.bench.lenses.cyclic import prepare_cyclic

            return prepare_cyclic(str(p["site"]), seed, settings)
        from assay.bench.lenses.sentiment import prepare_sentiment

        return prepare_sentiment(int(p["layer"]), seed, settings)

    def score(self, prepared: Any, run: SpecRun, ctx: RunContext) -> dict[str, float]:
        return score_run(prepared, run, ctx)

    def section(self, result: BenchResult) -> Any:
        return _section(result)


FAMILY = LensesFamily()
"""The family object ``assay bench --family lenses`` runs."""
