"""Sparse crosscoders: one shared sparse code read from, and written to, several sources — layers of one
model (acausal, cross-layer features) or one site of several models (model diffing).

Lindsey, Templeton, Marcus, Conerly, Batson & Olah 2024, "Sparse Crosscoders for Cross-Layer Features and
Model Diffing" (transformer-circuits.pub/2024/crosscoders); repo science-of-finetuning/crosscoder_learning.

    f = ReLU(Σ_m a^m W_enc^m + b_enc),     â^m = f W_dec^m + b_dec^m,
    L = Σ_m mean_b ‖a^m − â^m‖² + λ · mean_b Σ_i f_i Σ_m ‖W_dec,i^m‖    ("L1 of the per-source norms")

or, with ``activation="topk"``, the k latents of largest scaled code f_i·Σ_m‖W_dec,i^m‖ kept per row and no
L1 term — the per-row form of the BatchTopK crosscoder of Minder, Dumas, Juang, Chughtai & Nanda 2025
("Overcoming Sparsity Artifacts in Crosscoders to Interpret Chat-Tuning"), their remedy for the L1's
complete-shrinkage and latent-decoupling artifacts.

Stored as an SAE over the M sources concatenated, x = [a^1 … a^M] ∈ ℝ^{B×M·d}: W_enc ∈ ℝ^{M·d×n} is the
stack of the W_enc^m (so x W_enc = Σ_m a^m W_enc^m), W_dec ∈ ℝ^{n×M·d} the per-source decoders side by side
(:meth:`Crosscoder.source_decoders` → [M, n, d]); the one SAE trainer trains it. The reconstruction term is
squared (the crosscoder_learning default is the unsquared norm, ``use_mse_loss=False``; recorded here).
Decoder norms only compare across sources on a common scale, so each source is normalised to E‖a^m‖ = √d
(:func:`source_scales`, applied by :func:`crosscoder_batches`; :meth:`Crosscoder.fold_source_scales` folds
them back). Sources of different widths need a projection; without one they are refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from assay.config import ConfigError
from assay.dictionaries.base import SAE, Codes, SAEConfig

__all__ = ["CrosscoderConfig", "Crosscoder", "source_scales", "crosscoder_batches"]


@dataclass(frozen=True, kw_only=True)
class CrosscoderConfig(SAEConfig):
    """A ReLU crosscoder over ``n_sources`` sources of width d_in / n_sources (d_in: the concatenated width).
    Reconstruction loss: sum over all sources' dimensions, mean over tokens."""

    n_sources: int = 2
    """Number of sources M (layers of one model, or models)."""
    activation: Literal["relu", "topk"] = "relu"
    """``relu``: ReLU + the L1 of per-source decoder norms (Lindsey et al.); ``topk``: keep the k latents with
    the largest *scaled* code f_i·Σ_m‖W_dec,i^m‖ per row, values unscaled, no L1 term (the per-row form of
    Minder et al.'s BatchTopK crosscoder, their remedy for L1 sparsity artifacts)."""
    k: int = 32
    """Active latents per row for ``activation="topk"``."""
    l1_coef: float = 1.0
    """λ of the sparsity term Σ_i f_i Σ_m ‖W_dec,i^m‖ (``relu`` only)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_sources < 1 or self.d_in % self.n_sources:
            raise ConfigError(f"d_in={self.d_in} (the sources concatenated) must split into n_sources="
                              f"{self.n_sources} equal widths")
        if self.l1_coef < 0:
            raise ConfigError(f"l1_coef must be >= 0, got {self.l1_coef}")
        if self.activation not in ("relu", "topk"):
            raise ConfigError(f"activation must be 'relu' or 'topk', got {self.activation!r}")
        if self.activation == "topk" and not 0 < self.k <= self.d_sae:
            raise ConfigError(f"k must be in 1..d_sae={self.d_sae}, got k={self.k}")


class Crosscoder(SAE):
    """ReLU crosscoder with the per-source decoder-norm penalty; an SAE over the concatenated sources."""

    architecture = "crosscoder"
    config_cls = CrosscoderConfig
    constrained_decoder = False
    median_init = False
    default_lr = 1e-3
    cfg: CrosscoderConfig

    def __init__(self, cfg: CrosscoderConfig) -> None:
        super().__init__(cfg, atom_norm=0.1)

    @property
    def n_sources(self) -> int:
        return self.cfg.n_sources

    @property
    def d_source(self) -> int:
        """Width d of one source."""
        return self.cfg.d_in // self.cfg.n_sources

    def source_decoders(self) -> Tensor:
        """The per-source decoders W_dec^m as ``[M, n, d]`` (a view)."""
        return self.W_dec.view(self.d_sae, self.n_sources, self.d_source).transpose(0, 1)

    def decoder_norms(self) -> Tensor:
        """‖W_dec,i^m‖ as ``[n, M]``."""
        return self.W_dec.view(self.d_sae, self.n_sources, self.d_source).norm(dim=-1)

    def encode_codes(self, x: Tensor) -> Codes:
        f = (x @ self.W_enc + self.b_enc).relu()
        if self.cfg.activation == "relu":
            return Codes.from_dense(f)
        scaled = f * self.decoder_norms().sum(-1)  # rank by what each latent writes, keep the raw value
        idx = scaled.topk(self.cfg.k, dim=-1).indices
        return Codes.from_dense(torch.zeros_like(f).scatter(-1, idx, f.gather(-1, idx)))

    def loss_terms(self, x: Tensor, codes: Codes, x_hat: Tensor, dead: Tensor | None, *,
                   target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        zero = x_hat.new_zeros(())
        if self.cfg.activation == "topk":
            return zero, zero
        penalty = (codes.values * self.decoder_norms().sum(-1)).sum(-1).mean()
        return self.cfg.l1_coef * penalty, zero

    @torch.no_grad()
    def fold_source_scales(self, scales: Tensor) -> None:
        """Fold per-source scales s_m (trained on s_m·a^m) so the crosscoder takes raw sources: source m's
        encoder rows ×s_m, its decoder columns and bias ÷s_m."""
        s = torch.as_tensor(scales, dtype=self.W_enc.dtype).reshape(self.n_sources, 1).expand(-1, self.d_source)
        s = s.reshape(-1)
        self.W_enc.mul_(s[:, None])
        self.W_dec.div_(s)
        self.b_dec.div_(s)


def source_scales(a: Tensor) -> Tensor:
    """s_m = √d / mean_b ‖a^m_b‖ for sources ``a [B, M, d]`` → ``[M]`` (dictionaries.md §1.1, per source)."""
    return math.sqrt(a.shape[-1]) / a.float().norm(dim=-1).mean(0)


def crosscoder_batches(models: Sequence[nn.Module], sources: Sequence[tuple[int, str]],
                       token_batches: Iterable[Tensor], *, batch_size: int, scales: Tensor | None = None,
                       projections: dict[int, Tensor] | None = None, drop_first: bool = True
                       ) -> Iterator[Tensor]:
    """Concatenated source activations ``[batch_size, M·d]`` for a crosscoder, computed on the fly.

    ``sources``: (model index, site) per source — several sites of one model (cross-layer) or one site of
    several models (diffing); each model runs once per token batch and all its sites are captured in that
    pass. ``projections[i]`` ``[d_i, d]`` maps source i to the common width d (sources of different widths
    are refused without one). ``scales [M]``: per-source normalisation (:func:`source_scales`; None: none).
    """
    from assay.hooks import capture

    if not sources:
        raise ValueError("give at least one (model index, site) source")
    projections = projections or {}
    by_model: dict[int, list[str]] = {}
    for i, site in sources:
        if not 0 <= i < len(models):
            raise ValueError(f"source ({i}, {site!r}) names model {i}, but {len(models)} model(s) were given")
        by_model.setdefault(i, []).append(site)
    buf: list[Tensor] = []
    have = 0
    for tokens in token_batches:
        caps = {}
        for i, sites in by_model.items():
            with torch.no_grad(), capture(models[i], sites) as cap:
                models[i](tokens)
            caps[i] = cap
        acts = []
        for j, (i, site) in enumerate(sources):
            h = caps[i][site]
            if j in projections:
                h = h @ projections[j].to(h.dtype)
            acts.append(h)
        widths = {j: a.shape[-1] for j, a in enumerate(acts)}
        if len(set(widths.values())) != 1:
            raise ValueError(f"crosscoder sources have different widths {widths} (source index: d); a crosscoder "
                             "needs one width: give projections={index: [d_i, d]} for the sources to map")
        h = torch.stack(acts, dim=-2)  # [n, T, M, d]
        if drop_first and h.dim() == 4:
            h = h[:, 1:]
        h = h.reshape(-1, h.shape[-2], h.shape[-1])
        if scales is not None:
            h = h * scales.to(h.dtype)[:, None]
        buf.append(h.reshape(h.shape[0], -1))
        have += h.shape[0]
        while have >= batch_size:
            flat = torch.cat(buf)
            yield flat[:batch_size]
            rest = flat[batch_size:]
            buf, have = [rest], rest.shape[0]
