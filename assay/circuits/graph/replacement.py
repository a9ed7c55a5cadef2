"""The local replacement model of one prompt: frozen attention patterns and norm scales, error constants.

Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language Models" (§ "The
local replacement model"; circuit-tracer's ``_configure_gradient_flow``): run the prompt once, keep
every attention pattern, every LayerNorm's scale σ per position, and each basis's error
``e = y − (a W_dec + b_dec)`` (a skip-transcoder's ``x W_skip`` subtracted too); then the model in which (i) every pattern site returns its frozen
pattern, (ii) every LayerNorm returns ``γ ⊙ (x − mean x)/σ_frozen + β`` (centring stays: it is
linear), (iii) the embedding returns a given tensor and (iv) every basis's output site returns
``a W_dec + b_dec + e`` (plus, for a cross-layer transcoder, the writes of earlier layers' features) for given
activations ``a`` and errors ``e`` (plus a skip-transcoder's ``x W_skip`` of its live input ``x``: a linear path) is
*linear* in (embeddings,
activations, errors), up to constants (biases, position embeddings). With the clean values it
reproduces the model exactly.

A LayerNorm site's input is rebuilt as the sum of the outputs of the sites that feed it
(``norm_inputs``), recorded during the same forward pass; for assay's
:class:`~assay.models.transformer.Transformer` this map is derived automatically. An RMSNorm
(``torch.nn.RMSNorm`` or a Hugging Face ``*RMSNorm``, as in Llama and SmolLM2) returns
``w ⊙ x / r_frozen`` of its actual input. Hugging Face attention modules get their patterns frozen
through transformers' attention interface (:mod:`assay.circuits.graph.hf_frozen`). LayerNorms not in
``norm_inputs`` are refused.

A site without a basis whose output is nonlinear in the residual stream would break linearity: every
``*.mlp`` site that no basis rebuilds (a partial transcoder set) becomes a pure error node per position
(by default; ``error_sites`` names them explicitly)
(:func:`~assay.circuits.graph.basis.error_basis`), appended after the given bases.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from assay import hooks
from assay.circuits.graph.basis import FeatureBasis, error_basis, rebuilt_outputs
from assay.circuits.graph.hf_frozen import (
    eager_patterns,
    frozen_patterns,
    frozen_rms,
    hf_attention_sites,
    is_rms_norm,
    linearised_attention,
    recorded_qkv,
    replaced_norms,
    rms_denominator,
)
from assay.models.transformer import Transformer

__all__ = ["LocalReplacement", "transformer_norm_inputs"]


def transformer_norm_inputs(model: Transformer) -> dict[str, tuple[str, ...]]:
    """For each LayerNorm site of assay's tiny transformer, the sites whose outputs sum to its input."""
    out: dict[str, tuple[str, ...]] = {}
    resid: tuple[str, ...] = ("embed", "pos_embed")
    for i in range(model.config.n_layers):
        out[f"blocks.{i}.ln1"] = resid
        out[f"blocks.{i}.ln2"] = (*resid, f"blocks.{i}.attn")
        resid = (f"blocks.{i}",)
    out["ln_f"] = resid
    return {site: ins for site, ins in out.items() if isinstance(model.get_submodule(site), nn.LayerNorm)}


class LocalReplacement:
    """The linearised model of ``model`` on one prompt ``tokens`` [T] with feature ``bases``.

    ``embed_site`` is the token embedding; ``final_site`` the (final-norm) residual fed to the
    unembedding matrix ``unembed`` [vocab, d]; ``pattern_sites`` the attention-pattern sites (default:
    every module named ``*.attn.pattern``); ``norm_inputs`` maps each LayerNorm site to the sites whose
    outputs sum to its input (default: derived for assay's Transformer, else none). Attributes: ``emb``
    [T, d], ``acts`` / ``pres`` (per basis [T, n]), ``errors`` (per basis [T, d]), ``sigmas`` (per norm
    site [T, 1]), ``rms`` (per RMSNorm site, its frozen denominator [T, 1]), ``final`` [T, d] and ``logits``
    [T, vocab] of the clean run. ``error_sites``: sites (without a basis) whose whole output is an error node
    per position; default every ``*.mlp`` site no basis rebuilds (so no MLP runs live: its nonlinearity would
    make the edges inexact; a compiled model's unused MLPs give all-zero error nodes). ``bases`` holds the given
    bases then one
    :func:`~assay.circuits.graph.basis.error_basis` per error site, cast to the dtype of the model's
    parameters. For a Hugging Face model the default pattern sites are its ``*.self_attn`` modules.
    ``norms``: ``"frozen"`` (the paper's and circuit-tracer's local replacement: every norm's denominator held) or
    ``"linearised"`` (RMSNorms only: each norm replaced by its Jacobian at the clean input, so a change along the
    residual no longer passes as if the norm did not rescale it; rows stay affine in the sources, so they still
    sum to their values with the constants, but a row's constant then holds the norms' offsets too). Linearised
    norms make the graph's edges first-order effects of the real model's norms (an ablation's prediction moves
    towards the real model's) at the cost of the frozen model's plain reading (the constants are no longer
    biases and position embeddings alone). ``attention``: ``"frozen"`` (the clean patterns) or ``"linearised"``
    (Hugging Face attention only: each attention's linearisation at the clean run, so where it looks moves with
    the queries and keys to first order; :func:`~assay.circuits.graph.hf_frozen.linearised_attention`). With both
    linearised the graph's edges are the first-order effects of the model itself (with its MLPs replaced).
    """

    def __init__(
        self, model: nn.Module, tokens: torch.Tensor, bases: Sequence[FeatureBasis], *, embed_site: str = "embed",
        final_site: str = "ln_f", unembed: torch.Tensor | None = None, pattern_sites: Sequence[str] | None = None,
        norm_inputs: Mapping[str, Sequence[str]] | None = None, error_sites: Sequence[str] | None = None,
        norms: str = "frozen", attention: str = "frozen",
    ) -> None:
        dtype = next(model.parameters()).dtype
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be one prompt [T], got shape {tuple(tokens.shape)}")
        if norm_inputs is None:
            norm_inputs = transformer_norm_inputs(model) if isinstance(model, Transformer) else {}
        self.norm_inputs = {site: tuple(ins) for site, ins in norm_inputs.items()}
        unfed = [name for name, m in model.named_modules() if isinstance(m, nn.LayerNorm) and name not in self.norm_inputs]
        if unfed:
            raise ValueError(f"LayerNorms {unfed[:3]} cannot be frozen: give norm_inputs (the sites whose outputs sum "
                             "to each LayerNorm's input; derived automatically for assay's Transformer)")
        self.rms_sites = tuple(name for name, m in model.named_modules() if is_rms_norm(m))
        if norms not in ("frozen", "linearised"):
            raise ValueError(f"norms must be 'frozen' or 'linearised', got {norms!r}")
        if norms == "linearised" and self.norm_inputs:
            raise ValueError("norms='linearised' is built for RMSNorms; this model has LayerNorms "
                             f"({list(self.norm_inputs)[:3]}): use norms='frozen'")
        self.norms = norms
        if attention not in ("frozen", "linearised"):
            raise ValueError(f"attention must be 'frozen' or 'linearised', got {attention!r}")
        self.attention = attention
        outputs = [b.output_site for b in bases]
        if error_sites is None:
            error_sites = [name for name, _ in model.named_modules() if name.endswith(".mlp") and name not in outputs]
        bad = [s for s in error_sites if s in outputs]
        if bad:
            raise ValueError(f"error_sites {bad} are rebuilt by a basis; a site is either a basis or an error node")
        self.error_sites = tuple(error_sites)
        outputs += list(self.error_sites)
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"two bases rebuild the same site: {outputs}; give each output site one basis")
        clash = [b.name for b in bases if b.input_site != b.output_site and b.input_site in outputs]
        if clash:
            raise ValueError(f"bases {clash} read a site that another basis rebuilds; read the site before it")
        self.model, self.tokens = model, tokens
        self.embed_site, self.final_site = embed_site, final_site
        self.unembed = (unembed if unembed is not None else model.get_submodule("unembed").weight).detach()
        self.hf_attention = pattern_sites is None and bool(hf_attention_sites(model))
        self.pattern_sites = tuple(pattern_sites) if pattern_sites is not None else hf_attention_sites(model) or tuple(
            name for name, _ in model.named_modules() if name.endswith(".attn.pattern"))
        if pattern_sites is None and not self.pattern_sites:
            raise ValueError("found no '*.attn.pattern' sites to freeze the attention patterns at; pass "
                             "pattern_sites= (an empty tuple for a model without attention)")
        fed = {s for ins in self.norm_inputs.values() for s in ins}
        sites = {embed_site, final_site, *(b.input_site for b in bases), *outputs, *fed, *self.rms_sites}
        if not self.hf_attention:
            sites |= set(self.pattern_sites)
        rms_in: dict[str, torch.Tensor] = {}
        with torch.no_grad(), hooks.capture(model, sorted(sites)) as cap, _inputs(model, self.rms_sites, rms_in), \
                eager_patterns(model, self.pattern_sites if self.hf_attention else ()) as hf_patterns:
            model(tokens[None])
        self.patterns = hf_patterns if self.hf_attention else {s: cap[s] for s in self.pattern_sites}
        self.qkv: dict[str, tuple[torch.Tensor, ...]] = {}
        if attention == "linearised":
            if not self.hf_attention:
                raise ValueError("attention='linearised' is built for Hugging Face attention modules; this model's "
                                 "patterns are sites: use attention='frozen'")
            with torch.no_grad(), recorded_qkv(model, self.pattern_sites) as self.qkv:
                model(tokens[None])
        self.rms, self.rms_inputs = {}, {}
        for site in self.rms_sites:
            norm, x = model.get_submodule(site), rms_in[site][0]
            self.rms[site] = rms_denominator(norm, x)
            if norms == "linearised":
                self.rms_inputs[site] = x
            if not torch.allclose(frozen_rms(norm, x, self.rms[site]).to(cap[site].dtype), cap[site][0],
                                  rtol=1e-3, atol=1e-5):
                raise ValueError(f"RMSNorm {site!r} ({type(norm).__name__}) does not compute w * x / sqrt(mean(x^2) + "
                                 "eps); its denominator cannot be frozen this way")
        d_of = {s: cap[s].shape[-1] for s in self.error_sites}
        bases = [*bases, *(error_basis(s, d_of[s], dtype=dtype) for s in self.error_sites)]
        self.sigmas = {}
        for site, ins in self.norm_inputs.items():
            x = sum(cap[s][0] if cap[s].ndim == 3 else cap[s] for s in ins)
            ln = model.get_submodule(site)
            self.sigmas[site] = (x.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
        self.bases = tuple(b.to(dtype) for b in bases)
        self.emb = cap[embed_site][0]
        self.pres = [b.pre(cap[b.input_site][0]) for b in self.bases]
        self.acts = [b.activation(p) for b, p in zip(self.bases, self.pres, strict=True)]
        self.errors = [cap[b.output_site][0] - out - b.skip(cap[b.input_site][0])
                       for b, out in zip(self.bases, rebuilt_outputs(self.bases, self.acts), strict=True)]
        self.final = cap[final_site][0]
        self.logits = self.final @ self.unembed.T

    def run(
        self, emb: torch.Tensor, acts: Sequence[torch.Tensor], errors: Sequence[torch.Tensor],
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The linearised forward pass for a batch of source values: ``emb`` [B, T, d], ``acts[j]``
        [B, T, n_j], ``errors[j]`` [B, T, d]. Returns every basis's pre-activations (as computed from
        the replacement's own residual stream) [B, T, n_j] and the final residual [B, T, d]."""
        outputs = [out + e for out, e in zip(rebuilt_outputs(self.bases, acts), errors, strict=True)]
        inputs, final = self.run_outputs(emb, outputs)
        return [b.pre(x) for b, x in zip(self.bases, inputs, strict=True)], final

    def run_outputs(self, emb: torch.Tensor, outputs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The linearised forward pass with every basis's output site set to ``outputs[j]`` [B, T, d_out] (what
        the features write there, a cross-layer transcoder's earlier layers included, plus its error; a skip-transcoder's
        ``x W_skip`` of what it reads in this run is added). Returns what each basis reads at its input site [B, T, d_in] and the
        final residual [B, T, d]. A module whose output is replaced and which no basis reads (an MLP under a
        transcoder) is not run at all."""
        b = emb.shape[0]
        inputs: dict[int, torch.Tensor] = {}
        seen: dict[str, torch.Tensor] = {}
        edits: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {self.embed_site: lambda h: emb}
        if not self.hf_attention:
            for site, pattern in self.patterns.items():
                edits[site] = lambda h, p=pattern: p.expand_as(h)
        for site, ins in self.norm_inputs.items():  # frozen norms first: a basis may read their output
            ln, sigma = self.model.get_submodule(site), self.sigmas[site]

            def frozen(h, ins=ins, ln=ln, sigma=sigma):
                x = sum(seen[s] for s in ins)
                y = (x - x.mean(-1, keepdim=True)) / sigma
                return y * ln.weight + ln.bias if ln.elementwise_affine else y

            edits[site] = frozen
        skipped: dict[str, torch.Tensor] = {}
        for j, basis in enumerate(self.bases):
            def rebuild(h, j=j, basis=basis):
                if basis.input_site == basis.output_site:
                    inputs[j] = h
                    return outputs[j]
                return outputs[j] + basis.skip(inputs[j])

            def read(h, j=j):
                inputs[j] = h
                return h

            if basis.input_site != basis.output_site:
                edits[basis.input_site] = _then(edits.get(basis.input_site), read)
            if basis.input_site != basis.output_site or not basis.n_features:  # an error node's site reads nothing
                skipped[basis.output_site] = outputs[j]
            edits[basis.output_site] = rebuild
        for site in {s for ins in self.norm_inputs.values() for s in ins}:  # last: record what feeds a norm

            def record(h, site=site):
                seen[site] = h
                return h

            edits[site] = _then(edits.get(site), record)
        # the RMSNorms' hooks first: a basis that reads a norm's output (its patch edit) sees the replaced one
        norms = {site: functools.partial(self._rms, site) for site in self.rms_sites}
        with replaced_norms(self.model, norms), _not_run(self.model, skipped), _no_weight_grads(self.model), \
                self._attention_context(), \
                hooks.patch(self.model, edits), \
                hooks.capture(self.model, [self.final_site], stop_at=self.final_site, detach=False) as cap:
            self.model(self.tokens.expand(b, -1))
        return [inputs[j] for j in range(len(self.bases))], cap[self.final_site]

    def _attention_context(self):
        """Hugging Face attention frozen at the clean patterns, or linearised at the clean run; nothing for pattern
        sites (their edits freeze them)."""
        if not self.hf_attention:
            return nullcontext()
        if self.attention == "linearised":
            return linearised_attention(self.model, self.patterns, self.qkv)
        return frozen_patterns(self.model, self.patterns)

    def _rms(self, site: str, x: torch.Tensor) -> torch.Tensor:
        """The RMSNorm ``site`` on its input ``x`` in this model: frozen (``w ⊙ x / r``), or linearised at the clean
        input ``c``: ``w ⊙ (x − c (c·(x − c)) / (d r²)) / r`` — the clean value at ``c`` and the norm's own Jacobian
        ``(w / r)(I − c cᵀ / (d r²))``, so the part of a change along ``c`` (a rescaling) is removed as the norm
        removes it, and each row stays affine in the sources."""
        module, r = self.model.get_submodule(site), self.rms[site]
        if self.norms == "linearised":
            c = self.rms_inputs[site]
            x = x - c * ((x - c) * c).sum(-1, keepdim=True) / (c.shape[-1] * r.square())
        return frozen_rms(module, x, r)


@contextmanager
def _no_weight_grads(model: nn.Module) -> Iterator[None]:
    """Inside the block no parameter requires a gradient, so autograd keeps no layer inputs for weight gradients
    (edges are gradients with respect to the sources only)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextmanager
def _not_run(model: nn.Module, values: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block each module ``site`` returns ``values[site]`` without computing anything (its hooks still
    fire): for modules whose output the replacement model sets anyway."""
    modules = [(model.get_submodule(site), v) for site, v in values.items()]
    try:
        for module, v in modules:
            module.forward = lambda *args, _v=v, **kwargs: _v
        yield
    finally:
        for module, _ in modules:
            if "forward" in vars(module):
                del module.forward


@contextmanager
def _inputs(model: nn.Module, sites: Sequence[str], out: dict[str, torch.Tensor]) -> Iterator[None]:
    """Record the first positional input of each site into ``out`` during forward passes inside the block."""
    handles = []
    try:
        for site in sites:
            handles.append(model.get_submodule(site).register_forward_pre_hook(
                lambda module, args, site=site: out.__setitem__(site, args[0])))
        yield
    finally:
        for h in handles:
            h.remove()


def _then(first: Callable | None, second: Callable) -> Callable:
    """``second ∘ first`` (or ``second`` alone): several edits on one site."""
    if first is None:
        return second
    return lambda h: second(first(h))
