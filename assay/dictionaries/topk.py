"""TopK sparse autoencoder with the AuxK dead-latent loss.

Gao, Dupré la Tour, Tillman, Goh, Troll, Radford, Sutskever, Leike & Wu 2024, "Scaling and
evaluating sparse autoencoders" (arXiv 2406.04093); repos openai/sparse_autoencoder,
EleutherAI/sparsify, saprmarks/dictionary_learning (``TopKTrainer``).

    z = TopK_k(ReLU((x − b_dec) W_enc + b_enc)),   x̂ = z W_dec + b_dec,
    L = mean_b‖x − x̂‖² + α · L_aux,
    L_aux = mean_b‖e − ê‖² / mean_b‖e − ē‖² · mean_b‖x − x̄‖²,
    e = x − x̂ (detached),  ê = TopK_{k_aux}(ReLU(pre_dead)) W_dec,dead

The last factor (the batch variance of what is reconstructed, detached) is assay's: dictionary_learning's AuxK stops at the
ratio, which makes its weight against the reconstruction term depend on the input scale (see
:func:`auxk_loss`).

Unit-norm atoms, geometric-median b_dec, lr 2e-4/√(n/2¹⁴).
With ``sparse=True`` (default) encoding and decoding use :mod:`assay.dictionaries.sparse` (backward
touches only the k selected latents); ``sparse=False`` is the eager dense reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from assay.config import ConfigError
from assay.dictionaries.base import SAE, Codes, SAEConfig
from assay.dictionaries.sparse import topk_encode, topk_encode_reference

__all__ = ["TopKConfig", "TopKSAE", "auxk_loss", "auxk_from_pre", "batch_variances", "topk_codes"]


@dataclass(frozen=True, kw_only=True)
class TopKConfig(SAEConfig):
    """A TopK SAE (Gao et al. 2024). Reconstruction loss: sum over d, mean over tokens."""

    k: int = 32
    """Active latents per token."""
    aux_k: int | None = None
    """Latents used by the AuxK loss (None: d_in // 2, as dictionary_learning)."""
    aux_coef: float = 1 / 32
    """Weight α of the AuxK loss (0 disables it)."""
    sparse: bool = True
    """Use the sparse encoder/decoder kernels (False: the eager dense reference path)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.k <= self.d_sae:
            raise ConfigError(f"k must be in 1..d_sae={self.d_sae}, got k={self.k}; lower k or widen the SAE")
        if self.aux_k is not None and self.aux_k <= 0:
            raise ConfigError(f"aux_k must be positive or None, got {self.aux_k}")
        if self.aux_coef < 0:
            raise ConfigError(f"aux_coef must be >= 0, got {self.aux_coef}")


def topk_codes(pre: Tensor, k: int) -> Tensor:
    """Dense TopK(ReLU(pre)) per row. Check: [[1,−2,3,−4],[−5,6,−7,8]], k=2 → [[1,0,3,0],[0,6,0,8]]."""
    values, indices = pre.relu().topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def auxk_loss(
    centred: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, residual: Tensor, dead: Tensor, k_aux: int,
    *, target: Tensor,
) -> Tensor:
    """AuxK loss: reconstruct the (detached) residual from the top ``k_aux`` dead latents.

    The normalised error mean_b‖e − ê‖² / mean_b‖e − ē‖² (Gao et al. 2024; dictionary_learning) times the
    batch variance of what is reconstructed, mean_b‖y − ȳ‖² (detached; y = x for an SAE, the output site
    for a transcoder), so that the loss is in the reconstruction term's units and α weighs it against the
    FVU, as in Gao et al., whose reconstruction loss is normalised too. Without that factor the total loss
    is not homogeneous in the input scale s: AuxK's weight relative to the reconstruction term goes as
    1/s², and input normalisation changed the training, not just its units (docs/dictionaries.md,
    "Defaults and the evidence for them").

    ``centred``: what the encoder reads (x − b_dec) ``[B, d]``; ``residual`` = y − ŷ; ``dead`` bool ``[n]``;
    returns 0 when no latent is dead. The two variances are over the global batch under data parallelism
    (:func:`batch_variances`).
    """
    n_dead = int(dead.sum())
    if n_dead == 0:
        return residual.new_zeros(())
    idx = dead.nonzero().squeeze(1)
    return auxk_from_pre(centred @ W_enc[:, idx] + b_enc[idx], W_dec[idx], residual, k_aux, target=target)


def auxk_from_pre(pre: Tensor, W_dec: Tensor, residual: Tensor, k_aux: int, *, target: Tensor) -> Tensor:
    """The AuxK loss of :func:`auxk_loss` from the dead latents' pre-activations ``pre [B, n_dead]`` and decoder
    rows ``W_dec [n_dead, d_out]`` (for encoders that are not one ``x W_enc``, e.g. a cross-layer transcoder's)."""
    k = min(k_aux, pre.shape[-1])
    values, pos = pre.relu().topk(k, dim=-1)
    e_hat = torch.zeros_like(pre).scatter(-1, pos, values) @ W_dec
    e = residual.detach()
    num = (e - e_hat).pow(2).sum(-1).mean()
    den, target_variance = batch_variances(e, target.detach())
    # a numerically exact fit leaves no residual to rebuild: no AuxK there (the ratio and its gradient would blow up;
    # torch.nan_to_num mended the value but not the gradient, and the weights became NaN)
    live = den > 1e-12 * target_variance
    return torch.where(live, num / torch.where(live, den, torch.ones_like(den)), torch.zeros_like(den)) * target_variance


def batch_variances(*rows: Tensor) -> Tensor:
    """mean_b‖r_b − r̄‖² of each ``[B, d_i]`` batch in ``rows`` (detached) → ``[len(rows)]``.

    Under ``torch.distributed`` (data-parallel training: each rank holds an equal slice of the global
    batch) the mean and the variance are over the global batch, with two all-reduces, so that a loss
    divided by them is the single-process loss and averaged gradients are the single-process gradients.
    """
    import torch.distributed as dist

    from assay.store.ranks import rank_and_world

    world = rank_and_world()[1]
    n = rows[0].shape[0] * world
    sums = torch.cat([r.sum(0) for r in rows])
    if world > 1:
        dist.all_reduce(sums)
    means = sums.split([r.shape[-1] for r in rows])
    sq = torch.stack([(r - m / n).pow(2).sum() for r, m in zip(rows, means)])
    if world > 1:
        dist.all_reduce(sq)
    return sq / n


class TopKSAE(SAE):
    """TopK SAE; ``encode``/``decode`` satisfy the Lens protocol."""

    architecture = "topk"
    config_cls = TopKConfig
    cfg: TopKConfig

    def encoder_shift(self) -> Tensor | None:
        """What the encoder subtracts from x: b_dec (a transcoder reads x itself: its b_dec is in output space)."""
        return self.b_dec

    def centre(self, x: Tensor) -> Tensor:
        """What the encoder reads: x − :meth:`encoder_shift`."""
        shift = self.encoder_shift()
        return x if shift is None else x - shift

    def encode_codes(self, x: Tensor) -> Codes:
        if self.cfg.sparse:  # the kernel subtracts the shift itself (a cheaper b_dec gradient)
            values, indices = topk_encode(x, self.W_enc, self.b_enc, self.cfg.k, shift=self.encoder_shift())
            return Codes(values, indices, self.d_sae, False)
        return Codes.from_dense(topk_encode_reference(self.centre(x), self.W_enc, self.b_enc, self.cfg.k))

    def loss_terms(self, x: Tensor, codes: Codes, x_hat: Tensor, dead: Tensor | None, *,
                   target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        zero = x_hat.new_zeros(())
        if dead is None or self.cfg.aux_coef == 0 or not bool(dead.any()):  # no dead latent: L_aux = 0, and
            return zero, zero  # the centred batch and the residual (two [B, d] passes) are not needed
        k_aux = self.cfg.aux_k or max(1, self.d_out // 2)
        y = x if target is None else target
        aux = auxk_loss(self.centre(x), self.W_enc, self.b_enc, self.W_dec, y - x_hat, dead, k_aux, target=y)
        return zero, self.cfg.aux_coef * aux
