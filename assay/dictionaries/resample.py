"""Dead-latent resampling: re-initialise latents that stopped firing on inputs the SAE reconstructs badly.

Bricken et al. 2023, "Towards Monosemanticity" (transformer-circuits.pub, "neuron resampling"), as in
saprmarks/dictionary_learning ``StandardTrainer.resample_neurons``; spec dictionaries.md §1.5. Every
``resample_every`` steps, for latents that did not fire during the last half of the period:

    sample rows b with probability ∝ ‖t_b − t̂_b‖   (t = x for an SAE, the output site y for a transcoder)
    W_dec,i ← t_b/‖t_b‖;   W_enc[:, i] ← 0.2 · (mean ‖W_enc[:, j]‖ over alive j) · x_b/‖x_b‖;   b_enc,i ← 0
    and zero those entries of Adam's first and second moments.

(dictionary_learning omits the 1/‖x‖ on the encoder column — a quirk, not a choice; the spec keeps it.)
Needs an explicit encoder (``W_enc``, ``b_enc``) and a decoder parameter ``W_dec``; MP, SpaDE and RA-SAE
(whose decoder is derived) and cross-layer transcoders (block encoder) are refused by :func:`can_resample`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from assay.dictionaries.base import SAE

__all__ = ["can_resample", "resample_dead"]


def can_resample(sae: SAE) -> bool:
    """Whether ``sae`` has the W_enc [d_in, n] / b_enc / W_dec parameters resampling rewrites (a cross-layer
    transcoder's block encoder [L, d, n] is not one)."""
    params = dict(sae.named_parameters())
    return all(isinstance(params.get(n), nn.Parameter) for n in ("W_enc", "b_enc", "W_dec")) and params["W_enc"].ndim == 2


@torch.no_grad()
def resample_dead(sae: SAE, dead: Tensor, x: Tensor, target: Tensor, recon: Tensor, opt: torch.optim.Optimizer,
                  *, generator: torch.Generator) -> int:
    """Resample the latents ``dead`` (bool ``[n]``) of ``sae`` from the batch ``x [B, d_in]`` whose
    reconstruction target is ``target [B, d_out]`` and reconstruction ``recon``; zero their Adam moments
    in ``opt``. Returns how many latents were resampled (0 when none is dead or the batch is perfect)."""
    idx = dead.nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0
    err = (target - recon).float().norm(dim=-1)
    if not bool(err.sum() > 0):
        return 0
    rows = torch.multinomial(err.cpu(), idx.numel(), replacement=idx.numel() > err.numel(), generator=generator)
    rows = rows.to(x.device)
    xs, ts = x[rows].float(), target[rows].float()
    alive = ~dead
    enc_norm = sae.W_enc.norm(dim=0)[alive].mean() if bool(alive.any()) else sae.W_enc.new_tensor(1.0)
    sae.W_dec[idx] = (ts / (ts.norm(dim=-1, keepdim=True) + 1e-8)).to(sae.W_dec.dtype)
    sae.W_enc[:, idx] = (0.2 * enc_norm * xs / (xs.norm(dim=-1, keepdim=True) + 1e-8)).t().to(sae.W_enc.dtype)
    sae.b_enc[idx] = 0
    for p, where in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
        state = opt.state.get(p, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in state:
                state[name][where] = 0
    return int(idx.numel())
