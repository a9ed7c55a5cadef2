"""Cross-layer transcoders (CLTs): one encoder per layer reading that layer's MLP input, decoders from each
layer's features to the MLP outputs of that layer and every later one.

Ameisen, Lindsey, Pearce, Gurnee, Turner, Chen et al. 2025, "Circuit Tracing: Revealing Computational Graphs
in Language Models" (transformer-circuits.pub/2025/attribution-graphs; circuit-tracer's CLT layout); the
``window`` (how many layers ahead a feature writes) is EleutherAI/clt-training's ``cross_layer``; sparsity by
TopK (Gao et al. 2024, per layer) or JumpReLU (Rajamanoharan et al. 2024). With L layers, per-layer input
width d_in/L, output width d_out/L and n = d_sae/L features per layer:

    a^l = σ(r^l W_enc^l + b_enc^l),      ŷ^ℓ = Σ_{l ≤ ℓ ≤ l + window} a^l W_dec^{l→ℓ} + b_dec^ℓ,
    L = mean_b Σ_ℓ ‖y^ℓ − ŷ^ℓ‖²  (+ the activation's sparsity / AuxK term)

Stored as a transcoder over the L layers concatenated (layer-major, as :mod:`assay.dictionaries.crosscoder`):
x = [r^0 … r^{L−1}], y = [y^0 … y^{L−1}], codes [B, L·n] (feature i of layer l at index l·n + i). W_enc is
[L, d, n] (block-diagonal: a layer's features read only their own layer, so they never depend on what they
write); W_dec [L·n, L·d] is block upper-triangular, its forbidden blocks held at exactly 0 (their gradients are
zeroed before every step, so Adam never moves them); a row is the feature's decoders to all the layers it
writes, concatenated, so unit-norm atoms constrain the norm over that concatenation (as the CLT sparsity
penalty's ‖W_dec,i^{l→·}‖). TopK keeps the k largest ReLU'd pre-activations *per layer* (a joint TopK over
layers would let a layer's features depend on later layers). ``window=0`` gives L per-layer transcoders in one
object. A skip term is not supported. Trained by the one trainer (:mod:`assay.dictionaries.trainer`) on
(x, y) pairs — one input scale and one output scale for all layers — from :func:`clt_batches` (every layer's
MLP input and output captured in one forward pass). The dense masked decoder spends L·n·L·d parameters: fine
for tiny models and SmolLM2 with n ≤ 1,024 per layer, wasteful beyond.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from assay.config import ConfigError
from assay.dictionaries.base import Codes, unit_rows
from assay.dictionaries.jumprelu import JumpReLUConfig
from assay.dictionaries.topk import TopKConfig, auxk_from_pre
from assay.dictionaries.transcoder import (
    JumpReLUTranscoder,
    TopKTranscoder,
    TranscoderFields,
    TranscoderMixin,
)

__all__ = ["CLTFields", "TopKCLTConfig", "JumpReLUCLTConfig", "CLTMixin", "TopKCLT", "JumpReLUCLT", "is_clt",
           "clt_batches"]


@dataclass(frozen=True, kw_only=True)
class CLTFields(TranscoderFields):
    """What a CLT adds to a transcoder config. ``d_in``, ``d_out`` and ``d_sae`` are the L layers' widths
    concatenated (each a multiple of ``n_layers``)."""

    n_layers: int
    """Number of layers L (MLP sites) the CLT spans."""
    window: int | None = None
    """Layers ahead a feature writes: layer l's features write MLP outputs l … l + window (None: every later
    layer, a full CLT; 0: only its own — L per-layer transcoders)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_layers < 1:
            raise ConfigError(f"n_layers must be >= 1, got {self.n_layers}")
        uneven = {k: getattr(self, k) for k in ("d_in", "d_out", "d_sae") if getattr(self, k) % self.n_layers}
        if uneven:
            raise ConfigError(f"{uneven} do not split into n_layers={self.n_layers} equal parts: give each the "
                              "per-layer width times n_layers")
        if self.skip:
            raise ConfigError("a CLT has no skip term here; build it with skip=False")
        if self.window is not None and self.window < 0:
            raise ConfigError(f"window must be >= 0 or None, got {self.window}")


@dataclass(frozen=True, kw_only=True)
class TopKCLTConfig(CLTFields, TopKConfig):
    """A TopK CLT: ``k`` active features per layer and token. Loss: sum over all layers' d_out, mean over tokens."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k > self.d_sae // self.n_layers:
            raise ConfigError(f"k={self.k} exceeds the {self.d_sae // self.n_layers} features per layer; lower k")


@dataclass(frozen=True, kw_only=True)
class JumpReLUCLTConfig(CLTFields, JumpReLUConfig):
    """A JumpReLU CLT (per-feature thresholds). Loss: sum over all layers' d_out, mean over tokens."""


def is_clt(sae) -> bool:  # noqa: ANN001 — any SAE
    """Whether ``sae`` is a cross-layer transcoder."""
    return isinstance(sae, CLTMixin)


class CLTMixin(TranscoderMixin):
    """What turns a transcoder into a CLT: a block-diagonal encoder and a block upper-triangular decoder."""

    cfg: TopKCLTConfig | JumpReLUCLTConfig

    def __init__(self, cfg) -> None:  # noqa: ANN001 — the concrete class's config
        super().__init__(cfg)
        L, d, n = cfg.n_layers, cfg.d_in // cfg.n_layers, self.n_per_layer
        g = torch.Generator().manual_seed(cfg.seed + 2)
        self.W_enc = nn.Parameter(unit_rows(torch.randn(L, n, d, generator=g)).transpose(1, 2).contiguous())
        with torch.no_grad():
            self.mask_decoder(self.W_dec)
            if cfg.unit_decoder:
                self.W_dec.copy_(unit_rows(self.W_dec))

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def n_per_layer(self) -> int:
        """Features per layer n."""
        return self.cfg.d_sae // self.cfg.n_layers

    def write_mask(self) -> Tensor:
        """Which layer writes which, bool [L, L]: ``[l, ℓ]`` iff l ≤ ℓ ≤ l + window."""
        i = torch.arange(self.n_layers)
        gap = i[None, :] - i[:, None]
        return (gap >= 0) & (gap <= (self.n_layers if self.cfg.window is None else self.cfg.window))

    def mask_decoder(self, t: Tensor) -> None:
        """Zero, in place, the blocks of a decoder-shaped ``t [L·n, L·d_out]`` that no feature may write."""
        L = self.n_layers
        t.view(L, self.n_per_layer, L, -1).mul_(self.write_mask().to(t.dtype)[:, None, :, None])

    def decoder(self, source: int, target: int) -> Tensor:
        """W_dec^{source→target}, [n, d_out/L] (a view; zeros when layer ``source`` does not write ``target``)."""
        n, d = self.n_per_layer, self.d_out // self.n_layers
        return self.W_dec[source * n:(source + 1) * n, target * d:(target + 1) * d]

    def pre_acts(self, x: Tensor) -> Tensor:
        """Pre-activations of every layer's features, [B, L·n], from the concatenated inputs ``x [B, L·d]``."""
        L = self.n_layers
        pre = torch.einsum("bld,ldn->bln", x.reshape(x.shape[0], L, -1), self.W_enc)
        return (pre + self.b_enc.view(L, -1)).reshape(x.shape[0], -1)

    def centring_bias(self, x: Tensor) -> Tensor:
        """−mean(r^l) W_enc^l per layer, flattened [L·n]."""
        mean = x.float().mean(0, keepdim=True).to(self.W_enc.dtype)
        return -(self.pre_acts(mean)[0] - self.b_enc).to(self.b_enc.dtype)

    @torch.no_grad()
    def before_step(self) -> None:
        if self.W_dec.grad is not None:
            self.mask_decoder(self.W_dec.grad)
        super().before_step()


class TopKCLT(CLTMixin, TopKTranscoder):
    """TopK CLT: per layer, the k largest ReLU'd pre-activations; AuxK over the dead features of all layers."""

    architecture = "topk_clt"
    config_cls = TopKCLTConfig

    def encode_codes(self, x: Tensor) -> Codes:
        B, L, n = x.shape[0], self.n_layers, self.n_per_layer
        values, idx = self.pre_acts(x).view(B, L, n).relu().topk(self.cfg.k, dim=-1)
        idx = idx + (torch.arange(L, device=idx.device) * n)[:, None]
        return Codes(values.reshape(B, -1), idx.reshape(B, -1), self.d_sae, False)

    def loss_terms(self, x: Tensor, codes: Codes, x_hat: Tensor, dead: Tensor | None, *,
                   target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        zero = x_hat.new_zeros(())
        if dead is None or self.cfg.aux_coef == 0 or not bool(dead.any()):
            return zero, zero
        y = x if target is None else target
        idx = dead.nonzero().squeeze(1)
        k_aux = self.cfg.aux_k or max(1, self.d_out // 2)
        aux = auxk_from_pre(self.pre_acts(x)[:, idx], self.W_dec[idx], y - x_hat, k_aux, target=y)
        return zero, self.cfg.aux_coef * aux


class JumpReLUCLT(CLTMixin, JumpReLUTranscoder):
    """JumpReLU CLT (θ per feature, in units of the concatenated input norm, as the JumpReLU transcoder)."""

    architecture = "jumprelu_clt"
    config_cls = JumpReLUCLTConfig


def clt_batches(model: nn.Module, clt: CLTMixin, input_sites: Sequence[str], output_sites: Sequence[str],
                token_batches: Iterable[Tensor], *, batch_size: int, drop_first: bool = True
                ) -> Iterator[tuple[Tensor, Tensor]]:
    """(x, y) training pairs ``[batch_size, L·d]`` for ``clt``: every layer's MLP input (``input_sites``) and
    output (``output_sites``), in forward order, captured in one pass of ``model`` per token batch
    (:func:`~assay.dictionaries.batches.live_batches`). Site lists that do not fit the CLT are refused."""
    from assay.dictionaries.batches import live_batches
    from assay.hooks import resolve

    ins, outs = list(input_sites), list(output_sites)
    if len(ins) != clt.n_layers or len(outs) != clt.n_layers:
        raise ValueError(f"the CLT spans {clt.n_layers} layers but got {len(ins)} input and {len(outs)} output "
                         "sites; give one MLP input and one MLP output site per layer, in forward order")
    for site in ins + outs:
        resolve(model, site)  # unknown names raise SiteError with the closest valid names
    widths = (clt.d_in // clt.n_layers, clt.d_out // clt.n_layers)
    checked = False
    for x, y in live_batches(model, ins, token_batches, batch_size=batch_size, drop_first=drop_first,
                             output_site=outs):
        if not checked and (x.shape[-1], y.shape[-1]) != (clt.d_in, clt.d_out):
            raise ValueError(f"sites {ins} → {outs} give input width {x.shape[-1]} and output width {y.shape[-1]}, "
                             f"but the CLT expects {clt.d_in} and {clt.d_out} ({clt.n_layers} layers of "
                             f"{widths[0]} → {widths[1]}); build it with the sites' widths")
        checked = True
        yield x, y
