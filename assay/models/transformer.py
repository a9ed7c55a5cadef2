"""A tiny nanoGPT-style decoder-only transformer whose parts are named hook sites.

Implements the GPT-2 decoder (Radford, Wu, Child, Luan, Amodei, Sutskever 2019, "Language Models
are Unsupervised Multitask Learners") in the pre-LayerNorm arrangement of nanoGPT (Karpathy 2022),
with learned absolute position embeddings. Block ``i`` computes, on the residual stream ``x``::

    x = x + Attn(LN₁(x)),   Attn = softmax(QKᵀ/√d_head + causal mask) V  (per head, then W_O)
    x = x + MLP(LN₂(x)),    MLP  = W_out · GELU(W_in · h)

Options for hand-built (compiled) weights, in the style of tracr (Lindner et al. 2023, "Tracr:
Compiled Transformers as a Laboratory for Interpretability"): ``norm="none"`` makes every LayerNorm
the identity (the sites ``ln1``/``ln2``/``ln_f`` stay, as ``nn.Identity``) and ``act="relu"`` makes
the MLP nonlinearity an exact ReLU. Defaults (``"layernorm"``, ``"gelu"``) are the GPT-2 model.
``causal=False`` drops the causal mask: a bidirectional encoder in the style of BERT (Devlin, Chang, Lee,
Toutanova 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding").

Sites reachable by :mod:`assay.hooks` (``model.get_submodule`` names):

- ``embed`` (token embedding, [batch, pos, d_model]) and ``pos_embed`` (position embedding,
  [pos, d_model]);
- ``blocks.{i}`` — the residual stream after block ``i``; ``blocks.{i}.attn`` and
  ``blocks.{i}.mlp`` — what each sublayer adds to the stream; ``blocks.{i}.ln1/ln2``;
- ``ln_f`` (final LayerNorm) and ``unembed`` (logits, [batch, pos, vocab]);
- ``blocks.{i}.attn.pattern`` — the attention pattern (softmax weights, [batch, head, query, key]),
  an identity module that a hook can read or replace (e.g. to freeze the pattern for attribution
  graphs). A hook on it makes that layer run the eager kernel even when ``attn_impl="sdpa"``.

Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` (``attn_impl=
"sdpa"``) or the eager reference :func:`naive_causal_attention` (``attn_impl="eager"``); tests
check the two agree. Dropout (training only) draws its masks from the ``generator`` passed to
``forward`` (None: the global generator); SDPA cannot take a generator, so attention with dropout
runs the eager kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from assay.config import ConfigError, check_choice

__all__ = ["TransformerConfig", "Transformer", "AttentionPattern", "causal_pattern", "naive_causal_attention",
           "causal_attention", "dropout"]


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Shape of a tiny decoder-only transformer."""

    vocab_size: int
    """Number of token ids (the world's vocabulary size)."""
    n_layers: int = 2
    """Number of transformer blocks."""
    n_heads: int = 2
    """Attention heads per block; must divide d_model."""
    d_model: int = 64
    """Width of the residual stream."""
    d_mlp: int | None = None
    """Hidden width of each MLP; None means 4 * d_model."""
    context: int = 64
    """Maximum sequence length (size of the learned position embedding)."""
    dropout: float = 0.0
    """Dropout on attention weights and on each sublayer output (training only)."""
    attn_impl: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel: PyTorch's scaled_dot_product_attention or the eager reference."""
    norm: Literal["layernorm", "none"] = "layernorm"
    """Normalisation before each sublayer and the unembedding: LayerNorm, or none (identity)."""
    act: Literal["gelu", "relu"] = "gelu"
    """MLP nonlinearity: GELU (GPT-2) or an exact ReLU (for compiled weights)."""
    causal: bool = True
    """Causal attention (a decoder, GPT-2); False: every position attends to every position (a BERT-style
    encoder, as in Devlin et al. 2019), e.g. for a world whose targets sit at the input positions."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "n_heads", "d_model", "context"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"TransformerConfig.{name} must be a positive integer, got {v!r}")
        if self.d_mlp is not None and (not isinstance(self.d_mlp, int) or self.d_mlp < 1):
            raise ConfigError(f"TransformerConfig.d_mlp must be a positive integer or None, got {self.d_mlp!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"TransformerConfig: n_heads={self.n_heads} must divide d_model={self.d_model}; "
                "pick d_model a multiple of n_heads"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"TransformerConfig.dropout must lie in [0, 1), got {self.dropout!r}")
        check_choice("TransformerConfig.attn_impl", self.attn_impl, ("sdpa", "eager"))
        check_choice("TransformerConfig.norm", self.norm, ("layernorm", "none"))
        check_choice("TransformerConfig.act", self.act, ("gelu", "relu"))
        if not isinstance(self.causal, bool):
            raise ConfigError(f"TransformerConfig.causal must be True or False, got {self.causal!r}")

    @property
    def d_head(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads

    @property
    def mlp_width(self) -> int:
        """The MLP hidden width actually used (d_mlp, or 4 * d_model when unset)."""
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model


def dropout(x: torch.Tensor, p: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverted dropout (Srivastava et al. 2014): zero each entry with probability ``p`` and scale the
    rest by 1/(1−p); the mask draws from ``generator`` (None: the global generator)."""
    if p == 0.0:
        return x
    device = generator.device if generator is not None else x.device
    keep = torch.rand(x.shape, generator=generator, device=device).to(x.device) >= p
    return x * keep.to(x.dtype) / (1 - p)


def causal_pattern(q: torch.Tensor, k: torch.Tensor, *, causal: bool = True) -> torch.Tensor:
    """Attention weights ``softmax(q kᵀ / √d + mask)``, [batch, head, query, key]; the causal mask only
    when ``causal`` (False: no mask, every query sees every key)."""
    t = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if not causal:
        return scores.softmax(dim=-1)
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


def naive_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0,
    generator: torch.Generator | None = None, causal: bool = True,
) -> torch.Tensor:
    """Reference attention: ``softmax(q kᵀ / √d + mask) v`` for [batch, head, pos, d_head] (no mask when
    ``causal`` is False), with :func:`dropout` of rate ``dropout_p`` on the attention weights."""
    return dropout(causal_pattern(q, k, causal=causal), dropout_p, generator=generator) @ v


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, impl: str = "sdpa", dropout_p: float = 0.0,
    generator: torch.Generator | None = None, causal: bool = True,
) -> torch.Tensor:
    """Causal (or, with ``causal=False``, unmasked) attention with the chosen kernel; ``dropout_p`` applies to
    the attention weights, the mask drawn from ``generator``. SDPA cannot draw from a generator, so with
    dropout the eager kernel runs."""
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"unknown attention implementation {impl!r}; use 'sdpa' or 'eager'")
    if impl == "sdpa" and dropout_p == 0.0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return naive_causal_attention(q, k, v, dropout_p=dropout_p, generator=generator, causal=causal)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask draws from the generator given to ``forward`` (see :func:`dropout`)."""

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return dropout(x, self.p if self.training else 0.0, generator=generator)


class AttentionPattern(nn.Identity):
    """The attention-pattern site (identity): its input and output are the softmax weights
    [batch, head, query, key], so :mod:`assay.hooks` can read or replace them."""


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


class Attention(nn.Module):
    """Multi-head causal self-attention (fused QKV projection ``qkv``, output projection ``out``,
    pattern site ``pattern``)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.pattern = AttentionPattern()
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        b, t, d = x.shape
        h = self.cfg.n_heads
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        p = self.cfg.dropout if self.training else 0.0
        if self.cfg.attn_impl == "eager" or _has_hooks(self.pattern):
            y = dropout(self.pattern(causal_pattern(q, k, causal=self.cfg.causal)), p, generator=generator) @ v
        else:
            y = causal_attention(q, k, v, impl="sdpa", dropout_p=p, generator=generator, causal=self.cfg.causal)
        return self.drop(self.out(y.transpose(1, 2).reshape(b, t, d)), generator=generator)


class MLP(nn.Module):
    """Two-layer MLP (``fc_in``, ``fc_out``) with a GELU or ReLU nonlinearity."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.mlp_width)
        self.fc_out = nn.Linear(cfg.mlp_width, cfg.d_model)
        self.drop = Dropout(cfg.dropout)
        self.act = F.relu if cfg.act == "relu" else F.gelu

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.drop(self.fc_out(self.act(self.fc_in(x))), generator=generator)


def _norm(cfg: TransformerConfig) -> nn.Module:
    return nn.LayerNorm(cfg.d_model) if cfg.norm == "layernorm" else nn.Identity()


class Block(nn.Module):
    """One pre-LN transformer block; its output is the residual stream after the block."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln1 = _norm(cfg)
        self.attn = Attention(cfg)
        self.ln2 = _norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), generator=generator)
        return x + self.mlp(self.ln2(x), generator=generator)


class Transformer(nn.Module):
    """Decoder-only transformer: token ids [batch, pos] → logits [batch, pos, vocab].

    Weights are initialised as in GPT-2/nanoGPT (normal(0, 0.02); residual output projections
    scaled by 1/√(2·n_layers); zero biases), drawn from ``generator`` when one is given.
    """

    def __init__(self, cfg: TransformerConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = cfg
        device = torch.get_default_device()
        with torch.device("meta"):  # allocates and draws nothing: reset_parameters draws every weight
            self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.pos_embed = nn.Embedding(cfg.context, cfg.d_model)
            self.drop = Dropout(cfg.dropout)
            self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
            self.ln_f = _norm(cfg)
            self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.to_empty(device=device)
        self.reset_parameters(generator=generator)

    @torch.no_grad()
    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        """Re-draw all weights (GPT-2 initialisation) from ``generator``."""
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif ".ln" in name or name.startswith("ln_f"):
                p.fill_(1.0)
            else:
                std = resid_std if name.endswith(("attn.out.weight", "mlp.fc_out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std, generator=generator)

    def forward(self, tokens: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits ``[batch, pos, vocab]``; in training mode dropout masks draw from ``generator``."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, pos] token ids, got shape {tuple(tokens.shape)}")
        t = tokens.shape[1]
        if t > self.config.context:
            raise ValueError(
                f"sequence length {t} exceeds the model context {self.config.context}; "
                "truncate the input or build the model with a larger context"
            )
        pos = torch.arange(t, device=tokens.device)
        x = self.drop(self.embed(tokens) + self.pos_embed(pos), generator=generator)
        for block in self.blocks:
            x = block(x, generator=generator)
        return self.unembed(self.ln_f(x))

    def n_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())
