"""Per-token attribution for Hugging Face language models, at the input-embedding layer.

Token ids are not differentiable, so every engine method runs on the input embeddings e = E[ids]
``[B, T, D]`` (Sundararajan, Taly & Yan 2017 attribute IG this way for text): the model is called
with ``inputs_embeds`` and the explained scores are the logits at one position (the next-token
distribution for a causal LM such as SmolLM2) or, for an encoder without a head (MiniLM), the
mean-pooled last hidden state. A token's score is the sum of its embedding's attributions (for
IG this keeps completeness: Σ_tokens = f(e) − f(baseline)); perturbation methods treat each token's
whole embedding as one feature.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn

from assay.attribution.engine import Attribution, EngineConfig
from assay.attribution.methods import attribute

__all__ = ["EmbeddingScores", "TokenAttribution", "attribute_tokens"]


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
    """The tokens, as the tokenizer spells them."""
    token_ids: torch.Tensor
    """Token ids ``[T]``."""
    scores: torch.Tensor
    """One score per token ``[T]`` (the sum of its embedding's attributions)."""
    attribution: Attribution
    """The full embedding-level attribution (values ``[1, T, D]``)."""


def attribute_tokens(
    model: nn.Module, tokenizer, text: str, target: int | None = None, *, config: EngineConfig | str,
    pool: Literal["position", "mean"] = "position", position: int = -1, baseline: float | torch.Tensor | None = None,
) -> TokenAttribution:
    """Attribute the model's score ``target`` (default: the top next token) to each token of ``text``.

    ``baseline`` (for IG, occlusion, LIME, KernelSHAP) is in embedding space; the default 0 is the
    zero embedding.
    """
    enc = tokenizer(text, return_tensors="pt")
    ids = enc["input_ids"]
    emb_layer = model.get_input_embeddings()
    dev = emb_layer.weight.device
    ids = ids.to(dev)
    with torch.no_grad():
        e = emb_layer(ids)
    f = EmbeddingScores(model, enc.get("attention_mask", None), position, pool)
    name = config if isinstance(config, str) else type(config).__name__
    kwargs: dict = {}
    if baseline is not None:
        kwargs["baseline"] = baseline
    T, D = e.shape[1], e.shape[2]
    if name in ("lime", "kernel_shap", "LimeConfig", "KernelShapConfig"):
        kwargs["feature_mask"] = torch.arange(T, device=dev)[:, None].expand(T, D)
    if name in ("occlusion", "OcclusionConfig"):
        kwargs["feature_mask"] = torch.arange(T, device=dev)[:, None].expand(T, D)
    if name in ("c_lime", "CLimeConfig"):
        kwargs = {"feature_mask": torch.arange(T, device=dev)[:, None].expand(T, D)}
    a = attribute(f, e, target, config=config, **kwargs)
    if a.values.dim() != 3:
        raise ValueError("attribute_tokens explains one target; pass an int or None")
    scores = a.values[0].sum(-1)
    if name in ("lime", "kernel_shap", "c_lime", "LimeConfig", "KernelShapConfig", "CLimeConfig"):
        scores = a.values[0, :, 0]  # each token's coefficient is copied to all its D dims
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    return TokenAttribution(tokens, ids[0].cpu(), scores.detach().cpu(), a)
