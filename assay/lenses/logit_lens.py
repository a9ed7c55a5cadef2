"""The logit lens: decode an intermediate residual with the model's own final norm and unembedding.

nostalgebraist 2020, "interpreting GPT: the logit lens" (LessWrong):

    logits_ℓ = W_U · norm_f(h_ℓ) (+ b_U)

Per layer we report the KL divergence to the model's final distribution, KL(p_final ‖ p_ℓ), and the
top-1 agreement with it. :class:`UnembedLens` is the encoder–decoder view of Bhalla et al. 2024
(Table 1): encode z = x W_Uᵀ, decode by the pseudo-inverse of W_Uᵀ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assay.hooks import capture, resolve

__all__ = ["lm_head_parts", "LogitLensResult", "logit_lens", "kl_to_final", "UnembedLens"]

_NORMS = ("model.norm", "ln_f", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.final_layernorm")
_HEADS = ("lm_head", "unembed", "embed_out")


def lm_head_parts(model: nn.Module, *, norm: str | None = None, unembed: str | None = None) -> tuple[nn.Module, nn.Module]:
    """The final norm and unembedding modules of a language model (given by site name, or found
    among the usual names: ``model.norm``/``ln_f`` and ``lm_head``/``unembed``)."""
    def find(names: Sequence[str], what: str, given: str | None) -> nn.Module:
        if given is not None:
            return resolve(model, given)
        for n in names:
            try:
                return model.get_submodule(n)
            except AttributeError:
                continue
        raise ValueError(f"cannot find the model's {what} (tried {', '.join(names)}); pass its site name explicitly")

    return find(_NORMS, "final norm", norm), find(_HEADS, "unembedding", unembed)


def kl_to_final(final_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(p_final ‖ p) per position, in nats ``[...]``."""
    lp_final = F.log_softmax(final_logits.float(), -1)
    return (lp_final.exp() * (lp_final - F.log_softmax(logits.float(), -1))).sum(-1)


class LogitLensResult(NamedTuple):
    """Per-layer read-outs of a logit (or tuned) lens on one batch."""

    sites: tuple[str, ...]
    """The layer sites, in order."""
    logits: Tensor
    """Lens logits ``[n_sites, B, T, V]``."""
    final_logits: Tensor
    """The model's own logits ``[B, T, V]``."""
    kl: Tensor
    """KL(p_final ‖ p_lens) per site and position ``[n_sites, B, T]`` (nats)."""
    top1_agreement: Tensor
    """Fraction of positions whose lens argmax equals the model's, per site ``[n_sites]``."""


def logit_lens(
    model: nn.Module,
    sites: Sequence[str],
    *args,
    norm: str | None = None,
    unembed: str | None = None,
    translators: nn.Module | None = None,
    **kwargs,
) -> LogitLensResult:
    """Run ``model(*args, **kwargs)`` once, capturing every site, and decode each with the final norm
    and unembedding (through ``translators(h, i)`` first when given — the tuned lens)."""
    sites = list(sites)
    if not sites:
        raise ValueError("logit_lens needs at least one site")
    norm_m, head = lm_head_parts(model, norm=norm, unembed=unembed)
    with torch.no_grad(), capture(model, sites) as cap:
        out = model(*args, **kwargs)
    final = out.logits if hasattr(out, "logits") else out
    if not isinstance(final, Tensor):
        raise TypeError("the model's output has no logits tensor")
    layers = []
    with torch.no_grad():
        for i, s in enumerate(sites):
            h = cap[s]
            if not torch.isfinite(h).all():
                raise ValueError(f"non-finite activations (NaN/inf) at site {s!r}")
            if translators is not None:
                h = translators(h, i)
            layers.append(head(norm_m(h)).float())
    logits = torch.stack(layers)
    kl = kl_to_final(final, logits)
    agree = (logits.argmax(-1) == final.argmax(-1)).float().flatten(1).mean(1)
    return LogitLensResult(tuple(sites), logits, final.float(), kl, agree)


class UnembedLens:
    """Lens over the vocabulary: encode z = h W_Uᵀ ``[..., V]``, decode h = z (W_Uᵀ)⁺."""

    def __init__(self, W_U: Tensor) -> None:
        if W_U.dim() != 2:
            raise ValueError(f"W_U must be [vocab, d_model], got shape {tuple(W_U.shape)}")
        self.W_U = W_U.detach()
        self.pinv = torch.linalg.pinv(self.W_U.double().T).to(W_U.dtype)  # [V, d]

    def encode(self, h: Tensor) -> Tensor:
        if h.shape[-1] != self.W_U.shape[1]:
            raise ValueError(f"activations of width {h.shape[-1]} do not match W_U of width {self.W_U.shape[1]}")
        return h @ self.W_U.T.to(h.dtype)

    def decode(self, z: Tensor) -> Tensor:
        return z @ self.pinv.to(z.dtype)
