"""Feature bases: what an attribution graph's feature nodes are, one encoder/decoder per model site.

A basis at one component reads the output of ``input_site`` (x), computes pre-activations
``pre = x W_enc + b_enc`` and activations ``a = σ(pre)``, and rebuilds the output of
``output_site`` as ``a W_dec + b_dec``; what it misses is that site's *error*. A per-layer transcoder
(Dunefsky, Chlenski, Nanda 2024, "Transcoders Find Interpretable LLM Feature Circuits") is a basis
with input = the MLP input and output = the MLP output; a compiled model's MLP neurons are an exact
one (error 0), and so is the projection onto the variables a compiled attention layer writes
(input = output = the attention output, σ = identity). A cross-layer transcoder (Ameisen et al. 2025) is one
basis per layer whose features also write later layers' MLP outputs (``writes``). A skip-transcoder (Paulo, Shabalin &
Belrose 2025, "Transcoders Beat Sparse Autoencoders for Interpretability") adds a linear term ``x W_skip`` of its
input to its rebuild: in the replacement model that term is a linear path through the MLP, like attention with its
pattern frozen, so it carries effects between nodes but is not a node. Attribution graphs (Ameisen et al. 2025,
"Circuit Tracing: Revealing Computational Graphs in Language Models") take their feature nodes from
any list of bases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

__all__ = ["FeatureBasis", "relu", "identity", "jump_relu", "error_basis", "cross_writes", "rebuilt_outputs"]


def relu(pre: torch.Tensor) -> torch.Tensor:
    """ReLU activation."""
    return pre.clamp(min=0)


def jump_relu(pre: torch.Tensor, *, threshold: torch.Tensor) -> torch.Tensor:
    """JumpReLU at inference: ``pre · 1[pre > θ]`` per feature (θ [n], positive)."""
    return pre * (pre > threshold)


def identity(pre: torch.Tensor) -> torch.Tensor:
    """Linear (identity) activation."""
    return pre


@dataclass(frozen=True, kw_only=True, eq=False)
class FeatureBasis:
    """Features of one component: an encoder on ``input_site``, a decoder for ``output_site``."""

    name: str
    """Name of the basis (e.g. the component it explains)."""
    input_site: str
    """Site whose output the encoder reads."""
    output_site: str
    """Site whose output the decoder rebuilds (features then stand in for it in the replacement model)."""
    W_enc: torch.Tensor
    """Encoder, [d_in, n]."""
    b_enc: torch.Tensor
    """Encoder bias, [n]."""
    W_dec: torch.Tensor
    """Decoder, [n, d_out] (rows are the features' output directions)."""
    b_dec: torch.Tensor
    """Decoder bias, [d_out]."""
    activation: Callable[[torch.Tensor], torch.Tensor] = relu
    """σ: pre-activations → activations."""
    labels: tuple[str, ...] = ()
    """Optional name per feature (e.g. the compiled variable it belongs to)."""
    writes: tuple[tuple[str, torch.Tensor], ...] = ()
    """Further sites the features write, as (site, decoder [n, d_site]) pairs: a cross-layer transcoder's
    decoders to later MLP outputs. Each site must be the ``output_site`` of a basis listed after this one; that
    basis's rebuilt output then adds ``a W`` from these features (and its error is what all writers miss)."""
    W_skip: torch.Tensor | None = None
    """A skip-transcoder's linear term, [d_in, d_out]: the rebuilt output adds ``x W_skip`` of what the basis reads
    (module docstring); None: no skip term."""

    def __post_init__(self) -> None:
        n = self.W_enc.shape[1]
        if self.W_enc.ndim != 2 or self.W_dec.shape[0] != n or self.b_enc.shape != (n,) \
                or self.b_dec.shape != (self.W_dec.shape[1],):
            raise ValueError(
                f"basis {self.name!r}: shapes do not fit: W_enc {tuple(self.W_enc.shape)}, b_enc "
                f"{tuple(self.b_enc.shape)}, W_dec {tuple(self.W_dec.shape)}, b_dec {tuple(self.b_dec.shape)}; "
                "expected [d_in, n], [n], [n, d_out], [d_out]"
            )
        if self.labels and len(self.labels) != n:
            raise ValueError(f"basis {self.name!r}: {len(self.labels)} labels for {n} features")
        bad = [site for site, w in self.writes if w.ndim != 2 or w.shape[0] != n]
        sites = [site for site, _ in self.writes]
        if bad or len(set(sites)) != len(sites) or self.output_site in sites:
            raise ValueError(f"basis {self.name!r}: writes {[(s, tuple(w.shape)) for s, w in self.writes]} must name "
                             f"distinct sites other than its output site, each with a decoder [{n}, d_site]")
        if self.W_skip is not None:
            want = (self.W_enc.shape[0], self.W_dec.shape[1])
            if tuple(self.W_skip.shape) != want:
                raise ValueError(f"basis {self.name!r}: W_skip {tuple(self.W_skip.shape)} must be [d_in, d_out] = {want}")
            if self.input_site == self.output_site:
                raise ValueError(f"basis {self.name!r} reads and rebuilds the same site {self.input_site!r}; a skip "
                                 "term needs an input site before the output site (a transcoder's)")

    @property
    def n_features(self) -> int:
        """Number of features."""
        return self.W_enc.shape[1]

    def to(self, dtype: torch.dtype) -> FeatureBasis:
        """The same basis with its tensors in ``dtype``."""
        if self.W_enc.dtype == dtype:
            return self
        return replace(self, **{k: getattr(self, k).to(dtype) for k in ("W_enc", "b_enc", "W_dec", "b_dec")},
                       writes=tuple((site, w.to(dtype)) for site, w in self.writes),
                       W_skip=None if self.W_skip is None else self.W_skip.to(dtype))

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``x W_enc + b_enc``."""
        return x @ self.W_enc + self.b_enc

    def decode(self, a: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``a W_dec + b_dec`` (without the skip term: see :meth:`skip`)."""
        return a @ self.W_dec + self.b_dec

    def skip(self, x: torch.Tensor) -> torch.Tensor | float:
        """The skip term ``x W_skip`` of the input ``x`` (0 without one)."""
        return 0.0 if self.W_skip is None else x @ self.W_skip


def error_basis(site: str, d: int, *, dtype: torch.dtype = torch.float32) -> FeatureBasis:
    """A basis with no features on ``site`` (output dimension ``d``): the site's whole output becomes one
    error node per position. An MLP without a transcoder takes part in the replacement model this way."""
    return FeatureBasis(name=site, input_site=site, output_site=site, W_enc=torch.zeros(d, 0, dtype=dtype),
                        b_enc=torch.zeros(0, dtype=dtype), W_dec=torch.zeros(0, d, dtype=dtype),
                        b_dec=torch.zeros(d, dtype=dtype), activation=identity)


def cross_writes(bases: Sequence[FeatureBasis]) -> list[list[tuple[int, torch.Tensor]]]:
    """Per basis, the (writer index, decoder) pairs of the earlier bases that write into its output site
    (``FeatureBasis.writes``); a write into a site that no later basis rebuilds is refused."""
    index = {b.output_site: j for j, b in enumerate(bases)}
    incoming: list[list[tuple[int, torch.Tensor]]] = [[] for _ in bases]
    for src, b in enumerate(bases):
        for site, w in b.writes:
            j = index.get(site)
            if j is None or j <= src:
                raise ValueError(f"basis {b.name!r} writes {site!r}, which is not the output site of a basis listed "
                                 "after it; list the bases in forward order and give every written site its basis")
            if w.shape[1] != bases[j].W_dec.shape[1]:
                raise ValueError(f"basis {b.name!r} writes {site!r} with width {w.shape[1]}, but that site's basis "
                                 f"{bases[j].name!r} rebuilds width {bases[j].W_dec.shape[1]}")
            incoming[j].append((src, w))
    return incoming


def rebuilt_outputs(bases: Sequence[FeatureBasis], acts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """What the features of ``bases`` (activations ``acts[j]`` [..., n_j]) write into each basis's output site:
    its own ``a W_dec + b_dec`` plus every earlier basis's cross-layer writes there — a cross-layer transcoder's
    Σ_{l ≤ ℓ} a^l W_dec^{l→ℓ} + b_dec^ℓ."""
    out = [b.decode(a) for b, a in zip(bases, acts, strict=True)]
    for j, writers in enumerate(cross_writes(bases)):
        for src, w in writers:
            out[j] = out[j] + acts[src] @ w
    return out
