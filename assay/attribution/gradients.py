"""Gradient-family attributions: gradient (saliency), input × gradient and SmoothGrad.

In the local-function-approximation view (Han, Srinivas & Lakkaraju 2022) these fit a linear
surrogate by *gradient matching* in a neighbourhood, whose closed form is a mean gradient:

* gradient (Simonyan, Vedaldi & Zisserman 2014, "Deep Inside Convolutional Networks"): ξ ~ N(0, σ²I)
  with σ → 0, so w = ∇_x f_t(x). **Signed** by default; ``abs=True`` gives Captum's default |∇|.
* input × gradient (Shrikumar et al. 2016): x' = x ⊙ ξ, ξ → 1, so w = (x − b) ⊙ ∇f_t(x) (b = 0
  by default).
* SmoothGrad (Smilkov, Thorat, Kim, Viégas & Wattenberg 2017, "SmoothGrad: removing noise by
  adding noise"): w = (1/N) Σ_s ∇f_t(x + σ ε_s), ε_s ~ N(0, I); σ = noise_level · (max x − min x)
  per example (``noise_scale="relative"``, default 0.15, N = 50) or σ = noise_level
  (``"absolute"``, Captum's convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from assay.attribution import engine
from assay.attribution.engine import Attribution, EngineConfig
from assay.config import ConfigError

__all__ = [
    "GradientConfig",
    "InputXGradientConfig",
    "SmoothGradConfig",
    "gradient",
    "input_x_gradient",
    "smoothgrad",
]


@dataclass(frozen=True, kw_only=True)
class GradientConfig(EngineConfig):
    """Vanilla gradient (saliency): ∇_x f_t(x)."""

    name: ClassVar[str] = "gradient"

    abs: bool = False
    """Return |∇| instead of the signed gradient (Captum's Saliency default is abs=True)."""


@dataclass(frozen=True, kw_only=True)
class InputXGradientConfig(EngineConfig):
    """Input × gradient: (x − baseline) ⊙ ∇_x f_t(x)."""

    name: ClassVar[str] = "input_x_gradient"
    uses_baseline: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class SmoothGradConfig(EngineConfig):
    """SmoothGrad: the gradient averaged over Gaussian-noised copies of the input."""

    name: ClassVar[str] = "smoothgrad"
    stochastic: ClassVar[bool] = True
    budget_field: ClassVar[str | None] = "n_samples"

    n_samples: int = 50
    """Number of noisy copies N."""
    noise_level: float = 0.15
    """Noise standard deviation: a fraction of each example's value range (relative) or absolute."""
    noise_scale: Literal["relative", "absolute"] = "relative"
    """'relative': σ = noise_level·(max x − min x) per example; 'absolute': σ = noise_level."""
    abs: bool = False
    """Average |∇| instead of the signed gradient."""
    seed: int = 0
    """Seed of the noise when no generator is passed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_samples < 1:
            raise ConfigError(f"n_samples must be ≥ 1, got {self.n_samples}")
        if self.noise_level < 0:
            raise ConfigError(f"noise_level must be ≥ 0, got {self.noise_level}")
        if self.noise_scale not in ("relative", "absolute"):
            raise ConfigError(f"noise_scale must be 'relative' or 'absolute', got {self.noise_scale!r}")


def _plain(model, x, target, output, budget, *, scale: torch.Tensor | None, abs_: bool, method: str,
           baseline=None) -> Attribution:
    t, out, single, per_row, base_out = engine.probe(model, x, target, output, baseline)
    chunk = engine.chunk_rows(per_row, budget, backward=True, n_rows=x.shape[0])
    g = engine.mean_gradient(model, x, t, lambda exs, ss: x[exs, None], torch.ones(1), output=output, chunk=chunk)
    if abs_:
        g = g.abs()
    if scale is not None:
        g = g * scale[:, None]
    return engine.finish(g, t, out, single, method, baseline_output=base_out)


def gradient(model, x: torch.Tensor, target=None, *, config: GradientConfig = GradientConfig()) -> Attribution:
    """∇_x f_t(x), signed unless ``config.abs``."""
    return _plain(model, x, target, config.output, config.memory_budget_mb, scale=None, abs_=config.abs,
                  method="gradient")


def input_x_gradient(
    model, x: torch.Tensor, target=None, *, config: InputXGradientConfig = InputXGradientConfig(),
    baseline: float | torch.Tensor | None = None,
) -> Attribution:
    """(x − b) ⊙ ∇_x f_t(x); the completeness gap compares Σ values with f_t(x) − f_t(b)."""
    b = engine.expand_baseline(x, baseline)
    return _plain(model, x, target, config.output, config.memory_budget_mb, scale=x - b, abs_=False,
                  method="input_x_gradient", baseline=b)


def smoothgrad(
    model, x: torch.Tensor, target=None, *, config: SmoothGradConfig = SmoothGradConfig(),
    generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
) -> Attribution:
    """Mean gradient over N noisy copies x + σ ε_s, all B × N rows in one chunked pass.

    The standard-normal draws ε ``[N, *x]`` come from ``generator`` (or ``config.seed``) and are shared
    by every example. ``noise`` overrides them with explicit absolute perturbations ``[N, *x]`` or
    ``[B, N, *x]`` (for parity with another library's draws).
    """
    engine._check_float(x)
    t, out, single, per_row = engine.target_outputs(model, x, target, config.output)
    B, shape = x.shape[0], x.shape[1:]
    if noise is None:
        g = generator if generator is not None else torch.Generator().manual_seed(config.seed)
        eps = torch.randn((config.n_samples, *shape), generator=g, dtype=x.dtype).to(x.device)
        if config.noise_scale == "relative":
            flat = x.flatten(1)
            sigma = config.noise_level * (flat.max(1).values - flat.min(1).values)
        else:
            sigma = torch.full((B,), config.noise_level, dtype=x.dtype, device=x.device)
        sigma = sigma.view(-1, *([1] * len(shape)))

        def rows(exs, ss):
            return torch.addcmul(x[exs, None], sigma[exs, None], eps[None, ss])

        n = config.n_samples
    else:
        if noise.dim() == x.dim():
            noise = noise[None].expand(B, *noise.shape)
        if noise.dim() != x.dim() + 1 or noise.shape[0] != B or noise.shape[2:] != shape:
            raise ValueError(f"noise must be [N, *x] or [B, N, *x] for input {tuple(x.shape)}, got {tuple(noise.shape)}")
        nz = noise.to(device=x.device, dtype=x.dtype)
        n = nz.shape[1]

        def rows(exs, ss):
            return x[exs, None] + nz[exs, ss]

    chunk = engine.chunk_rows(per_row, config.memory_budget_mb, backward=True, n_rows=B * n)
    vals = engine.mean_gradient(model, x, t, rows, torch.full((n,), 1.0 / n, dtype=torch.float64), output=config.output,
                                chunk=chunk, abs_=config.abs)
    return engine.finish(vals, t, out, single, "smoothgrad")
