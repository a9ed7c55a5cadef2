"""``assay circuit``: an attribution graph of a real Llama-style model (SmolLM2) over transcoders trained by assay.

Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language Models" (graphs, pruning,
interventions); per-layer transcoders after Dunefsky, Chlenski & Nanda 2024, "Transcoders Find Interpretable
LLM Feature Circuits" (TopK as Gao et al. 2024). Steps:

1. a TopK transcoder per chosen layer, reading ``model.layers.{i}.post_attention_layernorm`` and rebuilding
   ``model.layers.{i}.mlp``, all trained together on live activations of token windows, one forward pass a step
   (:func:`train_transcoders`; the CLI caches them per layer as SAE artifacts); every other MLP is an error node
   per position (a partial transcoder set);
2. the graph of the prompt (:func:`~assay.circuits.graph.attribute`; RMSNorms and attention patterns frozen),
   refused up front when the prompt is longer than the memory budget allows (:func:`prompt_memory`);
3. the pruned graph as circuit-tracer graph JSON and a report section with the graph view;
4. interventions: each of the ``n_ablate`` most influential features (after the BOS position unless
   ``ablate_first``) is removed from its MLP's output in the
   *real* model (``h_p ← h_p − a·W_dec[f]``) and the change of the top logit (minus the mean logit) is
   measured; the graph predicts it by propagating the ablation linearly through the feature-to-feature edges
   (errors held fixed). Their Pearson correlation is reported, also against the same ablation in the live
   replacement model (transcoders plus clean errors; :func:`~assay.bench.circuit_interventions.replacement_logits`) and, with ``ablate_fraction``
   < 1, for a partial removal (a derivative test).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import nn

from assay.bench.circuit_interventions import (
    FREEZINGS,
    Frozen,
    first_order,
    graph_freezing,
    measured_ablation,
    pearson,
    predicted_ablations,
    replacement_logits,
    sign_agreement,
)
from assay.circuits.graph import (
    ConstrainedEffects,
    FeatureBasis,
    Graph,
    GraphConfig,
    attribute,
    constrained_effects,
    graph_json,
    graph_scores,
    influence,
)
from assay.circuits.graph.influence import normalize_matrix
from assay.circuits.graph.memory import graph_memory, max_tokens
from assay.config import ConfigError, check_int_fields

__all__ = ["CircuitSettings", "CircuitResult", "PromptMemory", "prompt_memory", "train_transcoders",
           "cached_transcoders", "llama_bases",
           "llama_sites", "circuit_experiment", "run_real_circuit"]


@dataclass(frozen=True, kw_only=True)
class CircuitSettings:
    """Transcoders, graph, memory budget and interventions of one ``assay circuit`` run."""

    layers: tuple[int, ...] = (3, 9, 15)
    """MLP layers that get a transcoder (the others are error nodes); empty: every layer
    (:func:`run_real_circuit` fills them in from the model's config)."""
    d_sae: int = 1024
    """Features per transcoder."""
    k: int = 16
    """Active features per token (TopK)."""
    skip: bool = False
    """Skip-transcoders (Paulo et al. 2025): each adds a linear map of its MLP input, a linear path through the MLP
    in the graph, so less of the MLP's response to a change upstream is left to its (fixed) error node."""
    steps: int = 300
    """Optimizer steps per transcoder."""
    rows: int = 256
    """Activation rows (token positions) per step."""
    seed: int = 0
    """Seeds the transcoders' initialisation and the order of the training windows."""
    graph_batch: int = 32
    """Graph rows per backward pass (the memory knob)."""
    max_n_logits: int = 5
    """At most this many logit targets."""
    node_threshold: float = 0.8
    """Pruning: keep nodes holding this share of the influence."""
    edge_threshold: float = 0.98
    """Pruning: keep edges holding this share of the influence."""
    n_ablate: int = 12
    """Interventions on this many most influential features."""
    n_constrained: int = 100
    """Constrained interventions (spec circuits.md §3.7, circuit-tracer's exactness check): the ablated features plus
    randomly drawn other active features, this many in all (or every one, if fewer), and every token embedding are
    each doubled in the graph's local replacement model; every target must move by its graph column."""
    memory_gb: float = 4.0
    """Memory budget of the graph (GiB): what computing and pruning it may add to the process's resident memory
    beyond the loaded model and transcoders, estimated up front (:func:`prompt_memory`)."""
    ablate_first: bool = False
    """Also ablate features at position 0 (the BOS: an attention sink of outsized norm, dropped from the
    transcoders' training rows, so its features are out of distribution)."""
    ablate_fraction: float = 1.0
    """Remove this fraction of each ablated feature's activation (1: the whole feature; small: a derivative test of
    the graph's linearisation, off the large-perturbation regime); measured changes are divided by it."""
    norms: str = "frozen"
    """How the graph treats the RMSNorms: ``"frozen"`` (denominators held: the paper's and circuit-tracer's local
    replacement model) or ``"linearised"`` (each norm's own Jacobian at the clean run: rescalings along the residual
    are removed as the model removes them; see :class:`~assay.circuits.graph.replacement.LocalReplacement`)."""
    attention: str = "frozen"
    """How the graph treats attention: ``"frozen"`` (the clean patterns: the paper's and circuit-tracer's) or
    ``"linearised"`` (each attention's linearisation at the clean run: the pattern moves with Q and K)."""
    float64: bool = False
    """Graph, interventions and checks in float64 (:func:`run_real_circuit` casts the model and the transcoders after
    training, which stays float32): the constrained interventions then hold to rounding far below float32's."""
    progress: bool = False
    """Show progress bars while the transcoders train (mean loss, FVU, L0, dead share over the layers) and while the
    features are ablated (up to five forward passes each)."""

    def __post_init__(self) -> None:
        check_int_fields(self)
        for name in ("d_sae", "k", "steps", "rows", "graph_batch", "max_n_logits", "n_ablate", "n_constrained"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CircuitSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.k > self.d_sae:
            raise ConfigError(f"CircuitSettings.k={self.k} exceeds d_sae={self.d_sae}")
        if self.memory_gb <= 0:
            raise ConfigError(f"CircuitSettings.memory_gb must be > 0, got {self.memory_gb}")
        for name in ("norms", "attention"):
            if getattr(self, name) not in ("frozen", "linearised"):
                raise ConfigError(f"CircuitSettings.{name} must be 'frozen' or 'linearised', got {getattr(self, name)!r}")
        if not 0 < self.ablate_fraction <= 1:
            raise ConfigError(f"CircuitSettings.ablate_fraction must lie in (0, 1], got {self.ablate_fraction}")
        if list(self.layers) != sorted(set(self.layers)) or any(i < 0 for i in self.layers):
            raise ConfigError(f"CircuitSettings.layers must be distinct layer indices >= 0 in increasing order (one "
                              f"forward pass captures them in that order), got {self.layers}")


class PromptMemory(NamedTuple):
    """Estimated peak memory of a graph and the longest prompt the budget fits."""

    need_gb: float
    """Estimated growth of the process's resident memory while this prompt's graph is computed and pruned
    (:func:`~assay.circuits.graph.memory.graph_memory`'s ``resident``; the loaded model and transcoders excluded)."""
    max_tokens: int
    """The longest prompt within the budget (0: not even one token)."""


def _need_bytes(model: nn.Module, t: int, s: CircuitSettings) -> float:
    """:func:`~assay.circuits.graph.memory.graph_memory` of a ``t``-token prompt: at most ``k`` active features per
    token and transcoder (TopK), every MLP a basis (a transcoder or an error node), Llama-style config fields,
    8-byte elements under ``s.float64`` (the model is cast before the graph)."""
    c = model.config
    return graph_memory(n_tokens=t, n_features=t * s.k * len(s.layers), n_bases=c.num_hidden_layers,
                        n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_heads=c.num_attention_heads,
                        vocab=c.vocab_size, dict_features=s.d_sae * len(s.layers), batch=s.graph_batch,
                        n_logits=s.max_n_logits, element_size=8 if s.float64 else next(model.parameters()).element_size(),
                        linearised_attention=s.attention == "linearised", linearised_norms=s.norms == "linearised"
                        ).resident


def prompt_memory(model: nn.Module, n_tokens: int, settings: CircuitSettings) -> PromptMemory:
    """The estimate of :class:`PromptMemory` for a prompt of ``n_tokens`` against ``settings.memory_gb``."""
    need = functools.partial(_need_bytes, model, s=settings)
    return PromptMemory(need(n_tokens) / 2**30, max_tokens(need, settings.memory_gb * 2**30))


def llama_bases(transcoders: dict[int, object]) -> list[FeatureBasis]:
    """The graph bases of per-layer transcoders {layer: transcoder} on a Llama-style model's MLPs, in layer order."""
    from assay.circuits.learned import transcoder_basis

    return [transcoder_basis(tc, layer=i, input_site=llama_sites(i)[0], output_site=llama_sites(i)[1])
            for i, tc in sorted(transcoders.items())]


def llama_sites(layer: int) -> tuple[str, str]:
    """The (input, output) sites of a Llama-style MLP: the post-attention RMSNorm's output and the MLP's output."""
    return f"model.layers.{layer}.post_attention_layernorm", f"model.layers.{layer}.mlp"


def _token_batches(windows: torch.Tensor, s: CircuitSettings) -> Iterator[torch.Tensor]:
    """Random token windows, enough for ``s.rows`` rows a batch, in an order fixed by ``s.seed`` alone (not by
    the layers), so a layer's transcoder is the same whichever layers train with it."""
    g = torch.Generator().manual_seed(s.seed)
    per = max(1, -(-s.rows // (windows.shape[1] - 1)))
    while True:
        yield windows[torch.randint(0, windows.shape[0], (per,), generator=g)]


def transcoder_batches(model: nn.Module, windows: torch.Tensor, settings: CircuitSettings) -> Iterator:
    """(MLP inputs, MLP outputs) of every ``settings.layers`` MLP, each ``[rows, len(layers)·d]`` (layers
    concatenated in order), all captured in ONE forward pass per batch (:func:`~assay.dictionaries.batches.live_batches`)."""
    from assay.dictionaries.batches import live_batches

    ins, outs = zip(*(llama_sites(i) for i in settings.layers), strict=True)
    batches = live_batches(model, list(ins), _token_batches(windows, settings), batch_size=settings.rows,
                           output_site=list(outs))
    for x, y in batches:
        yield x.float(), y.float()


def train_transcoders(model: nn.Module, windows: torch.Tensor, settings: CircuitSettings) -> dict[int, object]:
    """A TopK transcoder per ``settings.layers`` MLP, trained on the activations of token ``windows`` [N, T]
    (BOS positions dropped). One forward pass per step feeds every layer (:func:`transcoder_batches`); each
    layer's :class:`~assay.dictionaries.trainer.SAETrainer` takes its step on its own slice, so a layer's
    transcoder equals one trained alone with :func:`~assay.dictionaries.trainer.train_saes` on those batches."""
    from assay.dictionaries.registry import build_sae
    from assay.dictionaries.trainer import ProgressBar, SAETrainConfig, SAETrainer

    d = model.config.hidden_size
    cfg = SAETrainConfig(steps=settings.steps, warmup_steps=settings.steps // 10)
    trainers = [SAETrainer(build_sae("topk_transcoder", d_in=d, d_out=d, d_sae=settings.d_sae, k=settings.k,
                                     skip=settings.skip, seed=settings.seed + i), cfg) for i in settings.layers]
    batches = transcoder_batches(model, windows, settings)
    bar = ProgressBar(settings.steps, 0) if settings.progress else None
    try:
        for _ in range(settings.steps):
            x, y = next(batches)
            for j, t in enumerate(trainers):
                t.train_step(x[:, j * d:(j + 1) * d], target=y[:, j * d:(j + 1) * d])
            if bar:  # the mean over layers of the last step's loss, FVU, L0 and dead share
                bar.update({key: sum(t.last[0][key] for t in trainers) / len(trainers) for key in trainers[0].last[0]})
    finally:
        if bar:
            bar.close()
    return {i: t.finalize()[0] for i, t in zip(settings.layers, trainers, strict=True)}


class CircuitResult(NamedTuple):
    """What ``assay circuit`` computed."""

    graph: Graph
    """The unpruned graph."""
    document: dict
    """The pruned graph as circuit-tracer graph JSON."""
    replacement: float
    """Replacement score (share of influence from token rather than error nodes)."""
    completeness: float
    """Completeness score."""
    predicted: torch.Tensor
    """Graph-predicted change of the top logit when each ablated feature is removed, [n_ablate]."""
    measured: torch.Tensor
    """The change measured in the real model, [n_ablate]."""
    correlation: float
    """Pearson correlation of predicted and measured."""
    measured_frozen: torch.Tensor
    """The change measured in the real model with every MLP without a transcoder held at its clean output (as
    the graph holds its error nodes), [n_ablate]."""
    correlation_frozen: float
    """Pearson correlation of predicted and measured_frozen."""
    measured_replacement: torch.Tensor
    """The change in the replacement model run live: every transcoded MLP's output is its transcoder's rebuild of
    its (live) input plus its clean error, the feature zeroed in its own code, attention and norms live, the other
    features recomputed (TopK) [n_ablate]. Apart from attention, norms and TopK, this is what the graph linearises."""
    correlation_replacement: float
    """Pearson correlation of predicted and measured_replacement."""
    measured_frozen_attention: torch.Tensor
    """The change measured in the real model with every attention pattern held at its clean value (as the graph
    holds them; Hugging Face models), [n_ablate]: what an ablation does through the residual stream and the MLPs
    alone, without moving where attention looks."""
    correlation_frozen_attention: float
    """Pearson correlation of predicted and measured_frozen_attention."""
    measured_frozen_norms: torch.Tensor
    """The change measured in the real model with every attention pattern and every RMSNorm denominator held at
    its clean value — the graph's local replacement model with the real MLPs in place of the transcoders, run
    live (nonlinear) — [n_ablate]."""
    correlation_frozen_norms: float
    """Pearson correlation of predicted and measured_frozen_norms."""
    first_order: dict[str, torch.Tensor]
    """The real model's own first-order prediction of each ablation (the gradient of the demeaned logit at the
    feature's MLP output dotted with the removed vector: attribution patching), [n_ablate] under each freezing in
    :data:`FREEZINGS`: ``"live"`` is the best any linearisation at the clean run can do; the one that holds what
    the graph holds (:func:`graph_freezing`; ``"attention and norms frozen"`` by default) differs from ``predicted``
    only by the real MLPs' Jacobians standing where the graph has the transcoders' (equal for exact transcoders)."""
    correlation_first_order: float
    """Pearson correlation of ``first_order["live"]`` and measured: how linear the real model itself is over these
    ablations, the reference for the graph's correlation."""
    correlation_transcoders: float
    """Pearson correlation of predicted and the first-order prediction under the graph's own freezing
    (:func:`graph_freezing`): how well the transcoders stand in for the MLPs' local response, with attention,
    norms and nonlinearity out of the comparison."""
    constrained: ConstrainedEffects
    """The constrained interventions (:attr:`CircuitSettings.n_constrained`): each chosen feature and token
    embedding doubled in the graph's local replacement model (attention, norms, errors and the other sources held
    as the graph holds them), every feature pre-activation's and target logit's move next to the graph's column.
    They test what the graph claims, its direct effects, exactly; the ablations above test how far its linear
    picture carries into the real model."""
    ablated: tuple[tuple[str, int, int], ...]
    """(basis, position, feature) of each ablated feature."""
    memory: PromptMemory
    """The up-front memory estimate."""


def _check_length(model: nn.Module, n_tokens: int, s: CircuitSettings) -> PromptMemory:
    mem = prompt_memory(model, n_tokens, s)
    if n_tokens > mem.max_tokens:
        raise ValueError(f"the prompt has {n_tokens} tokens and needs about {mem.need_gb:.1f} GB for its graph; the "
                         f"{s.memory_gb:g} GB budget fits prompts up to {mem.max_tokens} tokens with graph_batch="
                         f"{s.graph_batch}: shorten the prompt, lower graph_batch or raise memory_gb")
    return mem


def circuit_experiment(model: nn.Module, prompt: torch.Tensor, bases: Sequence[FeatureBasis], settings: CircuitSettings,
                       *, decode: Callable[[int], str] = str, slug: str = "circuit") -> CircuitResult:
    """Graph, pruned export and interventions of ``prompt`` [T] over ``bases`` (see the module docstring)."""
    memory = _check_length(model, prompt.shape[0], settings)
    cfg = GraphConfig(batch_size=settings.graph_batch, max_n_logits=settings.max_n_logits)
    replacement_kw = dict(embed_site="model.embed_tokens", final_site="model.norm", unembed=model.lm_head.weight,
                          norms=settings.norms, attention=settings.attention)
    graph = attribute(model, prompt, bases, cfg, **replacement_kw)
    f_sl, e_sl, t_sl, _ = graph.slices()
    n = graph.adjacency.shape[0]
    mask = functools.partial(_mask, n)
    scores = graph_scores(graph.adjacency, graph.logit_weights(), mask(e_sl), mask(t_sl))
    names = [decode(int(t)) for t in prompt]
    document = graph_json(graph, slug=slug, prompt_tokens=names, node_threshold=settings.node_threshold,
                          edge_threshold=settings.edge_threshold,
                          logit_names=[decode(int(t)) for t in graph.logit_tokens])
    inf = influence(normalize_matrix(graph.adjacency), graph.logit_weights())[f_sl]
    order = [k for k in inf.argsort(descending=True).tolist() if settings.ablate_first or graph.features[k, 1] > 0]
    top = order[:settings.n_ablate]
    token_id = int(graph.logit_tokens[0])
    from assay import hooks
    from assay.circuits.graph.hf_frozen import eager_patterns, hf_attention_sites, recorded_rms

    error_sites = [name for name in graph.basis_names if name not in {b.name for b in bases}]
    with torch.no_grad(), hooks.capture(model, error_sites) as cap, \
            eager_patterns(model, hf_attention_sites(model)) as patterns, recorded_rms(model) as denominators:
        logits = model(prompt[None]).logits[0, -1]
    clean = float(logits[token_id] - logits.mean())
    f = settings.ablate_fraction
    _, clean_errors = replacement_logits(model, prompt, bases, None)
    sites = [b.output_site for b in bases]
    still = Frozen(dict(patterns), dict(denominators))
    held_by = dict(zip(FREEZINGS, (None, Frozen(still.patterns, {}), Frozen({}, still.denominators), still),
                       strict=True))
    gradients = {name: first_order(model, prompt, sites, token_id, fz) for name, fz in held_by.items()}
    first: dict[str, list[float]] = {name: [] for name in FREEZINGS}
    measured, frozen, live, attn, local, ablated = [], [], [], [], [], []
    from rich.progress import track

    held = {s: cap[s] for s in error_sites}

    for k in track(top, description="ablations", disable=not settings.progress):
        j, p, i = graph.features[k].tolist()
        basis = bases[j]  # a feature's basis index: the graph's bases are the given ones, then the error nodes
        write = -float(graph.activations[k]) * basis.W_dec[i].to(gradients["live"][basis.output_site].dtype)
        for name, g in gradients.items():
            first[name].append(float(write @ g[basis.output_site][p]))
        act = f * float(graph.activations[k])
        measured.append(measured_ablation(model, prompt, basis, p, i, act, token_id, clean, {}) / f)
        frozen.append(measured_ablation(model, prompt, basis, p, i, act, token_id, clean, held) / f if held
                      else measured[-1])  # no MLP without a transcoder: the same run as the plain measurement
        attn.append(measured_ablation(model, prompt, basis, p, i, act, token_id, clean, {},
                                      held_by["attention frozen"]) / f)
        local.append(measured_ablation(model, prompt, basis, p, i, act, token_id, clean, {}, still) / f)
        rep, _ = replacement_logits(model, prompt, bases, clean_errors, (j, p, i, f))
        live.append((float(rep[token_id] - rep.mean()) - clean) / f)
        ablated.append((basis.name, p, i))
    pred = predicted_ablations(graph, top, 0)
    drawn = torch.randperm(graph.n_features, generator=torch.Generator().manual_seed(settings.seed)).tolist()
    taken = set(top)
    others = [k for k in drawn if k not in taken][:max(0, settings.n_constrained - len(top))]
    constrained = constrained_effects(model, graph, bases, features=top + others, batch_size=settings.graph_batch,
                                      **replacement_kw)
    meas, held, rep, fa, lo = (torch.tensor(v, dtype=torch.float64) for v in (measured, frozen, live, attn, local))
    fo = {name: torch.tensor(v, dtype=torch.float64) for name, v in first.items()}
    return CircuitResult(graph, document, scores.replacement, scores.completeness, pred, meas, pearson(pred, meas),
                         held, pearson(pred, held), rep, pearson(pred, rep), fa, pearson(pred, fa), lo,
                         pearson(pred, lo), fo, pearson(fo["live"], meas),
                         pearson(pred, fo[graph_freezing(settings.norms, settings.attention)]), constrained,
                         tuple(ablated), memory)


def _constrained_note(c: ConstrainedEffects, n_features: int) -> str:
    """The constrained interventions' agreement with the graph, feature rows and logit rows apart, and whether every
    entry is inside circuit-tracer's tolerances (its test_attributions_gemma: features atol 5e-4; logits atol 1e-5,
    rtol 1e-3)."""
    diff = (c.measured - c.predicted).abs()
    feats, logits = slice(0, n_features), slice(n_features, None)
    inside = bool((diff[feats] <= 5e-4).all() and (diff[logits] <= 1e-5 + 1e-3 * c.predicted[logits].abs()).all())
    parts = [f"{what}: largest |measured − edge| {float(diff[rows].max()):.2e}, largest |edge| "
             f"{float(c.predicted[rows].abs().max()):.2e}" for what, rows in
             (("feature pre-activations", feats), ("demeaned logits", logits))]
    return (f"Constrained interventions (circuit-tracer's exactness check): {c.predicted.shape[1]} sources (the ablated "
            f"and randomly drawn other features, then every token embedding) each doubled in the graph's local "
            f"replacement model with everything else held; every target should move by the source's edge to it — "
            + "; ".join(parts) + f"; every entry {'inside' if inside else 'OUTSIDE'} circuit-tracer's tolerances "
            f"(features atol 5e-4, logits atol 1e-5 + rtol 1e-3)"
            + ("" if inside or c.measured.dtype == torch.float64 else
               " — float32 rounding of logits of order 10 is itself about 1e-5: rerun with --float64 to tell it from a "
               "wrong edge") + f"; replay of the clean logits {c.replay_error:.1e}.")


def _mask(n: int, sl: slice) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[sl] = True
    return m


def cached_transcoders(model: nn.Module, windows: torch.Tensor, settings: CircuitSettings, cache) -> dict[int, object]:
    """Load each layer's transcoder from ``cache`` (a folder) or train the missing ones (jointly) and save them
    there. The name holds everything a layer's transcoder depends on (not the other layers: see
    :func:`train_transcoders`), the training windows' shape included."""
    from assay.dictionaries.registry import load_sae, save_sae

    n, t = windows.shape
    s = settings
    kind = "-skip" if s.skip else ""
    paths = {i: cache / f"layer{i}-d{s.d_sae}-k{s.k}{kind}-steps{s.steps}-rows{s.rows}-seed{s.seed}-windows{n}x{t}"
             for i in s.layers}
    out = {i: load_sae(p) for i, p in paths.items() if p.is_dir()}
    missing = tuple(i for i in s.layers if i not in out)
    if missing:
        for i, tc in train_transcoders(model, windows, replace(s, layers=missing)).items():
            save_sae(paths[i], tc)
            out[i] = tc
    return out


def run_real_circuit(model_name: str, prompt: str, settings: CircuitSettings, out_dir, *, n_windows: int = 256,
                     window: int = 64) -> CircuitResult:
    """Load ``model_name`` (:func:`assay.models.load`), train or load the transcoders (cached under
    ``out_dir/transcoders``) on ``n_windows`` windows of ``window`` tokens of the bundled corpus, run
    :func:`circuit_experiment` on ``prompt`` and write ``graph.json`` (circuit-tracer format) and the report
    section (``section.json`` + ``report.html`` with the graph view) to ``out_dir``."""
    import json
    import resource
    import time
    from pathlib import Path

    from assay import corpora
    from assay.models import load
    from assay.report import Section, Table, write_section

    start = time.perf_counter()
    out = Path(out_dir)
    loaded = load(model_name)
    model, tok = loaded.model, loaded.tokenizer
    ids = torch.tensor(tok(prompt).input_ids)
    if not settings.layers:
        settings = replace(settings, layers=tuple(range(model.config.num_hidden_layers)))
    _check_length(model, len(ids), settings)  # before minutes of training
    windows = corpora.token_windows(tok, corpora.load_corpus("bundled"), window).tokens[:n_windows]
    t_train = time.perf_counter()
    tcs = cached_transcoders(model, windows, settings, out / "transcoders")
    train_s = time.perf_counter() - t_train
    bases = llama_bases(tcs)
    if settings.float64:
        model.double()
        bases = [b.to(torch.float64) for b in bases]
    t_graph = time.perf_counter()
    res = circuit_experiment(model, ids, bases, settings, decode=lambda t: tok.decode([t]), slug="circuit")
    graph_s = time.perf_counter() - t_graph
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out.mkdir(parents=True, exist_ok=True)
    (out / "graph.json").write_text(json.dumps(res.document, indent=1))
    g = res.graph
    rows = [(f"{b}@{p}#{f}", *values) for (b, p, f), *values in
            zip(res.ablated, res.predicted.tolist(), res.measured.tolist(), res.measured_frozen.tolist(),
                res.measured_frozen_attention.tolist(), res.measured_frozen_norms.tolist(),
                res.measured_replacement.tolist(), *(res.first_order[name].tolist() for name in FREEZINGS),
                strict=True)]
    top = tok.decode([int(g.logit_tokens[0])])
    kind = "skip-transcoders (TopK" if settings.skip else "transcoders (TopK"
    notes = (f"Prompt {prompt!r} ({len(ids)} tokens) on {model_name}; {kind}, d_sae={settings.d_sae}, "
             f"k={settings.k}, {settings.steps} steps) on MLPs {list(settings.layers)} (on every MLP, an error node per position holds what its transcoder misses; "
             f"an MLP without one is an error node).",
             f"Norms {settings.norms} and attention {settings.attention} in the graph, computed in "
             f"{'float64' if settings.float64 else 'float32'}. {g.n_features} active features, {g.adjacency.shape[0]} nodes; "
             f"replacement {res.replacement:.3f}, "
             f"completeness {res.completeness:.3f}.",
             _constrained_note(res.constrained, g.n_features),
             f"Interventions: each of the {len(rows)} most influential features removed from its MLP output in the real "
             f"model (fraction {settings.ablate_fraction:g} of it; changes divided by that); change of the {top!r} logit (minus the mean logit) against the graph's linear prediction: "
             f"Pearson r = {res.correlation:.3f}; with the MLPs without a transcoder held at their clean outputs (as "
             f"the graph's error nodes are) r = {res.correlation_frozen:.3f}; in the replacement model run live (transcoders "
             f"plus clean errors, attention and norms live, TopK recomputed) r = {res.correlation_replacement:.3f}; in the real "
             f"model with every attention pattern held at its clean value (as the graph holds them; circuit-tracer's "
             f"default intervention) r = {res.correlation_frozen_attention:.3f}; with the norms' denominators held "
             f"too (the graph's local replacement model with the real MLPs, run live) r = "
             f"{res.correlation_frozen_norms:.3f}. Sign agreement (predicted, measured): "
             f"{sign_agreement(res.predicted, res.measured):.2f}. For reference, the real model's own first-order "
             f"prediction (the logit's gradient at the MLP output dotted with the removed write: attribution patching) "
             f"against the measured changes, r / sign agreement: " + "; ".join(
                 f"{name} {pearson(res.first_order[name], res.measured):.3f} / "
                 f"{sign_agreement(res.first_order[name], res.measured):.2f}" for name in FREEZINGS)
             + f". Under the graph's own freezing ({graph_freezing(settings.norms, settings.attention)}), that prediction against the graph's "
             f"(only the MLPs' Jacobians differ: the transcoders' quality): r = {res.correlation_transcoders:.3f}.",
             f"Memory: estimated {res.memory.need_gb:.2f} GB for the graph (budget {settings.memory_gb:g} GB, prompts up "
             f"to {res.memory.max_tokens} tokens); whole-process peak, training and interventions included, "
             f"{peak_gb:.2f} GB. Wall time: "
             f"{time.perf_counter() - start:.0f} s (transcoders {train_s:.0f} s, graph and interventions {graph_s:.0f} s).")
    section = Section(title=f"Attribution graph: {model_name}, {prompt!r}", notes=notes, graphs=[res.document],
                      tables=[Table("Feature ablations: predicted vs measured logit change",
                                    ["feature (site@position#index)", "predicted", "measured",
                                     "measured, other MLPs held", "measured, attention frozen",
                                     "measured, attention and norms frozen",
                                     "replacement model, live",
                                     *(f"real model's first-order prediction, {name}" for name in FREEZINGS)],
                                    rows)])
    write_section(out, section)
    return res
