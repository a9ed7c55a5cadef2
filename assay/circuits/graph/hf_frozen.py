"""Frozen attention patterns and RMSNorm scales for Hugging Face decoders (Llama, SmolLM2, Qwen2, Mistral ...).

The local replacement model of Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in
Language Models" (circuit-tracer's ``_configure_gradient_flow``) freezes every attention pattern and every
norm's denominator at its value on the prompt. Hugging Face attention modules have no pattern site: they
call a function from transformers' ``AttentionInterface`` chosen by ``config._attn_implementation``.
:func:`eager_patterns` runs the model with eager attention and keeps each ``*.self_attn`` module's
softmax weights; :func:`frozen_patterns` registers an attention function that returns ``pattern @ V``
for those weights, so attention is linear in its input. An RMSNorm ``y = w ⊙ x / sqrt(mean(x²) + ε)``
is frozen as ``w ⊙ x / r`` with ``r`` its clean denominator per position (:func:`rms_denominator`,
:func:`frozen_rms`). For graphs whose edges follow the model's own first-order response instead,
:func:`linearised_attention` replaces each attention by its linearisation at the clean run (from
:func:`recorded_qkv`: the pattern moves with the queries and keys to first order).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["FROZEN_ATTENTION", "is_rms_norm", "rms_denominator", "frozen_rms", "recorded_rms", "replaced_norms",
           "frozen_rms_norms",
           "hf_attention_sites", "eager_patterns", "frozen_patterns", "recorded_qkv", "linearised_attention"]

FROZEN_ATTENTION = "assay_frozen_pattern"
"""Name under which the frozen-pattern attention function is registered in transformers' AttentionInterface."""

_FROZEN: dict[int, torch.Tensor] = {}  # id(attention module) -> its frozen pattern [1, heads, T, T], while frozen


def is_rms_norm(module: nn.Module) -> bool:
    """True for ``torch.nn.RMSNorm`` and Hugging Face ``*RMSNorm`` modules."""
    return isinstance(module, nn.RMSNorm) or type(module).__name__.endswith("RMSNorm")


def _eps(module: nn.Module, dtype: torch.dtype) -> float:
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    return torch.finfo(dtype).eps if eps is None else float(eps)


def rms_denominator(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``sqrt(mean(x²) + ε)`` over the last dimension of the norm's input ``x``, [..., 1]."""
    return (x.pow(2).mean(-1, keepdim=True) + _eps(module, x.dtype)).sqrt()


def frozen_rms(module: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The RMSNorm with its denominator frozen at ``r``: ``w ⊙ x / r`` (linear in ``x``)."""
    y = x / r
    weight = getattr(module, "weight", None)
    return y * weight if weight is not None else y


@contextmanager
def recorded_rms(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Yields ``site -> denominator`` [..., 1] of every RMSNorm (:func:`rms_denominator` of its input), filled by
    the forward passes inside the block (the last one's values)."""
    out: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda module, args, site=name: out.__setitem__(
        site, rms_denominator(module, args[0]).detach())) for name, m in model.named_modules() if is_rms_norm(m)]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


@contextmanager
def replaced_norms(model: nn.Module, norms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Inside the block each norm site in ``norms`` returns ``norms[site](x)`` of its live input ``x`` (a forward
    hook: enter this before other hooks on those sites, so that they see the replaced output)."""
    handles = [model.get_submodule(site).register_forward_hook(
        lambda module, args, output, fn=fn: fn(args[0]).to(output.dtype)) for site, fn in norms.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def frozen_rms_norms(model: nn.Module, denominators: Mapping[str, torch.Tensor]):
    """A context inside which each RMSNorm site in ``denominators`` returns ``w ⊙ x / r`` (:func:`frozen_rms`) of
    its live input with its given denominator ``r``, as the local replacement model's norms (linear in ``x``)."""
    return replaced_norms(model, {site: functools.partial(frozen_rms, model.get_submodule(site), r=r)
                                  for site, r in denominators.items()})


def hf_attention_sites(model: nn.Module) -> tuple[str, ...]:
    """The ``*.self_attn`` modules of a Hugging Face model (those with a ``layer_idx``); empty for others."""
    if getattr(getattr(model, "config", None), "_attn_implementation", None) is None:
        return ()
    return tuple(name for name, m in model.named_modules() if name.endswith("self_attn") and hasattr(m, "layer_idx"))


@contextmanager
def _attention(model: nn.Module, implementation: str) -> Iterator[None]:
    config = model.config
    saved = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = saved


@contextmanager
def eager_patterns(model: nn.Module, sites: tuple[str, ...]) -> Iterator[dict[str, torch.Tensor]]:
    """Run forward passes inside the block with eager attention; yields ``site -> pattern`` [B, heads, T, T]
    (the softmax weights each attention module returned in the last pass)."""
    out: dict[str, torch.Tensor] = {}
    handles = []

    def make(site):
        def hook(module, args, output):
            if not isinstance(output, tuple) or len(output) < 2 or not isinstance(output[1], torch.Tensor):
                raise TypeError(f"{site!r} returned no attention weights under eager attention; freezing its "
                                "pattern needs an attention module returning (output, weights)")
            out[site] = output[1].detach()
        return hook

    try:
        for site in sites:
            handles.append(model.get_submodule(site).register_forward_hook(make(site)))
        if sites:
            with _attention(model, "eager"):
                yield out
        else:
            yield out
    finally:
        for h in handles:
            h.remove()


def _frozen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface function: ``pattern @ V`` with the module's frozen pattern (Q, K and the mask unused)."""
    pattern = _FROZEN[id(module)]
    groups = getattr(module, "num_key_value_groups", 1)
    v = value.repeat_interleave(groups, dim=1) if groups > 1 else value  # transformers' repeat_kv
    return (pattern.to(v.dtype) @ v).transpose(1, 2).contiguous(), None


@contextmanager
def _attention_function(model: nn.Module, name: str, fn, table: dict[int, object],
                        entries: Mapping[str, object]) -> Iterator[None]:
    """Inside the block the model's attention is transformers' AttentionInterface function ``fn`` (registered as
    ``name``), which finds each module's entry (``entries``: site -> value) in ``table`` by the module's id."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, fn)
    modules = {id(model.get_submodule(site)): value for site, value in entries.items()}
    table.update(modules)
    try:
        with _attention(model, name):
            yield
    finally:
        for k in modules:
            table.pop(k, None)


def frozen_patterns(model: nn.Module, patterns: Mapping[str, torch.Tensor]):
    """A context inside which every attention module in ``patterns`` applies its given pattern [1, heads, T, T]."""
    return _attention_function(model, FROZEN_ATTENTION, _frozen_attention, _FROZEN, patterns)


RECORDING_ATTENTION = "assay_recorded_qkv"
LINEARISED_ATTENTION = "assay_linearised_pattern"
_RECORDED: dict[int, tuple[torch.Tensor, ...]] = {}  # id(attention module) -> its (query, key, value), while recording
_LINEAR: dict[int, tuple[torch.Tensor, ...]] = {}  # id(attention module) -> clean (pattern, query, key, value)


def _repeat_kv(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    groups = getattr(module, "num_key_value_groups", 1)
    return t.repeat_interleave(groups, dim=1) if groups > 1 else t  # transformers' repeat_kv


def _recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface function: transformers' SDPA attention, keeping the (post-rotary) query, key and value."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    _RECORDED[id(module)] = (query.detach(), key.detach(), value.detach())
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                           **kwargs)


@contextmanager
def recorded_qkv(model: nn.Module, sites: tuple[str, ...]) -> Iterator[dict[str, tuple[torch.Tensor, ...]]]:
    """Yields ``site -> (query, key, value)`` of each attention module (after the rotary embedding; key and value
    per key-value head), filled by the forward passes inside the block."""
    from transformers import AttentionInterface

    AttentionInterface.register(RECORDING_ATTENTION, _recording_attention)
    ids = {site: id(model.get_submodule(site)) for site in sites}
    out: dict[str, tuple[torch.Tensor, ...]] = {}
    try:
        with _attention(model, RECORDING_ATTENTION):
            yield out
            out.update({site: _RECORDED[i] for site, i in ids.items() if i in _RECORDED})
    finally:
        for i in ids.values():
            _RECORDED.pop(i, None)


def _linearised_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface function: attention linearised at its clean run — ``P₀ V + dP V₀`` with the softmax's
    Jacobian ``dP = P₀ ⊙ (dS − Σ P₀ dS)`` of the scores' linear change ``dS = (Q₀ dKᵀ + dQ K₀ᵀ)·scaling``: the clean
    output at the clean inputs, and the attention's own derivative (where it looks moves with Q and K)."""
    p0, q0, k0, v0 = _LINEAR[id(module)]
    scale = scaling if scaling is not None else module.scaling
    k, v, k0, v0 = (_repeat_kv(module, t) for t in (key, value, k0, v0))
    ds = (q0 @ (k - k0).transpose(-1, -2) + (query - q0) @ k0.transpose(-1, -2)) * scale
    p0 = p0.to(v.dtype)
    dp = p0 * (ds - (p0 * ds).sum(-1, keepdim=True))
    return (p0 @ v + dp @ v0).transpose(1, 2).contiguous(), None


def linearised_attention(model: nn.Module, patterns: Mapping[str, torch.Tensor],
                         qkv: Mapping[str, tuple[torch.Tensor, ...]]):
    """A context inside which every attention module in ``patterns`` is linearised at its clean pattern
    [1, heads, T, T] and clean (query, key, value) (:func:`recorded_qkv`): affine in its inputs, exact at the
    clean run."""
    return _attention_function(model, LINEARISED_ATTENTION, _linearised_attention, _LINEAR,
                               {site: (p, *qkv[site]) for site, p in patterns.items()})
