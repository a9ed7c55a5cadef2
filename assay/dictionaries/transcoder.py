"""Transcoders and skip-transcoders: sparse dictionaries that map a block's input to its output
(MLP-in → MLP-out) instead of reconstructing one site.

Dunefsky, Chlenski & Nanda 2024, "Transcoders Find Interpretable LLM Feature Circuits" (NeurIPS 2024,
arXiv 2406.11944; repo jacobdunefsky/transcoder_circuits); Paulo, Shabalin & Belrose 2025, "Transcoders
Beat Sparse Autoencoders for Interpretability" (arXiv 2501.18823; repo EleutherAI/sparsify) for the
skip connection.

    z = σ(x W_enc + b_enc),    ŷ = z W_dec + b_dec  (+ x W_skipᵀ for a skip-transcoder),
    L = mean_b ‖y_b − ŷ_b‖² + the activation's sparsity / AuxK term (target y, never x).

x ∈ ℝ^{B×d_in} is the input site (e.g. ``blocks.{i}.ln2``), y ∈ ℝ^{B×d_out} the output site
(``blocks.{i}.mlp``). b_dec lives in output space, so it is **not** subtracted from x (SAELens raises on
``apply_b_dec_to_input`` for transcoders). σ is TopK (sparsify) or JumpReLU (GemmaScope; θ and its STE
bandwidth in units of the input norm, as :mod:`assay.dictionaries.jumprelu`). W_skip ∈ ℝ^{d_out×d_in} is
zero-initialised (sparsify, SAELens ``skip_transcoder``). Atoms are unit-norm by default;
``unit_decoder=False`` is sparsify's recipe (W_dec from zero, never renormalised). At the first batch b_enc = −mean(x) W_enc and
b_dec = geometric median of y. Trained by the one SAE trainer (:mod:`assay.dictionaries.trainer`) on
(x, y) pairs: input and output get separate normalising scales s_in = √d_in/E‖x‖, s_out = √d_out/E‖y‖,
folded back by :meth:`TranscoderMixin.fold_scales`. The Lens view (``encode``/``decode``) is the sparse
part only; :meth:`TranscoderMixin.transcode` is the full map x → ŷ including the skip term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from assay.config import ConfigError
from assay.dictionaries.base import SAE, Codes, unit_rows
from assay.dictionaries.jumprelu import JumpReLUConfig, JumpReLUSAE
from assay.dictionaries.topk import TopKConfig, TopKSAE

__all__ = ["TranscoderFields", "TopKTranscoderConfig", "JumpReLUTranscoderConfig", "TranscoderMixin",
           "TopKTranscoder", "JumpReLUTranscoder", "is_transcoder"]


@dataclass(frozen=True, kw_only=True)
class TranscoderFields:
    """What a transcoder adds to its activation's SAE config. ``d_in`` is the input site's width."""

    d_out: int
    """Width of the output site (what ŷ reconstructs)."""
    skip: bool = False
    """Add the affine skip term x W_skipᵀ (a skip-transcoder, Paulo et al. 2025); W_skip starts at 0."""
    unit_decoder: bool = True
    """Random unit-norm atoms kept at unit norm (§1.2 of the dictionaries spec); False: sparsify's transcoder
    recipe — W_dec starts at zero and is never renormalised."""
    decoder_bias: bool = True
    """Learn b_dec (geometric-median init). False: b_dec is held at 0 (a buffer, not trained), so each decoder
    row carries a whole output value rather than an offset from a shared bias — what matching features to
    known variables needs (docs/circuits.md, acceptance check A4)."""

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        if self.d_out <= 0:
            raise ConfigError(f"d_out must be positive, got {self.d_out}")


@dataclass(frozen=True, kw_only=True)
class TopKTranscoderConfig(TranscoderFields, TopKConfig):
    """A TopK transcoder (sparsify's ``transcode=True``). Loss: sum over d_out, mean over tokens."""

    data_init: bool = False
    """At the first batch, give each of up to d_sae centres drawn among its distinct input rows (k-means++ in
    standardised units) its own feature, winning on the inputs nearest to it, with the least-squares decoder of
    the outputs it wins (:mod:`assay.dictionaries.centre_init`; exact k = 1 cells). Needs ``unit_decoder=False``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data_init and self.unit_decoder:
            raise ConfigError("data_init sets decoder rows of free norms (least squares); build the transcoder with "
                              "unit_decoder=False")


@dataclass(frozen=True, kw_only=True)
class JumpReLUTranscoderConfig(TranscoderFields, JumpReLUConfig):
    """A JumpReLU transcoder (GemmaScope, SAELens ``jumprelu_transcoder``). Loss: sum over d_out, mean over tokens."""


def is_transcoder(sae: SAE) -> bool:
    """Whether ``sae`` maps an input site to a different output site (trained on (x, y) pairs)."""
    return isinstance(sae, TranscoderMixin)


class TranscoderMixin(SAE):
    """What turns an SAE architecture into a transcoder: output-space W_dec/b_dec, an uncentred encoder,
    the optional skip term, pair initialisation and two-scale folding."""

    cfg: TopKTranscoderConfig | JumpReLUTranscoderConfig

    def __init__(self, cfg) -> None:  # noqa: ANN001 — the concrete class's config
        super().__init__(cfg)
        n, d_in, d_out = cfg.d_sae, cfg.d_in, cfg.d_out
        g = torch.Generator().manual_seed(cfg.seed + 1)
        w_dec = unit_rows(torch.randn(n, d_out, generator=g)) if cfg.unit_decoder else torch.zeros(n, d_out)
        self.W_dec = nn.Parameter(w_dec)
        del self.b_dec
        if cfg.decoder_bias:
            self.b_dec = nn.Parameter(torch.zeros(d_out))
        else:
            self.register_buffer("b_dec", torch.zeros(d_out))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in))

    @property
    def d_out(self) -> int:
        return self.cfg.d_out

    def encoder_shift(self) -> Tensor | None:
        return None  # b_dec is in output space: the encoder reads x itself

    def before_step(self) -> None:
        if self.cfg.unit_decoder:
            super().before_step()

    def after_step(self) -> None:
        if self.cfg.unit_decoder:
            super().after_step()

    def reconstruct(self, x: Tensor, codes: Codes) -> Tensor:
        y_hat = self.decode_codes(codes)
        return y_hat + x @ self.W_skip.t() if self.cfg.skip else y_hat

    def transcode(self, x: Tensor) -> Tensor:
        """The full map x ``[..., d_in]`` → ŷ ``[..., d_out]`` (sparse part + skip term), at inference."""
        flat = self._flat(x, self.d_in, "input-site activations")
        return self.reconstruct(flat, self.encode_codes(flat)).reshape(*x.shape[:-1], self.d_out)

    @torch.no_grad()
    def init_from_batch(self, x: Tensor, target: Tensor | None = None) -> None:
        """b_enc = −mean(x) W_enc (sparsify); b_dec = geometric median of the targets y (if learned, else 0)."""
        if target is None:
            raise ValueError(f"a transcoder initialises from (input, output) pairs; got no output batch "
                             f"(train it with output_site= / (x, y) batches, d_out={self.d_out})")
        super().init_from_batch(x, target)  # the architecture's own statistics (a JumpReLU's input norm) too
        if not self.cfg.decoder_bias:
            self.b_dec.zero_()
        self.b_enc.copy_(self.centring_bias(x))

    def centring_bias(self, x: Tensor) -> Tensor:
        """−mean(x) W_enc: the encoder bias that centres the batch ``x`` (sparsify's step-0 b_enc)."""
        return -(x.float().mean(0) @ self.W_enc.float()).to(self.b_enc.dtype)

    @torch.no_grad()
    def fold_scales(self, s_in: float, s_out: float) -> None:
        """Fold the input scale s_in and output scale s_out (trained on s_in·x → s_out·y) so the transcoder
        maps raw x to raw y: W_enc ← s_in W_enc (pre-activations, hence θ, unchanged), W_dec ← W_dec/s_out,
        b_dec ← b_dec/s_out, W_skip ← W_skip·s_in/s_out."""
        self.W_enc.mul_(s_in)
        self.W_dec.div_(s_out)
        self.b_dec.div_(s_out)
        if self.cfg.skip:
            self.W_skip.mul_(s_in / s_out)

    def fold_input_scale(self, s: float) -> None:
        raise TypeError("a transcoder has separate input and output scales: use fold_scales(s_in, s_out)")


class TopKTranscoder(TranscoderMixin, TopKSAE):
    """TopK transcoder (sparse encoder and decoder kernels as the TopK SAE)."""

    architecture = "topk_transcoder"
    config_cls = TopKTranscoderConfig
    median_init = True
    cfg: TopKTranscoderConfig

    @torch.no_grad()
    def init_from_batch(self, x: Tensor, target: Tensor | None = None) -> None:
        """As every transcoder; with ``data_init`` the encoder and decoder then come from the batch's input centres
        (:func:`~assay.dictionaries.centre_init.nearest_centre_init`, seeded by the config's seed)."""
        super().init_from_batch(x, target)
        if getattr(self.cfg, "data_init", False):  # a TopK CLT (a subclass) has no such option
            from assay.dictionaries.centre_init import nearest_centre_init

            init = nearest_centre_init(x, target - self.b_dec, self.d_sae,
                                       generator=torch.Generator().manual_seed(self.cfg.seed + 2))
            self.W_enc.copy_(init.W_enc)
            self.b_enc.copy_(init.b_enc)
            self.W_dec.copy_(init.W_dec)


class JumpReLUTranscoder(TranscoderMixin, JumpReLUSAE):
    """JumpReLU transcoder (θ, its step and the STE bandwidth in units of the input norm)."""

    architecture = "jumprelu_transcoder"
    config_cls = JumpReLUTranscoderConfig
    median_init = True
