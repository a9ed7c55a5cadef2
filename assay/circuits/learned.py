"""Learned per-layer transcoders on compiled transformers: feature bases for attribution graphs, and their
check against the compiled circuit (spec circuits.md §4.3 A4).

Transcoders after Dunefsky, Chlenski & Nanda 2024, "Transcoders Find Interpretable LLM Feature Circuits"
(TopK activation as Gao et al. 2024 / EleutherAI sparsify); graphs as Ameisen et al. 2025, "Circuit
Tracing: Revealing Computational Graphs in Language Models"; compiled ground truth after Lindner et al.
2023 (tracr). A TopK transcoder of MLP ``i`` reads the MLP input ``blocks.{i}.ln2`` (the compiled models
have no norm, so this is the residual stream) and rebuilds the MLP output ``blocks.{i}.mlp``:

    pre = x W_enc + b_enc,   a = TopK_k(ReLU(pre)),   ŷ = a W_dec + b_dec

which is a :class:`~assay.circuits.graph.basis.FeatureBasis` with σ = TopK∘ReLU (:func:`transcoder_basis`).
:func:`train_mlp_transcoders` trains one per MLP layer on a model's activations of given inputs through the
one SAE trainer (:func:`assay.dictionaries.trainer.train_saes`), optionally from a data initialisation (one feature
per input centre, :mod:`assay.dictionaries.centre_init`). :func:`match_features` names each feature
after the compiled residual direction (a variable's value) its decoder row is closest to in |cos|, a match
when ≥ 0.9; :func:`node_recovery` scores the feature nodes a (pruned) graph keeps against the circuit's
MLP-written variables.

Cross-layer transcoders (Ameisen et al. 2025, the same paper; :mod:`assay.dictionaries.clt`):
:func:`train_mlp_clt` trains one over the MLP layers (every layer captured in one pass) and :func:`clt_bases`
turns it into one basis per layer whose features also write the later MLP outputs
(:attr:`~assay.circuits.graph.basis.FeatureBasis.writes`).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from assay.circuits.compile.circuit import Circuit
from assay.circuits.graph.attribute import Graph
from assay.circuits.graph.basis import FeatureBasis, jump_relu
from assay.config import ConfigError, check_int_fields

__all__ = ["TranscoderTraining", "transcoder_basis", "train_mlp_transcoders", "train_mlp_clt", "clt_bases",
           "FeatureMatch", "match_features",
           "NodeRecovery", "node_recovery", "mlp_variables", "labelled"]


@dataclass(frozen=True, kw_only=True)
class TranscoderTraining:
    """Budget of the per-layer TopK transcoders trained on a compiled model."""

    d_sae: int = 16
    """Features per transcoder."""
    k: int = 2
    """Active features per token (TopK)."""
    steps: int = 600
    """Optimizer steps per transcoder."""
    batch_size: int = 256
    """Activation rows (positions, BOS included) per step."""
    lr: float | None = None
    """Learning rate (None: the TopK default 2e-4/√(d_sae/2¹⁴))."""
    seed: int = 0
    """Seeds the transcoders' initialisation and the order in which input rows are drawn."""
    zero_decoder_bias: bool = False
    """Hold b_dec at 0 (no geometric-median init, not trained): the decoder rows then carry whole output values
    instead of offsets from a shared bias."""
    unit_decoder: bool = True
    """Keep decoder rows at unit norm (False: sparsify's transcoder recipe, W_dec from 0 and never renormalised —
    what an exact k = 1 transcoder of a discretising MLP needs; docs/circuits.md, A4)."""
    resample_every: int | None = None
    """Resample the latents that did not fire, every this many steps (None: never; the trainer's option)."""
    decay_fraction: float = 0.0
    """Decay the lr linearly to 0 over this last fraction of the steps (the trainer's option)."""
    data_init: bool = False
    """Initialise each transcoder from every position of ``inputs`` (its first batch): one feature per input
    centre (error-weighted k-means++ over the distinct input rows in standardised units), winning on the inputs
    nearest to it, with the least-squares decoder of the outputs it wins (:mod:`assay.dictionaries.centre_init`);
    AuxK is off (undrawn features stay at 0 by design, and an exact fit leaves AuxK no residual to normalise by).
    Needs ``unit_decoder=False``; per-layer transcoders only. What passes A4 on histogram, with a small ``lr``
    (docs/circuits.md)."""

    def __post_init__(self) -> None:
        check_int_fields(self)
        if self.data_init and self.unit_decoder:
            raise ConfigError("TranscoderTraining.data_init sets decoder rows of free norms: set unit_decoder=False")
        if not 0.0 <= self.decay_fraction < 1.0:
            raise ConfigError(f"TranscoderTraining.decay_fraction must lie in [0, 1), got {self.decay_fraction}")
        for name in ("d_sae", "k", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TranscoderTraining.{name} must be >= 1, got {getattr(self, name)}")
        if self.k > self.d_sae:
            raise ConfigError(f"TranscoderTraining.k={self.k} exceeds d_sae={self.d_sae}; lower k or widen d_sae")


def transcoder_basis(transcoder, *, layer: int, labels: Sequence[str] = (), input_site: str | None = None,
                     output_site: str | None = None) -> FeatureBasis:
    """The feature basis of a trained TopK or JumpReLU transcoder of MLP ``layer`` (input ``blocks.{layer}.ln2``,
    output ``blocks.{layer}.mlp`` unless ``input_site`` / ``output_site`` name others, e.g. a Llama's
    ``model.layers.{layer}.post_attention_layernorm`` / ``model.layers.{layer}.mlp``): the same encoder, decoder
    and activation (TopK∘ReLU, or JumpReLU with the transcoder's θ), so ``decode(σ(pre(x)))`` is the
    transcoder's own ``transcode(x)`` (a skip-transcoder's ``x W_skipᵀ`` is the basis's ``W_skip``, a linear path in
    the graph: :class:`~assay.circuits.graph.basis.FeatureBasis`). Other activations are refused."""
    from assay.dictionaries.topk import topk_codes
    from assay.dictionaries.transcoder import JumpReLUTranscoder, TopKTranscoder

    if isinstance(transcoder, TopKTranscoder):
        activation = functools.partial(topk_codes, k=transcoder.cfg.k)
    elif isinstance(transcoder, JumpReLUTranscoder):
        activation = functools.partial(jump_relu, threshold=transcoder.threshold.detach().clone())
    else:
        raise TypeError(f"expected a TopKTranscoder or JumpReLUTranscoder, got {type(transcoder).__name__}; build one "
                        "with build_sae('topk_transcoder', ...) or build_sae('jumprelu_transcoder', ...)")
    output_site = output_site or f"blocks.{layer}.mlp"
    return FeatureBasis(
        name=output_site, input_site=input_site or f"blocks.{layer}.ln2", output_site=output_site,
        W_enc=transcoder.W_enc.detach().clone(), b_enc=transcoder.b_enc.detach().clone(),
        W_dec=transcoder.W_dec.detach().clone(), b_dec=transcoder.b_dec.detach().clone(),
        activation=activation, labels=tuple(labels),
        W_skip=transcoder.W_skip.detach().t().clone() if transcoder.cfg.skip else None)


def _tokens(inputs: torch.Tensor, cfg: TranscoderTraining) -> Iterator[torch.Tensor]:
    """Endless seeded draws of rows of ``inputs``, enough per draw for ``cfg.batch_size`` positions."""
    g = torch.Generator().manual_seed(cfg.seed)
    per = max(1, -(-cfg.batch_size // inputs.shape[1]))
    while True:
        yield inputs[torch.randint(0, inputs.shape[0], (per,), generator=g)]


def _pairs(model, layer: int, inputs: torch.Tensor, cfg: TranscoderTraining) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless float32 (MLP input, MLP output) batches of ``cfg.batch_size`` rows over seeded draws of ``inputs``;
    with ``cfg.data_init`` the first batch is every position of ``inputs`` (what the initialisation reads)."""
    from assay.dictionaries.batches import live_batches

    def pairs(tokens, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in live_batches(model, f"blocks.{layer}.ln2", tokens, batch_size=batch_size, drop_first=False,
                                 output_site=f"blocks.{layer}.mlp"):
            yield x.float(), y.float()

    if cfg.data_init:
        yield from pairs([inputs], inputs.numel())
    yield from pairs(_tokens(inputs, cfg), cfg.batch_size)


def train_mlp_transcoders(model, inputs: torch.Tensor, layers: Collection[int],
                          config: TranscoderTraining | None = None) -> dict[int, object]:
    """One TopK transcoder per MLP ``layer`` of ``model`` (assay's Transformer), trained on the activations of
    ``inputs`` [N, T] (every position, BOS included) with :func:`~assay.dictionaries.trainer.train_saes`.
    Returns layer → the finalized transcoder (mapping raw MLP inputs to raw MLP outputs, float32)."""
    from assay.dictionaries.registry import build_sae
    from assay.dictionaries.trainer import train_saes

    cfg = config or TranscoderTraining()
    d = model.config.d_model
    _check_layers(model, inputs, layers)
    out = {}
    for i in sorted(layers):
        tc = build_sae("topk_transcoder", d_in=d, d_out=d, d_sae=cfg.d_sae, k=cfg.k, seed=cfg.seed + i,
                       decoder_bias=not cfg.zero_decoder_bias, unit_decoder=cfg.unit_decoder,
                       **({"data_init": True, "aux_coef": 0.0} if cfg.data_init else {}))
        out[i], _ = train_saes(tc, _train_config(cfg), _pairs(model, i, inputs, cfg))
    return out


def _train_config(cfg: TranscoderTraining):
    from assay.dictionaries.trainer import SAETrainConfig

    return SAETrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.steps // 10, decay_fraction=cfg.decay_fraction,
                          resample_every=cfg.resample_every)


def _check_layers(model, inputs: torch.Tensor, layers: Collection[int]) -> None:
    if inputs.ndim != 2:
        raise ValueError(f"inputs must be token ids [N, T], got shape {tuple(inputs.shape)}")
    bad = [i for i in layers if not 0 <= i < model.config.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {sorted(layers)} must be 1+ of the model's {model.config.n_layers} layers")


def train_mlp_clt(model, inputs: torch.Tensor, layers: Collection[int], config: TranscoderTraining | None = None, *,
                  window: int | None = None):
    """One TopK cross-layer transcoder (:mod:`assay.dictionaries.clt`) over the MLPs ``layers`` of ``model``
    (assay's Transformer): ``config.d_sae`` features and ``config.k`` active per layer, layer l's features
    writing MLP outputs l … l + ``window`` (None: all later ones), trained on every layer's MLP input and output
    captured in one pass over seeded draws of ``inputs`` [N, T] (every position), through the one trainer.
    Returns the finalized CLT (raw MLP inputs → raw MLP outputs, float32)."""
    from assay.dictionaries.clt import clt_batches
    from assay.dictionaries.registry import build_sae
    from assay.dictionaries.trainer import train_saes

    cfg = config or TranscoderTraining()
    if cfg.data_init:
        raise ConfigError("data_init is for per-layer TopK transcoders (train_mlp_transcoders); a cross-layer "
                          "transcoder's block encoder has no such initialisation: set data_init=False")
    _check_layers(model, inputs, layers)
    order, d = sorted(layers), model.config.d_model
    n = len(order)
    clt = build_sae("topk_clt", d_in=n * d, d_out=n * d, d_sae=n * cfg.d_sae, k=cfg.k, n_layers=n, window=window,
                    seed=cfg.seed, decoder_bias=not cfg.zero_decoder_bias, unit_decoder=cfg.unit_decoder)
    pairs = ((x.float(), y.float()) for x, y in clt_batches(
        model, clt, [f"blocks.{i}.ln2" for i in order], [f"blocks.{i}.mlp" for i in order], _tokens(inputs, cfg),
        batch_size=cfg.batch_size, drop_first=False))
    trained, _ = train_saes(clt, _train_config(cfg), pairs)
    return trained


def clt_bases(clt, *, layers: Sequence[int], input_sites: Sequence[str] | None = None,
              output_sites: Sequence[str] | None = None) -> list[FeatureBasis]:
    """The feature bases of a TopK or JumpReLU CLT over MLP ``layers`` (in forward order; sites ``blocks.{i}.ln2``
    → ``blocks.{i}.mlp`` unless given), one per layer: its encoder, its σ (TopK∘ReLU, or pre·1[pre > θ] with the
    layer's thresholds), its decoder to its own MLP output, and its decoders to the later MLP outputs it may write
    as ``writes`` — so the replacement model rebuilds MLP ℓ as Σ_{l ≤ ℓ} a^l W_dec^{l→ℓ} + b_dec^ℓ, the CLT's own
    output."""
    from assay.dictionaries.clt import JumpReLUCLT, TopKCLT
    from assay.dictionaries.topk import topk_codes

    if not isinstance(clt, (TopKCLT, JumpReLUCLT)):
        raise TypeError(f"expected a TopKCLT or JumpReLUCLT, got {type(clt).__name__}; build one with "
                        "build_sae('topk_clt', ...)")
    ins = list(input_sites or [f"blocks.{i}.ln2" for i in layers])
    outs = list(output_sites or [f"blocks.{i}.mlp" for i in layers])
    if not len(layers) == len(ins) == len(outs) == clt.n_layers:
        raise ValueError(f"the CLT spans {clt.n_layers} layers but got {len(layers)} layers, {len(ins)} input and "
                         f"{len(outs)} output sites")
    n, d = clt.n_per_layer, clt.d_out // clt.n_layers
    mask = clt.write_mask()
    bases = []
    for src in range(clt.n_layers):
        writes = tuple((outs[t], clt.decoder(src, t).detach().clone()) for t in range(src + 1, clt.n_layers)
                       if mask[src, t])
        sigma = (functools.partial(topk_codes, k=clt.cfg.k) if isinstance(clt, TopKCLT) else
                 functools.partial(_above, theta=clt.threshold[src * n:(src + 1) * n].detach().clone()))
        bases.append(FeatureBasis(
            name=outs[src], input_site=ins[src], output_site=outs[src], W_enc=clt.W_enc[src].detach().clone(),
            b_enc=clt.b_enc[src * n:(src + 1) * n].detach().clone(), W_dec=clt.decoder(src, src).detach().clone(),
            b_dec=clt.b_dec[src * d:(src + 1) * d].detach().clone(), activation=sigma, writes=writes))
    return bases


def _above(pre: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """JumpReLU at inference: pre·1[pre > θ] per feature."""
    return pre * (pre > theta.to(pre.dtype))


def mlp_variables(circuit: Circuit, layers: Collection[int] | None = None) -> frozenset[str]:
    """On-circuit variables written by the MLP blocks (of ``layers``; default all): what a transcoder should find."""
    on = circuit.ancestors()
    return frozenset(n.variable for n in circuit.nodes if n.variable in on and n.site.endswith(".mlp")
                     and (layers is None or n.layer in layers))


class FeatureMatch(NamedTuple):
    """Each feature's closest compiled direction."""

    labels: tuple[str, ...]
    """The variable of the closest direction when |cos| ≥ the threshold, else ``""``."""
    values: tuple[object, ...]
    """The value (categorical variables) of that direction, ``None`` for numerical ones or no match."""
    cosine: torch.Tensor
    """|cos| between each decoder row and its closest compiled direction, [n]."""


def match_features(basis: FeatureBasis, circuit: Circuit, *, threshold: float = 0.9) -> FeatureMatch:
    """Match each decoder row of ``basis`` to the compiled variable value (one orthonormal residual direction)
    with the largest |cos| (spec A4: ≥ ``threshold`` is a match)."""
    owner = [(n.variable, n.values[k] if n.values else None, dim)
             for n in circuit.nodes for k, dim in enumerate(n.dims)]
    if not owner:
        raise ValueError("the circuit has no residual directions to match features against")
    dims = torch.tensor([dim for *_, dim in owner])
    rows = basis.W_dec.detach().double()
    cos = (rows[:, dims] / rows.norm(dim=1, keepdim=True).clamp(min=1e-30)).abs()  # directions are unit basis vectors
    best, which = cos.max(1)
    labels = tuple(owner[j][0] if c >= threshold else "" for c, j in zip(best.tolist(), which.tolist(), strict=True))
    values = tuple(owner[j][1] if lab else None for lab, j in zip(labels, which.tolist(), strict=True))
    return FeatureMatch(labels, values, best)


def labelled(basis: FeatureBasis, match: FeatureMatch) -> FeatureBasis:
    """``basis`` with its features named by ``match``."""
    return replace(basis, labels=match.labels)


class NodeRecovery(NamedTuple):
    """Feature nodes of graphs against the circuit's variables."""

    precision: float
    """Share of the kept feature nodes (over all graphs and positions) whose label is an expected variable."""
    recall: float
    """Share of the expected variables that label at least one kept feature node."""
    found: frozenset
    """Labels of the kept feature nodes (``""`` = unmatched)."""


def node_recovery(graphs: Sequence[Graph], bases: Sequence[FeatureBasis], expected: Collection[str], *,
                  node_masks: Sequence[torch.Tensor] | None = None, only: Collection[int] | None = None) -> NodeRecovery:
    """Node precision and recall of ``graphs``' feature nodes (with ``node_masks``, one bool [N] per graph from
    pruning, only the kept ones; with ``only``, only the features of those basis indices) against the
    ``expected`` variables (e.g. :func:`mlp_variables`)."""
    names: list[str] = []
    for k, g in enumerate(graphs):
        keep = torch.ones(g.n_features, dtype=torch.bool) if node_masks is None else node_masks[k][:g.n_features]
        names += [bases[j].labels[i] for (j, _, i), kept in zip(g.features.tolist(), keep.tolist(), strict=True)
                  if kept and (only is None or j in only)]
    expected = set(expected)
    hits = sum(n in expected for n in names)
    return NodeRecovery(hits / len(names) if names else float("nan"),
                        len(set(names) & expected) / len(expected) if expected else float("nan"), frozenset(names))
