"""Per-token attribution for Hugging Face language models, at the input-embedding layer.

Token ids are not differentiable, so every engine method runs on the input embeddings e = E[ids]
``[B, T, D]`` (Sundararajan, Taly & Yan 2017 attribute IG this way for text): the model is called
with ``inputs_embeds`` and the explained scores are the logits at one position (the next-token
distribution for a causal LM such as SmolLM2) or, for an encoder without a head (MiniLM), the
mean-pooled last hidden state. For the gradient family (gradient, input×gradient, SmoothGrad, IG) a
token's score is the sum of its embedding's attributions (for IG this keeps completeness:
Σ_tokens = f(e) − f(baseline)). The feature-group methods (config constant ``feature_groups``:
occlusion, LIME, KernelSHAP, C-LIME) treat each token's whole embedding as one feature; the engine
writes that feature's score into each of its D dimensions, so the token's score is the value of one
dimension, not their sum (which would be D times too large).

The reference input matters for IG (and input×gradient, occlusion, LIME, KernelSHAP). The zero
embedding is a poor one for models that normalise the residual stream (RMSNorm/LayerNorm are
scale-invariant, RMSNorm(αe) = RMSNorm(e) until αe ~ √ε): on the straight path αe the output is
almost constant and then jumps near α = 0, so the quadrature misses the jump and the completeness
gap is large. :func:`embedding_baseline` offers three references, each a ``[1, T, D]`` embedding:
``"zero"``; ``"pad"`` — every position holds the pad token's embedding (the end-of-sequence token's
when there is no pad token), a real embedding of ordinary norm, i.e. "the text with every token
removed"; ``"mean"`` — the mean of the embedding matrix over the vocabulary.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
from torch import nn

from assay.attribution.engine import Attribution, EngineConfig
from assay.attribution.methods import attribute
from assay.attribution.registry import ENGINE_METHODS, lookup

__all__ = ["EmbeddingScores", "TokenAttribution", "TextBaseline", "embedding_baseline", "attribute_tokens",
           "decoded_tokens"]

TextBaseline = Literal["zero", "pad", "mean"]
"""Named reference inputs in embedding space (see :func:`embedding_baseline`)."""


def embedding_baseline(model: nn.Module, tokenizer, ids: torch.Tensor, kind: TextBaseline) -> torch.Tensor:
    """The reference embedding ``[1, T, D]`` of ``kind`` for token ids ``[1, T]``.

    ``"zero"``: zeros; ``"pad"``: the pad token's embedding at every position (the eos token's when the
    tokenizer has no pad token; ``ValueError`` when it has neither); ``"mean"``: the vocabulary's mean
    embedding at every position.
    """
    weight = model.get_input_embeddings().weight
    T = ids.shape[-1]
    if kind == "zero":
        return torch.zeros((1, T, weight.shape[1]), dtype=weight.dtype, device=weight.device)
    if kind == "mean":
        return weight.detach().mean(0).expand(1, T, -1).clone()
    if kind == "pad":
        tid = getattr(tokenizer, "pad_token_id", None)
        if tid is None:
            tid = getattr(tokenizer, "eos_token_id", None)
        if tid is None:
            raise ValueError("baseline 'pad' needs a tokenizer with a pad or eos token; use 'zero' or 'mean'")
        if not 0 <= int(tid) < weight.shape[0]:
            raise ValueError(f"pad/eos token id {tid} is outside the embedding matrix ({weight.shape[0]} rows)")
        return weight.detach()[int(tid)].expand(1, T, -1).clone()
    raise ValueError(f"unknown text baseline {kind!r}; choose one of {', '.join(get_args(TextBaseline))}")


class EmbeddingScores(nn.Module):
    """Wrap an HF model as f(inputs_embeds ``[n, T, D]``) → scores ``[n, C]`` at ``position``."""

    def __init__(self, model: nn.Module, attention_mask: torch.Tensor | None = None, position: int = -1,
                 pool: Literal["position", "mean"] = "position") -> None:
        super().__init__()
        self.model = model
        self.attention_mask = attention_mask
        self.position = position
        self.pool = pool

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        kw = {}
        if self.attention_mask is not None:
            kw["attention_mask"] = self.attention_mask[:1].expand(e.shape[0], -1)
        out = self.model(inputs_embeds=e, **kw)
        y = getattr(out, "logits", None)
        if y is None:
            y = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if self.pool == "mean":
            return y.mean(1)
        return y[:, self.position]


class TokenAttribution(NamedTuple):
    """Per-token scores for one text."""

    tokens: list[str]
    """The tokens as text (``" capital"``, decoded one by one; the tokenizer's raw spelling, such as
    ``"Ġcapital"``, when it cannot decode)."""
    token_ids: torch.Tensor
    """Token ids ``[T]``."""
    scores: torch.Tensor
    """One score per token ``[T]`` (the sum of its embedding's attributions)."""
    attribution: Attribution
    """The full embedding-level attribution (values ``[1, T, D]``)."""
    completeness_gap: float
    """Σ scores − (f_t(x) − f_t(baseline)) at the token level; NaN for methods without a reference
    input. Only for a method whose config is ``complete`` (IG, KernelSHAP) is it expected to be near 0;
    for them a gap that is large against f_t(x) − f_t(baseline) means the scores are not trustworthy."""
    relative_gap: float
    """``|completeness_gap| / |f_t(x) − f_t(baseline)|`` (NaN without a reference input)."""


def decoded_tokens(tokenizer, ids: list[int]) -> list[str]:
    """Each token id as the text it stands for (``" capital"`` rather than BPE's ``"Ġcapital"``)."""
    decode = getattr(tokenizer, "decode", None)
    if decode is None:
        return list(tokenizer.convert_ids_to_tokens(ids))
    return [decode([i]) for i in ids]


def attribute_tokens(
    model: nn.Module, tokenizer, text: str, target: int | None = None, *, config: EngineConfig | str,
    pool: Literal["position", "mean"] = "position", position: int = -1,
    baseline: TextBaseline | float | torch.Tensor | None = None,
) -> TokenAttribution:
    """Attribute the model's score ``target`` (default: the top next token) to each token of ``text``.

    ``baseline`` (used by the methods whose config ``uses_baseline``: IG, input×gradient, occlusion, LIME,
    KernelSHAP; ignored by the others) is a named reference (:func:`embedding_baseline`: ``"zero"``, ``"pad"``, ``"mean"``) or a value / tensor in
    embedding space; None keeps the method's default, the zero embedding.
    """
    enc = tokenizer(text, return_tensors="pt")
    ids = enc["input_ids"]
    emb_layer = model.get_input_embeddings()
    dev = emb_layer.weight.device
    ids = ids.to(dev)
    with torch.no_grad():
        e = emb_layer(ids)
    f = EmbeddingScores(model, enc.get("attention_mask", None), position, pool)
    method = lookup(config, ENGINE_METHODS).config if isinstance(config, str) else type(config)
    kwargs: dict = {}
    if isinstance(baseline, str):
        baseline = embedding_baseline(model, tokenizer, ids, baseline)  # type: ignore[arg-type]
    if baseline is not None and method.uses_baseline:
        kwargs["baseline"] = baseline
    T, D = e.shape[1], e.shape[2]
    if method.feature_groups:
        kwargs["feature_mask"] = torch.arange(T, device=dev)[:, None].expand(T, D)
    a = attribute(f, e, target, config=config, **kwargs)
    if a.values.dim() != 3:
        raise ValueError("attribute_tokens explains one target; pass an int or None")
    # a perturbation method's token score is copied into all D dims of the token; a gradient method's
    # per-dim values add up to the token's score
    scores = a.values[0, :, 0] if method.feature_groups else a.values[0].sum(-1)
    scores = scores.detach().cpu()
    delta = float(a.output[0]) - float(a.baseline_output[0])
    gap = float(scores.double().sum()) - delta
    relative = abs(gap) / abs(delta) if delta != 0 else (0.0 if gap == 0 else float("inf"))
    if gap != gap:  # NaN: no reference input
        relative = float("nan")
    return TokenAttribution(decoded_tokens(tokenizer, ids[0].tolist()), ids[0].cpu(), scores, a, gap, relative)
