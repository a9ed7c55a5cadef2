"""LIME, KernelSHAP and C-LIME: linear surrogates fitted by weighted least squares.

* LIME (Ribeiro, Singh & Guestrin 2016, "Why Should I Trust You?"): z ~ Bernoulli(½)^d over d
  interpretable features, x' = b + z ⊙ (x − b), weights π = exp(−dist(x, x')²/κ²), surrogate w·z + c.
* KernelSHAP (Lundberg & Lee 2017, "A Unified Approach to Interpreting Model Predictions"): the same
  masks weighted by the Shapley kernel π(z) = (d−1)/(C(d,|z|)·|z|·(d−|z|)) (all-0/all-1 rows 1e6), or
  — the default, Captum's scheme — masks *sampled* in proportion to that kernel with unit weights.
* C-LIME (Agarwal et al. 2021, "Towards the Unification and Robustness of Perturbation and Gradient
  Based Explanations"): continuous ξ ~ N(0, σ²I), x' = x + ξ, unweighted, surrogate w·ξ + c.

The LFA framing (Han, Srinivas & Lakkaraju 2022) and the closed-form solver are in
:mod:`assay.attribution.surrogates`. All B × S perturbed rows run as one chunked no-grad batch; the
masks are shared by the whole batch. A feature's coefficient is written to every input element of
its group (as Captum does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from assay.attribution import engine
from assay.attribution.engine import Attribution, EngineConfig
from assay.attribution.neighbourhoods import (
    bernoulli_masks,
    check_feature_mask,
    expand_features,
    features_block,
    n_features,
    shapley_kernel_masks,
    shapley_kernel_weight,
    shared_mask,
)
from assay.attribution.surrogates import Distance, distances, exponential_kernel, weighted_lstsq
from assay.config import ConfigError

__all__ = ["LimeConfig", "KernelShapConfig", "CLimeConfig", "lime", "kernel_shap", "c_lime"]


@dataclass(frozen=True, kw_only=True)
class _SampledConfig(EngineConfig):
    feature_groups: ClassVar[bool] = True
    stochastic: ClassVar[bool] = True
    budget_field: ClassVar[str | None] = "n_samples"

    n_samples: int | None = None
    """Number of perturbations S; None: max(200, 2·d + 2) for d interpretable features."""
    seed: int = 0
    """Seed of the perturbations when no generator is passed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_samples is not None and self.n_samples < 3:
            raise ConfigError(f"n_samples must be ≥ 3, got {self.n_samples}")


@dataclass(frozen=True, kw_only=True)
class LimeConfig(_SampledConfig):
    """LIME: Bernoulli(½) feature masks, exponential distance kernel, linear surrogate with bias."""

    name: ClassVar[str] = "lime"
    uses_baseline: ClassVar[bool] = True

    distance: Distance = "cosine"
    """Distance between x and x' in the kernel: 'cosine' (Captum) or 'euclidean' (LFA code)."""
    kernel_width: float = 1.0
    """Kernel width κ in π = exp(−dist²/κ²)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.distance not in ("cosine", "euclidean"):
            raise ConfigError(f"distance must be 'cosine' or 'euclidean', got {self.distance!r}")
        if not self.kernel_width > 0:
            raise ConfigError(f"kernel_width must be positive, got {self.kernel_width}")


@dataclass(frozen=True, kw_only=True)
class KernelShapConfig(_SampledConfig):
    """KernelSHAP: feature masks with the Shapley kernel, linear surrogate with bias."""

    name: ClassVar[str] = "kernel_shap"
    uses_baseline: ClassVar[bool] = True
    complete: ClassVar[bool] = True

    sampling: Literal["kernel", "bernoulli"] = "kernel"
    """'kernel': subset sizes sampled ∝ Shapley kernel, unit weights (Captum); 'bernoulli': z ~
    Bernoulli(½) weighted by the Shapley kernel (LFA)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sampling not in ("kernel", "bernoulli"):
            raise ConfigError(f"sampling must be 'kernel' or 'bernoulli', got {self.sampling!r}")


@dataclass(frozen=True, kw_only=True)
class CLimeConfig(_SampledConfig):
    """C-LIME: continuous Gaussian perturbations, unweighted linear surrogate with bias."""

    name: ClassVar[str] = "c_lime"

    sigma: float = 0.1
    """Standard deviation of the perturbations ξ."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sigma > 0:
            raise ConfigError(f"sigma must be positive, got {self.sigma}")


def _fit(model, x, target, config, fm, z, weights_fn, rows, method, *, baseline=None):
    t, out, single, per_row, base_out = engine.probe(model, x, target, config.output, baseline)
    S = z.shape[0]
    chunk = engine.chunk_rows(per_row, config.memory_budget_mb, backward=False, n_rows=x.shape[0] * S)
    dist_fn = None if weights_fn is None or weights_fn[0] is None else weights_fn[0]
    ys, dist = engine.outputs_at(model, x, t, rows, S, output=config.output, chunk=chunk, distance=dist_fn)
    weights = weights_fn[1](dist) if weights_fn is not None else None
    coef, icpt = weighted_lstsq(z, ys, weights, bias=True)
    B, K = t.shape
    vals = expand_features(coef.reshape(B * K, -1).to(x.dtype),
                           None if fm is None else fm.repeat_interleave(K, 0), tuple(x.shape[1:]))
    vals = vals.reshape(B, K, *x.shape[1:])
    return engine.finish(vals, t, out, single, method, baseline_output=base_out, intercept=icpt)


def _masks_rows(x, b, fm, z):
    zx = z.to(x.dtype)
    shape = tuple(x.shape[1:])
    shared = shared_mask(fm)
    binary = bool(((z == 0) | (z == 1)).all())
    delta = x - b

    def rows(exs, ss):
        zin = features_block(zx[ss], fm, shared, exs, shape)
        if binary:  # exact x where kept, exact b where removed (as Captum: x·z + b·(1 − z))
            return torch.where(zin.bool(), x[exs, None], b[exs, None])
        return torch.addcmul(b[exs, None], zin, delta[exs, None])

    return rows


def _samples(samples, d, default):
    if samples is None:
        return default()
    z = samples.to(torch.float64).cpu()
    if z.dim() != 2 or z.shape[1] != d:
        raise ValueError(f"samples must be [S, d] with d = {d} features, got {tuple(samples.shape)}")
    return z


def lime(
    model, x: torch.Tensor, target=None, *, config: LimeConfig = LimeConfig(),
    baseline: float | torch.Tensor | None = None, feature_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None, samples: torch.Tensor | None = None,
) -> Attribution:
    """LIME coefficients per feature; ``samples`` ``[S, d]`` fixes the binary masks."""
    b = engine.expand_baseline(x, baseline)
    fm = check_feature_mask(feature_mask, x)
    d = n_features(fm, x)
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    n = config.n_samples or max(200, 2 * d + 2)
    z = _samples(samples, d, lambda: bernoulli_masks(n, d, generator=gen)).to(x.device)
    kern = (lambda xs, xp: distances(xs, xp, config.distance),
            lambda dist: exponential_kernel(dist, config.kernel_width))
    return _fit(model, x, target, config, fm, z, kern, _masks_rows(x, b, fm, z), "lime",
                baseline=b)


def kernel_shap(
    model, x: torch.Tensor, target=None, *, config: KernelShapConfig = KernelShapConfig(),
    baseline: float | torch.Tensor | None = None, feature_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None, samples: torch.Tensor | None = None,
) -> Attribution:
    """KernelSHAP values per feature; ``samples`` ``[S, d]`` fixes the coalitions (their weights follow
    ``config.sampling``)."""
    b = engine.expand_baseline(x, baseline)
    fm = check_feature_mask(feature_mask, x)
    d = n_features(fm, x)
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    n = config.n_samples or max(200, 2 * d + 2)
    if config.sampling == "kernel":
        z = _samples(samples, d, lambda: shapley_kernel_masks(n, d, generator=gen))
        s = z.sum(1)
        w = torch.where((s == 0) | (s == d), torch.tensor(1e6, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    else:
        def draw():
            ends = torch.stack([torch.ones(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)])
            return torch.cat([ends, bernoulli_masks(n - 2, d, generator=gen)])

        z = _samples(samples, d, draw)
        w = shapley_kernel_weight(z)
    z = z.to(x.device)
    w = w.to(x.device)
    return _fit(model, x, target, config, fm, z, (None, lambda _d: w), _masks_rows(x, b, fm, z), "kernel_shap",
                baseline=b)


def c_lime(
    model, x: torch.Tensor, target=None, *, config: CLimeConfig = CLimeConfig(),
    feature_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
    samples: torch.Tensor | None = None,
) -> Attribution:
    """C-LIME coefficients: f_t(x + ξ) ≈ w·ξ + c with ξ ~ N(0, σ²I) per feature (shared by a group)."""
    engine._check_float(x)
    fm = check_feature_mask(feature_mask, x)
    d = n_features(fm, x)
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    n = config.n_samples or max(200, 2 * d + 2)
    z = _samples(samples, d, lambda: config.sigma * torch.randn(n, d, generator=gen, dtype=torch.float64))
    z = z.to(x.device)
    zx = z.to(x.dtype)

    shared = shared_mask(fm)

    def rows(exs, ss):
        return x[exs, None] + features_block(zx[ss], fm, shared, exs, tuple(x.shape[1:]))

    return _fit(model, x, target, config, fm, z, None, rows, "c_lime")
