"""The tuned lens: one affine translator per layer, trained to match the model's final distribution.

Belrose, Furman, Smith, Halawi, Ostrovsky, McKinney, Biderman & Steinhardt 2023, "Eliciting Latent
Predictions from Transformers with the Tuned Lens" (arXiv 2303.08112; repo AlignmentResearch/tuned-lens):

    logits_ℓ = W_U · norm_f(h_ℓ + A_ℓ h_ℓ + b_ℓ),    A_ℓ = 0, b_ℓ = 0 at init (= the logit lens)
    L = Σ_ℓ KL(p_final ‖ p_ℓ)  at the same position,

trained with SGD + Nesterov momentum β = 0.9, lr = lr_scale·(1 − β), weight decay 1e-3, linear decay
without warm-up, gradient-norm clipping at 1; the final norm and unembedding stay frozen. Trains from
captured activations or from an :class:`assay.store.ActivationStore` (same rows at every site), and
saves/loads as an artifact of kind ``"lens.tuned"``.

As a :class:`~assay.lens.Lens` (Bhalla et al. 2024, Table 1), layer ℓ's tuned lens is
encode z = W_U((I + A_ℓ)h + b_ℓ) (the final norm left out, as for :class:`UnembedLens`) and decode by
the pseudo-inverse of that affine map, h = (W_U(I + A_ℓ))⁺(z − W_U b_ℓ) (:meth:`TunedLens.lens`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from assay.artifact import load_artifact, save_artifact
from assay.config import ConfigError
from assay.lenses.logit_lens import kl_to_final

__all__ = ["TunedLensConfig", "TunedLens", "AffineUnembedLens", "fit_tuned_lens", "fit_tuned_lens_from_store", "save_tuned_lens",
           "load_tuned_lens"]


@dataclass(frozen=True, kw_only=True)
class TunedLensConfig:
    """Translators for ``len(sites)`` layers of width ``d_model`` and how to train them."""

    d_model: int
    """Residual width."""
    sites: tuple[str, ...]
    """The layer sites the translators belong to, in order."""
    steps: int = 250
    """Optimiser steps."""
    batch_tokens: int = 8192
    """Tokens (rows) per step."""
    lr_scale: float = 1.0
    """Learning rate = lr_scale · (1 − momentum)."""
    momentum: float = 0.9
    """Nesterov momentum β."""
    weight_decay: float = 1e-3
    """Weight decay (pulls translators towards the identity map)."""
    clip: float = 1.0
    """Gradient-norm clipping threshold."""
    seed: int = 0
    """Seed of the row sampling."""

    def __post_init__(self) -> None:
        if self.d_model < 1 or not self.sites:
            raise ConfigError("TunedLensConfig needs d_model >= 1 and at least one site")
        if self.steps < 1 or self.batch_tokens < 1:
            raise ConfigError("steps and batch_tokens must be >= 1")
        if not 0 <= self.momentum < 1 or self.lr_scale <= 0:
            raise ConfigError("momentum must lie in [0, 1) and lr_scale be positive")


class TunedLens(nn.Module):
    """Per-layer affine translators h ↦ h + A_ℓ h + b_ℓ (zero-initialised)."""

    def __init__(self, cfg: TunedLensConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, d = len(cfg.sites), cfg.d_model
        self.A = nn.Parameter(torch.zeros(n, d, d))
        self.b = nn.Parameter(torch.zeros(n, d))

    def forward(self, h: Tensor, layer: int) -> Tensor:
        """Translate activations ``[..., d]`` of layer index ``layer`` (position in ``cfg.sites``)."""
        if h.shape[-1] != self.cfg.d_model:
            raise ValueError(f"tuned lens of width {self.cfg.d_model} got activations of shape {tuple(h.shape)}")
        A, b = self.A[layer].to(h.dtype), self.b[layer].to(h.dtype)
        return h + h @ A.T + b

    def lens(self, layer: int, W_U: Tensor) -> AffineUnembedLens:
        """Layer ``layer``'s translator followed by the unembedding ``W_U [vocab, d]`` as a Lens."""
        if not -len(self.cfg.sites) <= layer < len(self.cfg.sites):
            raise IndexError(f"layer {layer} out of range for a tuned lens over {len(self.cfg.sites)} sites")
        d = self.cfg.d_model
        with torch.no_grad():
            return AffineUnembedLens(W_U, torch.eye(d) + self.A[layer].detach(), self.b[layer].detach())


class AffineUnembedLens:
    """Lens over the vocabulary through an affine map: encode z = W_U(M h + b), decode h = (W_U M)⁺(z − W_U b)."""

    def __init__(self, W_U: Tensor, M: Tensor, b: Tensor) -> None:
        if W_U.dim() != 2 or M.shape != (W_U.shape[1], W_U.shape[1]) or b.shape != (W_U.shape[1],):
            raise ValueError(f"need W_U [vocab, d], M [d, d], b [d]; got {tuple(W_U.shape)}, {tuple(M.shape)}, "
                             f"{tuple(b.shape)}")
        W = W_U.detach().double()
        self.map = (W @ M.double()).to(W_U.dtype)                    # [V, d]
        self.offset = (W @ b.double()).to(W_U.dtype)                 # [V]
        self.pinv = torch.linalg.pinv(W @ M.double()).T.to(W_U.dtype)  # [V, d]: h = (z − offset) @ pinv

    def encode(self, h: Tensor) -> Tensor:
        if h.shape[-1] != self.map.shape[1]:
            raise ValueError(f"activations of width {h.shape[-1]} do not match the lens's width {self.map.shape[1]}")
        return h @ self.map.T.to(h.dtype) + self.offset.to(h.dtype)

    def decode(self, z: Tensor) -> Tensor:
        return (z - self.offset.to(z.dtype)) @ self.pinv.to(z.dtype)


Batch = Callable[[torch.Generator], tuple[list[Tensor], Tensor]]


def _train(lens: TunedLens, get_batch: Batch, norm: nn.Module, unembed: nn.Module) -> list[float]:
    frozen = list(norm.parameters()) + list(unembed.parameters())
    flags = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    try:
        return _loop(lens, get_batch, norm, unembed)
    finally:
        for p, f in zip(frozen, flags):
            p.requires_grad_(f)


def _loop(lens: TunedLens, get_batch: Batch, norm: nn.Module, unembed: nn.Module) -> list[float]:
    cfg = lens.cfg
    opt = torch.optim.SGD(lens.parameters(), lr=cfg.lr_scale * (1 - cfg.momentum), momentum=cfg.momentum,
                          nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / cfg.steps)
    g = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(cfg.steps):
        hs, final = get_batch(g)
        opt.zero_grad()
        total = 0.0
        for i, h in enumerate(hs):  # layer by layer to bound memory
            loss = kl_to_final(final, unembed(norm(lens(h, i)))).mean()
            loss.backward()
            total += float(loss.detach())
        nn.utils.clip_grad_norm_(lens.parameters(), cfg.clip)
        opt.step()
        sched.step()
        losses.append(total)
    return losses


def _check_rows(x: Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf")


def fit_tuned_lens(
    layers: Sequence[Tensor], final_logits: Tensor, norm: nn.Module, unembed: nn.Module, cfg: TunedLensConfig
) -> tuple[TunedLens, list[float]]:
    """Train translators on captured activations ``layers[i] [N, d]`` (one per ``cfg.sites``) against
    the model's logits ``[N, V]`` at the same rows. Returns the lens and the per-step summed KL."""
    if len(layers) != len(cfg.sites):
        raise ValueError(f"{len(layers)} activation tensors for {len(cfg.sites)} sites")
    N = final_logits.shape[0]
    for s, h in zip(cfg.sites, layers):
        if h.shape != (N, cfg.d_model):
            raise ValueError(f"activations of {s!r} have shape {tuple(h.shape)}, expected {(N, cfg.d_model)}")
        _check_rows(h, f"activations of {s!r}")
    _check_rows(final_logits, "final logits")
    lens = TunedLens(cfg).to(final_logits.device)

    def get_batch(g: torch.Generator) -> tuple[list[Tensor], Tensor]:
        idx = torch.randint(0, N, (min(cfg.batch_tokens, N),), generator=g)
        return [h[idx] for h in layers], final_logits[idx]

    return lens, _train(lens, get_batch, norm, unembed)


def fit_tuned_lens_from_store(store: Any, final_site: str, norm: nn.Module, unembed: nn.Module,
                              cfg: TunedLensConfig) -> tuple[TunedLens, list[float]]:
    """Train on an activation store: each step reads the same random rows at every site of
    ``cfg.sites`` and at ``final_site`` (the last residual, whose norm+unembedding are the model's logits)."""
    missing = [s for s in (*cfg.sites, final_site) if s not in store.sites]
    if missing:
        raise ValueError(f"the store has no site(s) {missing}; it holds {list(store.sites)}")
    lens = TunedLens(cfg)

    def get_batch(g: torch.Generator) -> tuple[list[Tensor], Tensor]:
        rows = torch.sort(torch.randint(0, store.n_rows, (min(cfg.batch_tokens, store.n_rows),), generator=g)).values
        hs = [store.read_rows(s, rows) for s in cfg.sites]
        for s, h in zip(cfg.sites, hs):
            _check_rows(h, f"stored activations of {s!r}")
        with torch.no_grad():
            final = unembed(norm(store.read_rows(final_site, rows)))
        return hs, final

    return lens, _train(lens, get_batch, norm, unembed)


def save_tuned_lens(path: str | Path, lens: TunedLens, *, meta: dict[str, Any] | None = None) -> Path:
    """Save the translators as an artifact (kind ``"lens.tuned"``)."""
    return save_artifact(path, kind="lens.tuned", config=lens.cfg,
                         tensors={"A": lens.A.detach(), "b": lens.b.detach()}, meta=meta or {})


def load_tuned_lens(path: str | Path) -> TunedLens:
    """Load a tuned lens artifact, validating its tensor shapes against its config."""
    from assay.artifact import ArtifactError

    try:
        art = load_artifact(path, kind="lens.tuned", config_cls=TunedLensConfig)
    except ConfigError as e:
        raise ArtifactError(f"{path}: invalid tuned-lens config: {e}") from None
    cfg: TunedLensConfig = art.config
    n, d = len(cfg.sites), cfg.d_model
    w = art.tensors.get("weights", {})
    for name, shape in (("A", (n, d, d)), ("b", (n, d))):
        if name not in w or tuple(w[name].shape) != shape:
            got = tuple(w[name].shape) if name in w else "missing"
            raise ArtifactError(f"{path}: tensor {name!r} is {got}, expected {shape}")
    lens = TunedLens(cfg)
    with torch.no_grad():
        lens.A.copy_(w["A"])
        lens.b.copy_(w["b"])
    return lens
