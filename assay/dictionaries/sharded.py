"""Latent-sharded TopK SAE: for dictionaries too wide for one device, each rank of a ``torch.distributed``
group holds a contiguous slice of the latents (encoder columns, decoder rows) and sees the whole batch.

The TopK SAE is Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (arXiv 2406.04093); the
split of a layer's columns over devices is Megatron-LM's tensor parallelism (Shoeybi et al. 2019,
arXiv 1909.08053). With W ranks, rank r holds latents [r·n/W, (r+1)·n/W). Per batch x ``[B, d]`` (the same
on every rank):

    c = x − b_dec                                   (b_dec replicated)
    local candidates:  top-k of ReLU(c W_enc^r + b_enc^r)   → k values + global indices per row
    global codes:      top-k of the union of the W·k candidates   (one all_gather; the global top-k of
                       a row lies in the union, since each of its entries is in its own shard's top-k)
    x̂ = Σ_r (Σ_{selected j on rank r} z_j W_dec[j]) + b_dec       (one all_reduce of the local decodes)
    L = mean_b ‖x − x̂‖²

Every rank computes the same loss, so the gradient of the local parameters needs no collective; the
replicated b_dec's gradient is summed over ranks (its decoder term is counted once). Gradient clipping
uses the global norm. The per-row decoder-gradient projection, Adam and the atom renormalisation act per
latent, so they run locally. The result equals the unsharded SAE's forward and optimizer step to float
tolerance (tests/test_sae_sharded.py).

Scope: the reconstruction loss only (no AuxK), plain TopK SAEs (``architecture="topk"``), and no input
normalisation or data-dependent initialisation: build and initialise the full SAE, then shard it with
:meth:`ShardedTopKSAE.from_full`; :meth:`ShardedTopKSAE.gather` reassembles it.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor, nn

from assay.dictionaries.base import Codes, SAEOutput, rec_loss
from assay.dictionaries.sparse import sparse_decode, topk_encode
from assay.dictionaries.topk import TopKConfig, TopKSAE

__all__ = ["ShardedTopKSAE", "sharded_train_step"]


def _require_group() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("a latent-sharded SAE needs an initialised torch.distributed group: start the "
                           "processes with torchrun and call torch.distributed.init_process_group first")


def _all_gather(t: Tensor) -> list[Tensor]:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return parts


class ShardedTopKSAE(nn.Module):
    """This rank's slice of the TopK SAE configured by ``full_cfg``; ``shard`` is a TopK SAE over its
    ``d_sae / world`` latents (its ``b_dec`` is the replicated decoder bias). Build with :meth:`from_full`."""

    def __init__(self, shard: TopKSAE, *, full_cfg: TopKConfig) -> None:
        super().__init__()
        _require_group()
        self.shard = shard
        self.full_cfg = full_cfg
        self.d_sae, self.k = full_cfg.d_sae, full_cfg.k
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.lo = self.rank * shard.d_sae
        """The first global latent index this rank holds."""

    @classmethod
    def from_full(cls, sae: TopKSAE) -> ShardedTopKSAE:
        """This rank's slice of the full TopK SAE ``sae`` (every rank passes the same ``sae``)."""
        _require_group()
        if type(sae) is not TopKSAE:
            raise TypeError(f"latent sharding supports the plain TopK SAE ('topk'); got {type(sae).__name__}. "
                            "Train other architectures data-parallel (assay.dictionaries.trainer)")
        world, rank = dist.get_world_size(), dist.get_rank()
        n = sae.d_sae
        if n % world:
            raise ValueError(f"d_sae={n} latents do not split evenly over {world} ranks; use a d_sae divisible "
                             "by the world size")
        n_local = n // world
        shard = TopKSAE(replace(sae.cfg, d_sae=n_local, k=min(sae.cfg.k, n_local), aux_coef=0.0))
        shard.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)
        lo, hi = rank * n_local, (rank + 1) * n_local
        with torch.no_grad():
            shard.W_enc.copy_(sae.W_enc[:, lo:hi])
            shard.b_enc.copy_(sae.b_enc[lo:hi])
            shard.W_dec.copy_(sae.W_dec[lo:hi])
            shard.b_dec.copy_(sae.b_dec)
        return cls(shard, full_cfg=sae.cfg)

    def forward(self, x: Tensor) -> SAEOutput:
        """Training forward on the batch ``x [B, d]`` (the same on every rank): global codes (detached,
        with global indices), the full reconstruction and the reconstruction loss."""
        s = self.shard
        x = s._flat(x, s.d_in, "activations")
        centred = x - s.b_dec
        with torch.no_grad():
            values, indices = topk_encode(centred, s.W_enc, s.b_enc, s.cfg.k)
            cand_v = torch.cat(_all_gather(values), dim=-1)
            cand_i = torch.cat(_all_gather(indices + self.lo), dim=-1)
            top_v, pos = cand_v.topk(self.k, dim=-1)
            idx = cand_i.gather(-1, pos)
        owned = (idx >= self.lo) & (idx < self.lo + s.d_sae)
        local = torch.where(owned, idx - self.lo, 0)
        # the owned codes again, with gradient (O(B·k·d)): ReLU(c·W_enc[:, j] + b_enc[j])
        z = ((centred.unsqueeze(1) * s.W_enc.t()[local]).sum(-1) + s.b_enc[local]).relu() * owned
        part = sparse_decode(z, local, s.W_dec)
        total = part.detach().clone()
        dist.all_reduce(total)
        # b_dec's decoder term: full value, 1/W of the gradient on each rank (summed in sharded_train_step)
        b_dec = s.b_dec.detach() + (s.b_dec - s.b_dec.detach()) / self.world
        x_hat = part + (total - part.detach()) + b_dec
        rec = rec_loss(x, x_hat)
        zero = rec.new_zeros(())
        return SAEOutput(x_hat, Codes(top_v, idx, self.d_sae, False), rec, rec.detach(), zero, zero)

    @torch.no_grad()
    def gather(self) -> TopKSAE:
        """The full TopK SAE, reassembled on every rank (a collective: call it on all ranks)."""
        s = self.shard
        full = TopKSAE(self.full_cfg)
        full.to(device=s.W_dec.device, dtype=s.W_dec.dtype)
        full.W_enc.copy_(torch.cat(_all_gather(s.W_enc.t()), dim=0).t())
        full.b_enc.copy_(torch.cat(_all_gather(s.b_enc)))
        full.W_dec.copy_(torch.cat(_all_gather(s.W_dec)))
        full.b_dec.copy_(s.b_dec)
        return full


def sharded_train_step(model: ShardedTopKSAE, opt: torch.optim.Optimizer, x: Tensor, *,
                       grad_clip: float | None = 1.0) -> Tensor:
    """One optimizer step of the latent-sharded SAE on ``x`` (the same batch on every rank), in the order of
    :class:`assay.dictionaries.trainer.SAETrainer`: backward, decoder-gradient projection, clip to the global
    gradient norm, ``opt`` step, atom renormalisation. ``opt`` holds this rank's ``model.parameters()``.
    Returns the loss (detached)."""
    s = model.shard
    out = model(x)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    dist.all_reduce(s.b_dec.grad)
    s.before_step()
    if grad_clip is not None:
        sharded = [p.grad for p in (s.W_enc, s.b_enc, s.W_dec)]
        sq = torch.stack([g.float().pow(2).sum() for g in sharded]).sum()
        dist.all_reduce(sq)
        norm = (sq + s.b_dec.grad.float().pow(2).sum()).sqrt()
        coef = (grad_clip / (norm + 1e-6)).clamp(max=1.0)
        for g in [*sharded, s.b_dec.grad]:
            g.mul_(coef.to(g.dtype))
    opt.step()
    s.after_step()
    return out.loss.detach()
