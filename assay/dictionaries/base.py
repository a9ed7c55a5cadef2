"""The shared base of every sparse autoencoder in assay: config, typed outputs, parameters and the
pure helpers all variants use (decoder-norm constraint, geometric median, width-scaled lr).

Notation (docs/glossary.md): x ∈ ℝ^{B×d}, n latents, W_enc ∈ ℝ^{d×n}, W_dec ∈ ℝ^{n×d} (rows
are atoms), b_enc ∈ ℝ^n, b_dec ∈ ℝ^d;

    pre = (x − b_dec) W_enc + b_enc,     x̂ = z W_dec + b_dec,
    L_rec = mean_b ‖x_b − x̂_b‖²  (sum over d, mean over tokens — never scales with batch size).

Unit-norm atoms with the gradient's parallel component removed follow Bricken et al. 2023,
"Towards Monosemanticity"; the geometric-median b_dec init and the lr = 2e-4/√(n/2¹⁴) width
scaling follow Gao et al. 2024, "Scaling and evaluating sparse autoencoders".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assay.config import ConfigError, check_int_fields

__all__ = [
    "SAEConfig",
    "Codes",
    "SAEOutput",
    "SAE",
    "geometric_median",
    "unit_rows",
    "remove_parallel_component",
    "topk_lr",
    "rec_loss",
    "detach_codes",
]


@dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """Fields every sparse autoencoder has. Reconstruction loss: sum over d, mean over tokens."""

    d_in: int
    """Input (activation) dimension d."""
    d_sae: int
    """Number of latents n (dictionary atoms)."""
    seed: int = 0
    """Seed of the weight initialisation (a private torch.Generator; global RNG untouched)."""

    def __post_init__(self) -> None:
        check_int_fields(self)  # every int field of every architecture's config (k, d_sae, aux_k, ...)
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ConfigError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")


class Codes(NamedTuple):
    """Sparse codes as ``(values, indices)`` pairs per row; dense codes use every index."""

    values: Tensor
    """Code values ``[B, m]`` (m = k for TopK, n for dense variants); zeros mean "not firing"."""
    indices: Tensor
    """Latent index of each value ``[B, m]`` (long)."""
    n: int
    """Number of latents."""
    is_dense: bool
    """True when ``values`` already is the dense ``[B, n]`` code matrix (indices = arange(n))."""

    @staticmethod
    def from_dense(z: Tensor) -> Codes:
        n = z.shape[-1]
        idx = torch.arange(n, device=z.device).expand(z.shape)
        return Codes(z, idx, n, True)

    def dense(self) -> Tensor:
        """The dense ``[B, n]`` code matrix."""
        if self.is_dense:
            return self.values
        out = torch.zeros(*self.values.shape[:-1], self.n, dtype=self.values.dtype, device=self.values.device)
        return out.scatter_add(-1, self.indices, self.values)

    def l0(self) -> Tensor:
        """Number of firing latents per row ``[B]``."""
        return (self.values != 0).sum(-1)

    def fired(self) -> Tensor:
        """How many rows each latent fired on ``[n]`` (long)."""
        on = self.values != 0
        return torch.bincount(self.indices[on], minlength=self.n)


class SAEOutput(NamedTuple):
    """What ``SAE.forward`` returns: reconstruction, codes and the loss terms."""

    recon: Tensor
    """Reconstruction x̂ ``[B, d]`` (with gradient)."""
    codes: Codes
    """The codes z (detached)."""
    loss: Tensor
    """Total training loss (scalar, with gradient)."""
    rec_loss: Tensor
    """mean_b ‖x_b − x̂_b‖² (scalar)."""
    sparsity_loss: Tensor
    """The sparsity term, already weighted (0 for TopK-family variants)."""
    aux_loss: Tensor
    """The auxiliary (dead-latent) term, already weighted (0 when unused)."""


def detach_codes(codes: Codes) -> Codes:
    """The same codes without gradient."""
    return Codes(codes.values.detach(), codes.indices, codes.n, codes.is_dense)


def rec_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """mean_b ‖x_b − x̂_b‖²: sum over features, mean over tokens (one fused ``mse_loss`` sum, whose backward is
    one pass too, divided by the number of tokens)."""
    return F.mse_loss(x_hat, x, reduction="sum") / (x.numel() // x.shape[-1])


def unit_rows(w: Tensor, eps: float = 1e-8) -> Tensor:
    """Rows of ``w`` divided by their norm (+ eps)."""
    return w / (w.norm(dim=-1, keepdim=True) + eps)


def remove_parallel_component(grad: Tensor, w: Tensor) -> Tensor:
    """g_i − (g_i·ŵ_i) ŵ_i per row: the part of the gradient that would change the atom's norm."""
    w_hat = unit_rows(w)
    return grad - (grad * w_hat).sum(-1, keepdim=True) * w_hat


def geometric_median(points: Tensor, *, max_iter: int = 100, tol: float = 1e-5) -> Tensor:
    """Weiszfeld's geometric median of ``points [N, d]``; starts at the mean, stops when ‖Δg‖ < tol.

    Check: (0,0),(1,0),(0,1),(10,10) → (0.5, 0.5).
    """
    p = points.double()
    g = p.mean(0)
    for _ in range(max_iter):
        w = 1.0 / ((p - g).norm(dim=-1) + 1e-12)
        w = w / w.sum()
        new = (w[:, None] * p).sum(0)
        done = (new - g).norm() < tol
        g = new
        if done:
            break
    return g.to(points.dtype)


def topk_lr(d_sae: int) -> float:
    """Width-scaled TopK learning rate 2e-4 / √(n / 2¹⁴) (Gao et al. 2024, Fig. 3)."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


class SAE(nn.Module):
    """Base of all sparse autoencoders: parameters W_enc [d, n], b_enc [n], W_dec [n, d], b_dec [d].

    Subclasses implement :meth:`encode_codes` (and may override :meth:`decode_codes` and
    :meth:`loss_terms`). ``encode``/``decode`` make every SAE a :class:`assay.lens.Lens`.
    W_enc is stored transposed in memory (an ``[n, d]`` buffer viewed as ``[d, n]``) so the sparse
    encoder backward writes whole rows.
    """

    architecture: ClassVar[str] = "base"
    config_cls: ClassVar[type] = SAEConfig
    constrained_decoder: ClassVar[bool] = True
    """Unit-norm atoms, renormalised after each step (§1.2)."""
    median_init: ClassVar[bool] = True
    """Initialise b_dec at the geometric median of the first batch."""
    default_lr: ClassVar[float | None] = None
    """Default learning rate (None: the width-scaled TopK rule)."""
    reads_sequences: ClassVar[bool] = False
    """Trains on whole windows ``[B, T, d]`` with a padding mask (the temporal SAE) instead of token rows."""

    def __init__(self, cfg: SAEConfig, *, atom_norm: float = 1.0) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        d, n = cfg.d_in, cfg.d_sae
        g = torch.Generator().manual_seed(cfg.seed)
        w_dec = unit_rows(torch.randn(n, d, generator=g)) * atom_norm
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.clone().t())  # [d, n] view of an [n, d] buffer (tied init)
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(torch.zeros(d))

    # ----- shape checks -------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        """Dimension of the reconstruction (d_in for an SAE; the output site's for a transcoder)."""
        return self.cfg.d_in

    def _flat(self, x: Tensor, dim: int, what: str) -> Tensor:
        if x.shape[-1] != dim:
            raise ValueError(
                f"{type(self).__name__} expects {what} with last dimension {dim}, got shape {tuple(x.shape)}; "
                f"check that the SAE was trained on this site (d_in={self.d_in}, d_sae={self.d_sae})"
            )
        return x.reshape(-1, dim)

    # ----- the interface ------------------------------------------------------------------------
    def encode_codes(self, x: Tensor) -> Codes:
        """Codes of ``x [B, d]`` at inference (batch-independent)."""
        raise NotImplementedError

    def decode_codes(self, codes: Codes) -> Tensor:
        """x̂ = z W_dec + b_dec from codes (sparse rows when the codes are sparse)."""
        if codes.is_dense:
            return codes.values @ self.W_dec + self.b_dec
        from assay.dictionaries.sparse import sparse_decode

        return sparse_decode(codes.values, codes.indices, self.W_dec) + self.b_dec

    def encode(self, h: Tensor) -> Tensor:
        """Lens view: activations ``[..., d]`` → dense codes ``[..., n]``."""
        codes = self.encode_codes(self._flat(h, self.d_in, "activations")).dense()
        return codes.reshape(*h.shape[:-1], self.d_sae)

    def decode(self, z: Tensor) -> Tensor:
        """Lens view: dense codes ``[..., n]`` → activations ``[..., d_out]``."""
        flat = self._flat(z, self.d_sae, "codes")
        return self.decode_codes(Codes.from_dense(flat)).reshape(*z.shape[:-1], self.d_out)

    def reconstruct(self, x: Tensor, codes: Codes) -> Tensor:
        """The reconstruction of the batch ``x [B, d_in]`` from its codes: ``decode_codes(codes)`` (a
        skip-transcoder adds its affine skip term in x)."""
        return self.decode_codes(codes)

    def train_codes(self, x: Tensor) -> Codes:
        """Codes used in training (BatchTopK differs from inference here); default: inference codes."""
        return self.encode_codes(x)

    def loss_terms(self, x: Tensor, codes: Codes, x_hat: Tensor, dead: Tensor | None, *,
                   target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(sparsity_loss, aux_loss)`` for this batch, both weighted; zeros by default. ``target``: what
        ``x_hat`` reconstructs (None: x itself)."""
        zero = x_hat.new_zeros(())
        return zero, zero

    def forward(self, x: Tensor, *, target: Tensor | None = None, dead: Tensor | None = None,
                sparsity_scale: float = 1.0) -> SAEOutput:
        """Training forward on ``x [B, d_in]``. ``target``: what to reconstruct ``[B, d_out]`` (None: x, an
        SAE; a transcoder's output site); ``dead``: bool mask ``[n]`` of dead latents (for AuxK);
        ``sparsity_scale``: multiplier of the sparsity term (the trainer's sparsity warmup)."""
        x = self._flat(x, self.d_in, "activations")
        y = x if target is None else self._flat(target, self.d_out, "targets")
        codes = self.train_codes(x)
        x_hat = self.reconstruct(x, codes)
        rec = rec_loss(y, x_hat)
        sparsity, aux = self.loss_terms(x, codes, x_hat, dead, target=y)
        sparsity = sparsity * sparsity_scale
        return SAEOutput(x_hat, detach_codes(codes), rec + sparsity + aux, rec.detach(), sparsity.detach(),
                         aux.detach())

    # ----- training hooks -----------------------------------------------------------------------
    @torch.no_grad()
    def before_step(self) -> None:
        """Called after backward, before the optimizer step: remove the decoder gradient's parallel part."""
        if self.constrained_decoder and self.W_dec.grad is not None:
            # in place, as remove_parallel_component: g ← g − (g·w) w / (‖w‖ + eps)²  (no n×d temporaries)
            g, w = self.W_dec.grad, self.W_dec
            coef = torch.linalg.vecdot(g, w) / (w.norm(dim=-1) + 1e-8).square()
            g.addcmul_(w, coef.unsqueeze(-1), value=-1.0)

    @torch.no_grad()
    def after_step(self) -> None:
        """Called after the optimizer step: renormalise atoms to unit norm (in place, as ``unit_rows``)."""
        if self.constrained_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).add_(1e-8))

    @torch.no_grad()
    def observe(self, codes: Codes, step: int) -> None:
        """Update running statistics (e.g. inference thresholds) from a training batch's codes."""

    @torch.no_grad()
    def init_from_batch(self, x: Tensor, target: Tensor | None = None) -> None:
        """Data-dependent initialisation from the first (scaled) batch: b_dec at the geometric median of
        what is reconstructed (``target``, or x)."""
        if self.median_init:
            y = x if target is None else target
            self.b_dec.copy_(geometric_median(y.float()).to(self.b_dec.dtype))

    @torch.no_grad()
    def fold_input_scale(self, s: float) -> None:
        """Fold an input scale s (trained on s·x) into the weights so the SAE takes raw x: codes on x
        equal the unfolded codes on s·x, and x̂_raw = x̂/s. W_enc ← s·W_enc, W_dec ← W_dec/s, b_dec ← b_dec/s."""
        self.W_enc.mul_(s)
        self.W_dec.div_(s)
        self.b_dec.div_(s)

    @staticmethod
    def upgrade_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """A saved state dict in this architecture's current tensor names (older layouts are converted by the
        architectures whose layout changed); by default unchanged."""
        return sd

    def extra_config(self) -> dict[str, Any]:
        return {}
