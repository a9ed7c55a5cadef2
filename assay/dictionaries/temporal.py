"""Temporal SAE: a predictable code from causal attention over past codes plus a sparse novel code.

Lubana, Rager, Hindupur, Costa, Tuckute, Patel, Murthy, Fel, Wurgaft, Bigelow, Lin, Ba, Wattenberg,
Viegas, Weber & Mueller 2025, "Priors in Time: Missing Inductive Biases for Language Model
Interpretability" (ICLR 2026, arXiv 2511.01836); repo eslubana/temporalSAEs (``TemporalSAE``).

Per window x_1..x_T (tied dictionary D ∈ ℝ^{n×d}, E = Dᵀ, bias b, λ = 1/(4d)):

    x ← x − b;   u_t = TopK_k(ReLU(λ x_t E))        (each token's own code; with dense_context: ReLU(λ x_t E))
    c_0 = 0,  c_j = u_{j−1}                                     (context: strictly-past codes)
    head h owns latents [h·n/H, (h+1)·n/H):   ẑ_t[h] = Σ_j a^h_tj c_j[h],
    a^h_t = softmax_j(q^h(u_t)·k^h(c_j)/√d_h) over j ≤ t (and j > t − context; c_0 always allowed)
    s_t = ⟨ẑ_t D, x_t⟩ / ‖ẑ_t D‖²;   z_p,t = s_t ẑ_t;   r_t = x_t − s_t ẑ_t D
    z_n,t = TopK_k(ReLU(λ r_t E));   x̂_t = (z_p,t + z_n,t) D + b
    L = Σ_t ‖x̂_t − x_t‖² / #tokens        (document tokens only: the BOS and padding are masked)

Two choices differ from the reference code, both to keep a training step within 2× of a TopK SAE step
of the same width (docs/temporal_sae.md has the measurement): the context codes u are TopK-sparse like
the novel code (the reference uses the dense ReLU; ``dense_context=True`` does too, by eager dense
products), and each head's values are the past codes of its own latents — no n×n value and output
projections. Since codes and attention weights are ≥ 0 the reference's ReLU after attention is then the
identity, and ẑ_t D = Σ_h Σ_j a^h_tj (c_j[h] D[h]) is an attention over per-head partial reconstructions (``[T, d]`` values), so the only dense ``n × d``
products are the two encoders. Queries and keys are linear in the sparse codes (a sparse decode through their weights).

The decoder is unconstrained (atoms ~ N(0, 1), as the reference; λ sets the code scale); the trainer's
input normalisation, Adam, warmup/decay schedules, clipping and checkpoints are reused unchanged
(:class:`assay.dictionaries.trainer.SAETrainer`, which takes :class:`assay.store.SequenceBatch` es for
SAEs with ``reads_sequences``). The input scale is folded in as a buffer (the attention is not linear in
the scale). Defaults after the spec: lr 1e-3, β = (0.9, 0.95), 4 heads; the reference's AdamW weight
decay 1e-4 is not applied (the shared trainer's Adam has none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assay.config import ConfigError
from assay.dictionaries.base import SAE, Codes, SAEConfig, SAEOutput, rec_loss
from assay.dictionaries.sparse import sparse_decode, to_dense
from assay.dictionaries.temporal_kernels import (
    centred_encode,
    dense_context_values,
    fit_past,
    novel_code,
    past_attention,
    past_prediction,
)

__all__ = ["TemporalConfig", "TemporalSAE", "TemporalCodes", "train_temporal_sae"]


@dataclass(frozen=True, kw_only=True)
class TemporalConfig(SAEConfig):
    """A temporal SAE (Lubana et al. 2025). Reconstruction loss: sum over d, mean over document tokens."""

    k: int = 32
    """Active latents per token of the novel code (and of each token's context code u, unless dense_context)."""
    n_heads: int = 4
    """Attention heads; head h predicts latents [h·n/H, (h+1)·n/H)."""
    d_attn: int | None = None
    """Width of queries and keys over all heads (None: 32 per head)."""
    context: int | None = None
    """Past codes a token attends to (None: every earlier token of its window). Windows must be at least
    this long."""
    lam: float | None = None
    """Encoder scale λ (None: 1/(4·d_in), the reference's value for N(0, 1) atoms)."""
    dense_context: bool = False
    """The reference's dense context code u_t = ReLU(λ(x_t − b)E) (the novel code stays TopK_k; eager dense
    products, slower). False: u_t = TopK_k(ReLU(λ(x_t − b)E)), assay's faster default."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.k <= self.d_sae:
            raise ConfigError(f"k must be in 1..d_sae={self.d_sae}, got k={self.k}")
        if self.n_heads <= 0 or self.d_sae % self.n_heads:
            raise ConfigError(f"n_heads must be positive and divide d_sae={self.d_sae}; got {self.n_heads}")
        if self.d_attn is not None and (self.d_attn <= 0 or self.d_attn % self.n_heads):
            raise ConfigError(f"d_attn must be a positive multiple of n_heads={self.n_heads}; got {self.d_attn}")
        if self.context is not None and self.context <= 0:
            raise ConfigError(f"context must be a positive number of past tokens or None; got {self.context}")
        if self.lam is not None and self.lam <= 0:
            raise ConfigError(f"lam must be positive or None; got {self.lam}")

    @property
    def attn_width(self) -> int:
        """d_attn, or 32 per head."""
        return self.d_attn or 32 * self.n_heads


class TemporalCodes(NamedTuple):
    """A temporal SAE's decomposition of windows ``[B, T, d]`` (raw activation scale)."""

    predicted: Tensor
    """ẑ ``[B, T, n]``: the code the past predicts — attention over strictly-past codes — before its per-token
    scale (dense over the latents the context used; ≥ 0)."""
    predictable: Tensor
    """z_p = s_t ẑ_t ``[B, T, n]``: ẑ scaled to fit the token (s_t may be negative)."""
    novel: Tensor
    """z_n ``[B, T, n]``: the k-sparse code of what the past did not predict."""
    predictable_recon: Tensor
    """z_p D ``[B, T, d]`` (no bias)."""
    novel_recon: Tensor
    """z_n D ``[B, T, d]`` (no bias)."""
    recon: Tensor
    """x̂ = (z_p + z_n) D + b ``[B, T, d]``."""
    attention: Tensor
    """a ``[B, H, T, T]``: weight of query t on context slot j (slot 0 is the empty code, slot j ≥ 1 is token j − 1)."""


class _Pass(NamedTuple):
    recon: Tensor
    scale: Tensor
    u: Tensor | tuple[Tensor, Tensor]
    """The context codes: dense ``[B·T, n]`` with ``dense_context``, else TopK ``(values, indices)`` ``[B·T, k]``."""
    novel: tuple[Tensor, Tensor]
    q: Tensor
    k: Tensor
    allowed: Tensor


class TemporalSAE(SAE):
    """Temporal SAE over windows ``[B, T, d]``; ``encode``/``decode`` satisfy the Lens protocol per window."""

    architecture = "temporal"
    config_cls = TemporalConfig
    constrained_decoder = False
    default_lr = 1e-3
    adam_betas = (0.9, 0.95)
    reads_sequences = True
    cfg: TemporalConfig

    def __init__(self, cfg: TemporalConfig) -> None:
        # not SAE.__init__: the dictionary is tied (E = Dᵀ), so there is no W_enc or b_enc to create
        nn.Module.__init__(self)
        if not isinstance(cfg, TemporalConfig):
            raise TypeError(f"TemporalSAE needs a TemporalConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        n, d, r, h = cfg.d_sae, cfg.d_in, cfg.attn_width, cfg.n_heads
        g = torch.Generator().manual_seed(cfg.seed)
        self.W_dec = nn.Parameter(torch.randn(n, d, generator=g))
        self.b_dec = nn.Parameter(torch.zeros(d))
        head = 1 / math.sqrt(r // h)  # query/key columns of norm 1/√d_h, as the reference
        self.W_q = nn.Parameter(F.normalize(torch.randn(n, r, generator=g), dim=0) * head)
        self.W_k = nn.Parameter(F.normalize(torch.randn(n, r, generator=g), dim=0) * head)
        self.b_q = nn.Parameter(torch.zeros(r))
        self.b_k = nn.Parameter(torch.zeros(r))
        self.register_buffer("input_scale", torch.tensor(1.0))

    @property
    def lam(self) -> float:
        return self.cfg.lam or 1 / (4 * self.cfg.d_in)

    # ----- checks -------------------------------------------------------------------------------
    def check_window(self, t: int) -> None:
        """Raise if windows of ``t`` positions are shorter than the temporal context."""
        if self.cfg.context is not None and t < self.cfg.context:
            raise ValueError(
                f"windows of {t} positions are shorter than the temporal SAE's context of {self.cfg.context} past "
                "tokens, so no token would see its full context. Use longer windows (re-cache the store with a larger "
                f"--context-length) or build the SAE with context <= {t}")

    def _windows(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.d_in:
            raise ValueError(f"TemporalSAE reads windows [batch, pos, d={self.d_in}]; got shape {tuple(x.shape)}. "
                             "Read whole sequences with assay.store.SequenceReader")
        self.check_window(x.shape[1])
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        elif mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool [batch, pos] = {tuple(x.shape[:2])}; got {mask.dtype} {tuple(mask.shape)}")
        return x, mask

    # ----- the forward pass ---------------------------------------------------------------------
    def _allowed(self, mask: Tensor) -> Tensor:
        """Bool ``[B, 1, T, T]``: query t may attend context slot j (module docstring)."""
        B, T = mask.shape
        t = torch.arange(T, device=mask.device)
        j = t[None, :]
        past = (j <= t[:, None]) & (j >= 1)
        if self.cfg.context is not None:
            past &= j > t[:, None] - self.cfg.context
        valid_slot = F.pad(mask[:, :-1], (1, 0), value=False)  # slot j ≥ 1 holds token j − 1
        return ((past[None] & valid_slot[:, None, :]) | (j == 0)[None]).unsqueeze(1)

    def _pass(self, x: Tensor, mask: Tensor) -> _Pass:
        B, T, d = x.shape
        H, r, k = self.cfg.n_heads, self.cfg.attn_width, self.cfg.k
        xs = (x * self.input_scale).reshape(B * T, d)
        u: Tensor | tuple[Tensor, Tensor]
        if self.cfg.dense_context:  # the reference's dense u: plain autograd, dense products
            u = F.relu(self.lam * (xs - self.b_dec) @ self.W_dec.T)
            qk = u @ torch.cat([self.W_q, self.W_k], 1)
        else:
            u = centred_encode(xs, self.b_dec, self.W_dec, self.lam, k)
            qk = sparse_decode(*u, torch.cat([self.W_q, self.W_k], 1))  # sparse backward
        q, key = qk[:, :r] + self.b_q, qk[:, r:] + self.b_k
        # context slot 0 is the empty code; slot j ≥ 1 is token j − 1
        keys = torch.cat([self.b_k.expand(B, 1, r), key.view(B, T, r)[:, :-1]], 1)
        qh = q.view(B, T, H, r // H).transpose(1, 2)
        kh = keys.view(B, T, H, r // H).transpose(1, 2)
        allowed = self._allowed(mask)
        if isinstance(u, Tensor):
            pred = past_attention(qh, kh, dense_context_values(u, self.W_dec, H, B), allowed).reshape(B * T, d)
        else:
            pred = past_prediction(*u, self.W_dec, qh, kh, allowed).reshape(B * T, d)
        p_rec, residual, scale = fit_past(pred, xs, self.b_dec, self.lam)
        n_rec, n_val, n_idx = novel_code(residual, self.W_dec, k)
        recon = torch.add(p_rec, n_rec).add_(self.b_dec)
        return _Pass(recon.view(B, T, d) / self.input_scale, scale, u, (n_val, n_idx), qh, kh, allowed)

    def forward(self, x: Tensor, *, mask: Tensor | None = None, dead: Tensor | None = None,
                sparsity_scale: float = 1.0) -> SAEOutput:
        """Training forward on windows ``x [B, T, d]`` with ``mask [B, T]`` (True at document tokens). The
        loss, ``recon`` (``[N, d]``) and the codes (the novel codes) cover the N masked-in tokens only."""
        x, mask = self._windows(x, mask)
        p = self._pass(x, mask)
        m = mask.reshape(-1)
        target, recon = x[mask], p.recon[mask]
        rec = rec_loss(target, recon)
        n_val, n_idx = p.novel
        codes = Codes(n_val[m].detach(), n_idx[m], self.d_sae, False)
        zero = rec.new_zeros(())
        return SAEOutput(recon, codes, rec, rec.detach(), zero, zero)

    @torch.no_grad()
    def codes(self, x: Tensor, mask: Tensor | None = None) -> TemporalCodes:
        """Predictable and novel codes of windows ``x [B, T, d]`` (raw scale), with the attention weights."""
        x, mask = self._windows(x, mask)
        B, T, _ = x.shape
        n, H = self.d_sae, self.cfg.n_heads
        p = self._pass(x, mask)
        att = (p.q @ p.k.transpose(-1, -2) / math.sqrt(p.q.shape[-1])).masked_fill(~p.allowed, float("-inf"))
        att = att.softmax(-1)  # [B, H, T, T]
        u = (p.u if isinstance(p.u, Tensor) else to_dense(*p.u, n)).view(B, T, n)
        ctx = F.pad(u[:, :-1], (0, 0, 1, 0)).view(B, T, H, n // H).transpose(1, 2)  # [B, H, T, n/H]
        z_hat = (att @ ctx).transpose(1, 2).reshape(B, T, n)
        z_p = p.scale.view(B, T, 1) * z_hat
        z_n = to_dense(*p.novel, n).view(B, T, n)
        s = self.input_scale
        return TemporalCodes(z_hat, z_p, z_n, z_p @ self.W_dec / s, z_n @ self.W_dec / s, p.recon, att)

    # ----- Lens view and the trainer's hooks ----------------------------------------------------
    def encode(self, h: Tensor) -> Tensor:
        """Lens view: windows ``[B, T, d]`` (or one window ``[T, d]``) → total codes z_p + z_n ``[..., n]``."""
        one = h.dim() == 2
        c = self.codes(h[None] if one else h)
        z = c.predictable + c.novel
        return z[0] if one else z

    def decode(self, z: Tensor) -> Tensor:
        """Lens view: codes ``[..., n]`` → activations (z D + b) / s ``[..., d]``."""
        return (z @ self.W_dec + self.b_dec) / self.input_scale

    def encode_codes(self, x: Tensor) -> Codes:
        raise ValueError("a temporal SAE encodes whole windows, not single tokens: use encode(windows [B, T, d]) "
                         "or codes(windows, mask)")

    @torch.no_grad()
    def fold_input_scale(self, s: float) -> None:
        """Take raw activations from now on: the scale s is kept as a buffer applied on the way in and out."""
        self.input_scale.mul_(s)


def train_temporal_sae(sae: TemporalSAE, cfg: Any, reader: Any, site: str, *, batch_size: int, seed: int = 0,
                       checkpoint: str | Path | None = None, windows: int | None = None) -> tuple[TemporalSAE, Any]:
    """Train ``sae`` on whole windows of ``site`` from ``reader`` (an :class:`assay.store.SequenceReader`)
    under ``cfg`` (:class:`~assay.dictionaries.trainer.SAETrainConfig`), with exact resume from
    ``checkpoint``; ``windows=n`` trains on the store's first n windows only (None: all). Returns the
    finalized SAE (it takes raw activations) and the :class:`~assay.dictionaries.trainer.TrainResult`."""
    from assay.dictionaries.trainer import train_saes

    sae.check_window(reader.window)
    per_epoch = reader.n_batches(batch_size, windows=windows)
    epochs = max(1, -(-cfg.steps // per_epoch)) if per_epoch else 1

    def data(start: int):
        return reader.batches(site, batch_size=batch_size, seed=seed, start_batch=start, epochs=epochs, prefetch=1,
                              windows=windows)

    identity = {"store": str(reader.store.path), "site": site, "batch_size": batch_size, "seed": seed, "windows": windows}
    return train_saes(sae, cfg, data, checkpoint=checkpoint, data_identity=identity)
