"""Average-case robustness: the probability that a prediction survives random input noise.

Han*, Srinivas* & Lakkaraju 2024, "Characterizing Data Point Vulnerability via Average-Case
Robustness" (UAI 2024); reference code ``AI4LIFE-GROUP/average-case-robustness``.

    p_σ(x) = P_{ε∼N(0, σ²I)}[argmax_i f_i(x + ε) = t],   t = argmax f(x) (the clean prediction)

With margins g_i = f_t − f_i (i ≠ t) and a linearisation g(x + ε) ≈ g(x) + ∇g ε, the margin vector
is Gaussian and p = Φ_Σ(z) with z_i = g_i/(σ‖∇g_i‖), Σ = UUᵀ (+1e-5·I), U rows ∇g_i/‖∇g_i‖ —
exact for linear f (``taylor``). ``mmse`` linearises the Gaussian-smoothed model instead (margins
and gradients averaged over noisy copies); ``taylor_mvs``/``mmse_mvs`` replace Φ_Σ(z) by the
multivariate sigmoid 1/(1 + Σ_i e^{−z_i}); ``softmax`` is the max softmax probability (the paper's
strawman); ``monte_carlo`` counts noisy copies, with a Wilson confidence interval and a per-point
early stop once the interval's half-width reaches a target error; its forward passes are sized from a
memory budget (:mod:`assay.chunks`) and its noise is drawn per example, so batching never changes it.

Noise: ``"gaussian"`` N(0, σ²I), or ``"uniform"`` with the same per-coordinate standard deviation,
U(−√3σ, √3σ)^d. The analytic estimators use the Gaussian of matching covariance for uniform noise
(exact in the first two moments of the margins; the margin distribution is near-Gaussian by the
central limit theorem when the gradients spread over many coordinates). Monte Carlo is exact for both.

The model must be a classifier returning logits ``[batch, n_classes]`` whose examples do not
interact (BatchNorm in eval mode): gradients are taken of batch sums, one backward pass per class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import torch

from assay.chunks import chunk_rows, row_bytes
from assay.config import ConfigError, check_choice
from assay.robustness.mvn import mvn_cdf
from assay.robustness.validate import check_positive, check_target, classifier_logits
from assay.stats import wilson_interval

__all__ = [
    "Noise",
    "MonteCarloEstimate",
    "Margins",
    "sample_noise",
    "margins",
    "smoothed_margins",
    "monte_carlo",
    "taylor",
    "mmse",
    "taylor_mvs",
    "mmse_mvs",
    "softmax_confidence",
    "gaussian_cdf_of_margins",
    "multivariate_sigmoid",
    "MC_UNIT",
    "AverageCaseConfig",
    "ESTIMATORS",
    "estimate",
]

Noise = Literal["gaussian", "uniform"]
Model = Callable[[torch.Tensor], torch.Tensor]


class MonteCarloEstimate(NamedTuple):
    """Monte Carlo estimate of p_σ(x) per example."""

    p: torch.Tensor
    """Fraction of noisy copies keeping the clean prediction ``[B]``."""
    ci_low: torch.Tensor
    """Lower end of the Wilson confidence interval ``[B]``."""
    ci_high: torch.Tensor
    """Upper end of the Wilson confidence interval ``[B]``."""
    n_samples: torch.Tensor
    """Noisy copies drawn per example ``[B]`` (fewer than the maximum where it stopped early)."""
    target: torch.Tensor
    """The class each example was scored against ``[B]``."""


class Margins(NamedTuple):
    """Logit margins against the target class and their input gradients."""

    g: torch.Tensor
    """Margins f_t − f_i for the C − 1 classes i ≠ t, ``[B, C-1]``."""
    grad: torch.Tensor
    """Their gradients ∇f_t − ∇f_i, ``[B, C-1, d]`` (input flattened)."""
    target: torch.Tensor
    """The target class t ``[B]``."""


def sample_noise(shape: torch.Size | tuple[int, ...], sigma: float, noise: Noise, *, dtype: torch.dtype,
                 device: torch.device | str, generator: torch.Generator | None) -> torch.Tensor:
    """Noise of standard deviation ``sigma`` per coordinate: N(0, σ²) or U(−√3σ, √3σ)."""
    if noise == "gaussian":
        return sigma * torch.randn(shape, dtype=dtype, device=device, generator=generator)
    if noise == "uniform":
        u = torch.rand(shape, dtype=dtype, device=device, generator=generator)
        return (2 * u - 1) * (math.sqrt(3.0) * sigma)
    raise ValueError(f"noise must be 'gaussian' or 'uniform', got {noise!r}")


def _check_noise(noise: str) -> None:
    if noise not in ("gaussian", "uniform"):
        raise ValueError(f"noise must be 'gaussian' or 'uniform', got {noise!r}")


def _jacobian(model: Model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[B, C]`` and the input Jacobian ``[B, C, d]`` (one backward pass per class)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = classifier_logits(model, x)
        rows = []
        for c in range(logits.shape[1]):
            (gc,) = torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c < logits.shape[1] - 1)
            rows.append(gc.reshape(x.shape[0], -1))
    return logits.detach(), torch.stack(rows, 1)


def _others(target: torch.Tensor, C: int) -> torch.Tensor:
    """Indices ``[B, C-1]`` of the classes other than the target, in increasing order."""
    idx = torch.arange(C, device=target.device).expand(target.shape[0], C)
    return idx[idx != target[:, None]].reshape(target.shape[0], C - 1)


def _to_margins(logits: torch.Tensor, jac: torch.Tensor, target: torch.Tensor) -> Margins:
    others = _others(target, logits.shape[1])
    ft = logits.gather(1, target[:, None])
    g = ft - logits.gather(1, others)
    jt = jac[torch.arange(jac.shape[0]), target][:, None]
    grad = jt - jac.gather(1, others[:, :, None].expand(-1, -1, jac.shape[2]))
    return Margins(g, grad, target)


def margins(model: Model, x: torch.Tensor, target: torch.Tensor | None = None) -> Margins:
    """Margins g_i = f_t − f_i and gradients at ``x`` (t the clean prediction unless ``target``)."""
    logits, jac = _jacobian(model, x)
    return _to_margins(logits, jac, check_target(target, logits))


def smoothed_margins(model: Model, x: torch.Tensor, sigma: float, *, n_samples: int = 10,
                     noise: Noise = "gaussian", target: torch.Tensor | None = None,
                     generator: torch.Generator | None = None, chunk: int = 512) -> Margins:
    """Margins and gradients of the noise-smoothed model: averages over ``n_samples`` noisy copies
    (the MMSE linearisation). The copies come in antithetic pairs x ± ε (``n_samples`` rounded up
    to even), which cancels the noise's first-order term exactly: for a linear model the result
    equals :func:`margins`. The target is the clean prediction unless given. Noisy copies are
    stacked into Jacobian calls of up to ``chunk`` rows (the noise is drawn in the same order for
    every ``chunk``, so the result does not depend on it)."""
    sigma = check_positive("sigma", sigma)
    _check_noise(noise)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    with torch.no_grad():
        clean = classifier_logits(model, x)
    target = check_target(target, clean)
    n_pairs = (n_samples + 1) // 2
    B = x.shape[0]
    g_sum, grad_sum = None, None
    per_call = max(1, chunk // (2 * B))  # noise pairs per Jacobian call (one batch of up to ``chunk`` rows)
    for start in range(0, n_pairs, per_call):
        k = min(per_call, n_pairs - start)
        eps = torch.cat([sample_noise(x.shape, sigma, noise, dtype=x.dtype, device=x.device, generator=generator)
                         for _ in range(k)])
        xr = x.repeat(k, *([1] * (x.ndim - 1)))
        m = _to_margins(*_jacobian(model, torch.cat([xr + eps, xr - eps])), target.repeat(2 * k))
        g = m.g.reshape(2 * k, B, -1).sum(0)
        grad = m.grad.reshape(2 * k, B, *m.grad.shape[1:]).sum(0)
        g_sum = g if g_sum is None else g_sum + g
        grad_sum = grad if grad_sum is None else grad_sum + grad
    return Margins(g_sum / (2 * n_pairs), grad_sum / (2 * n_pairs), target)


def _standardised(m: Margins, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """z = g/(σ‖∇g‖) and the unit gradient rows U."""
    norm = m.grad.norm(dim=2)
    z = m.g / (sigma * norm.clamp_min(1e-30))
    z = torch.where(norm > 0, z, torch.where(m.g > 0, math.inf, -math.inf))
    U = m.grad / norm.clamp_min(1e-30)[:, :, None]
    return z, U


def gaussian_cdf_of_margins(m: Margins, sigma: float, *, jitter: float = 1e-5,
                            generator: torch.Generator | None = None, abseps: float = 1e-4) -> torch.Tensor:
    """Φ_Σ(z): the probability all linearised margins stay positive under N(0, σ²I) noise ``[B]``."""
    z, U = _standardised(m, sigma)
    U64 = U.to(torch.float64)
    cov = U64 @ U64.transpose(1, 2) + jitter * torch.eye(U.shape[1], dtype=torch.float64, device=U.device)
    return mvn_cdf(z.to(torch.float64), cov, generator=generator, abseps=abseps).p.to(m.g.dtype)


def multivariate_sigmoid(m: Margins, sigma: float) -> torch.Tensor:
    """The multivariate sigmoid 1/(1 + Σ_i e^{−z_i}) of the standardised margins ``[B]``."""
    z, _ = _standardised(m, sigma)
    return torch.sigmoid(-torch.logsumexp(-z, dim=1))


def taylor(model: Model, x: torch.Tensor, sigma: float, *, target: torch.Tensor | None = None,
           generator: torch.Generator | None = None, jitter: float = 1e-5, abseps: float = 1e-4) -> torch.Tensor:
    """Taylor estimator Φ_Σ(z) at the clean input ``[B]`` (exact for linear models). ``jitter`` is added
    to the diagonal of Σ (it is singular when C − 1 > d); ``abseps`` is the CDF's absolute error target."""
    sigma = check_positive("sigma", sigma)
    return gaussian_cdf_of_margins(margins(model, x, target), sigma, generator=generator, jitter=jitter,
                                   abseps=abseps)


def taylor_mvs(model: Model, x: torch.Tensor, sigma: float, *, target: torch.Tensor | None = None) -> torch.Tensor:
    """Taylor margins through the multivariate sigmoid ``[B]`` (differentiable, no CDF)."""
    sigma = check_positive("sigma", sigma)
    return multivariate_sigmoid(margins(model, x, target), sigma)


def mmse(model: Model, x: torch.Tensor, sigma: float, *, n_samples: int = 10, noise: Noise = "gaussian",
         target: torch.Tensor | None = None, generator: torch.Generator | None = None, chunk: int = 512,
         jitter: float = 1e-5, abseps: float = 1e-4) -> torch.Tensor:
    """MMSE estimator: Φ_Σ(z) of the noise-averaged margins and gradients ``[B]``. ``chunk``: rows per
    Jacobian call (:func:`smoothed_margins`; the result does not depend on it); ``jitter`` and ``abseps``
    as in :func:`taylor`."""
    m = smoothed_margins(model, x, sigma, n_samples=n_samples, noise=noise, target=target, generator=generator,
                         chunk=chunk)
    return gaussian_cdf_of_margins(m, sigma, generator=generator, jitter=jitter, abseps=abseps)


def mmse_mvs(model: Model, x: torch.Tensor, sigma: float, *, n_samples: int = 10, noise: Noise = "gaussian",
             target: torch.Tensor | None = None, generator: torch.Generator | None = None,
             chunk: int = 512) -> torch.Tensor:
    """MMSE margins through the multivariate sigmoid ``[B]`` (``chunk`` as in :func:`mmse`)."""
    m = smoothed_margins(model, x, sigma, n_samples=n_samples, noise=noise, target=target, generator=generator,
                         chunk=chunk)
    return multivariate_sigmoid(m, sigma)


def softmax_confidence(model: Model, x: torch.Tensor, *, target: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax probability of the target class (the max softmax for the clean prediction) ``[B]``."""
    with torch.no_grad():
        logits = classifier_logits(model, x)
    t = check_target(target, logits)
    return logits.softmax(1).gather(1, t[:, None]).squeeze(1)


MC_UNIT = 256
"""Monte Carlo noise is drawn per example in units of this many copies (fewer when ``n_samples`` is
smaller), from a generator of its own, so the result does not depend on how copies are batched."""


def monte_carlo(model: Model, x: torch.Tensor, sigma: float, *, n_samples: int = 10_000, chunk: int | None = None,
                memory_budget_mb: float = 128.0, noise: Noise = "gaussian", target: torch.Tensor | None = None,
                target_error: float | None = None, confidence: float = 0.95,
                generator: torch.Generator | None = None) -> MonteCarloEstimate:
    """Monte Carlo p_σ(x): draw up to ``n_samples`` noisy copies per example, ``chunk`` per round.

    Forward passes hold as many rows as fit ``memory_budget_mb`` (the attribution engine's rule,
    :func:`assay.chunks.chunk_rows`, from one measured forward). ``chunk`` (copies per example per
    round, rounded up to a multiple of :data:`MC_UNIT`) defaults to what fills one pass. Each example
    draws its noise from its own generator (seeded from ``generator``) in fixed units, so without
    ``target_error`` the result is identical for every ``chunk`` and budget. With ``target_error`` set,
    an example stops drawing after the first round at which the half-width of its Wilson interval
    (at ``confidence``) is at most ``target_error`` (a smaller ``chunk`` stops closer to the target).
    """
    sigma = check_positive("sigma", sigma)
    _check_noise(noise)
    if n_samples < 1 or (chunk is not None and chunk < 1):
        raise ValueError(f"n_samples and chunk must be >= 1, got {n_samples}, {chunk}")
    if not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    if target_error is not None and not 0 < target_error < 0.5:
        raise ValueError(f"target_error must be in (0, 0.5), got {target_error}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    with torch.no_grad():
        per_row, out = row_bytes(model, x)
        t = check_target(target, classifier_logits(lambda _: out, x))
        B = x.shape[0]
        unit = min(MC_UNIT, n_samples)
        n_units = -(-n_samples // unit)
        rows = chunk_rows(per_row, memory_budget_mb, backward=False, n_rows=B * n_units * unit)
        per_round = -(-(chunk if chunk is not None else max(1, rows // B)) // unit)  # units per example per round
        per_round = min(per_round, n_units)
        seeds = torch.randint(0, 2**62, (B,), generator=generator, device=generator.device if generator else "cpu")
        gens = [torch.Generator(device=x.device).manual_seed(int(sd)) for sd in seeds]
        hits = torch.zeros(B, dtype=torch.float64, device=x.device)
        drawn = torch.zeros(B, dtype=torch.float64, device=x.device)
        done_units = 0
        active = torch.arange(B, device=x.device)
        while active.numel():
            k = min(per_round, n_units - done_units)
            step = min(k * unit, n_samples - done_units * unit)  # copies per example this round
            per_group = max(1, rows // step)
            for s in range(0, active.numel(), per_group):
                idx = active[s:s + per_group]
                eps = torch.cat([torch.cat([sample_noise((unit, *x.shape[1:]), sigma, noise, dtype=x.dtype,
                                                         device=x.device, generator=gens[int(i)])
                                            for _ in range(k)])[:step] for i in idx])
                xr = x[idx].repeat_interleave(step, 0) + eps
                pred = torch.cat([classifier_logits(model, xr[r:r + rows]).argmax(1)
                                  for r in range(0, xr.shape[0], rows)]).reshape(idx.numel(), step)
                hits[idx] += (pred == t[idx, None]).sum(1).to(torch.float64)
            drawn[active] += step
            done_units += k
            keep = drawn[active] < n_samples
            if target_error is not None:
                lo, hi = wilson_interval(hits[active], drawn[active], level=confidence)
                keep &= (hi - lo) / 2 > target_error
            active = active[keep]
        lo, hi = wilson_interval(hits, drawn, level=confidence)
    return MonteCarloEstimate((hits / drawn).to(x.dtype), lo.to(x.dtype), hi.to(x.dtype), drawn.long(), t)


Estimator = Literal["mc", "taylor", "mmse", "taylor_mvs", "mmse_mvs", "softmax"]
"""An estimator of p_σ(x) by name (Monte Carlo, the analytic ones, the softmax baseline)."""
ESTIMATORS: tuple[Estimator, ...] = get_args(Estimator)
"""Every estimator name, in display order."""


@dataclass(frozen=True, kw_only=True)
class AverageCaseConfig:
    """Average-case robustness p_σ(x) of a classifier's predictions."""

    estimator: Estimator = "mmse"
    """Which estimator: Monte Carlo, Taylor, MMSE, their multivariate-sigmoid variants, or softmax."""
    sigma: float = 0.05
    """Noise standard deviation per input coordinate (> 0)."""
    noise: Noise = "gaussian"
    """Noise distribution: gaussian N(0, σ²I) or uniform with the same standard deviation."""
    n_samples: int | None = None
    """Noisy copies: Monte Carlo maximum (default 10,000) or MMSE average (default 10)."""
    target_error: float | None = None
    """Monte Carlo only: stop an example once its confidence-interval half-width is at most this."""
    confidence: float = 0.95
    """Monte Carlo confidence level of the Wilson interval."""
    seed: int = 0
    """Seed of the noise (and of the CDF's quasi-Monte Carlo shifts)."""
    memory_budget_mb: float = 128.0
    """Monte Carlo: memory per forward pass, which sets the rows per pass (the result does not depend on it)."""
    chunk: int | None = None
    """Monte Carlo: copies per example per round (None: what fills a pass); MMSE: rows per Jacobian call
    (None: 512). Neither changes the result, except Monte Carlo's early stop under ``target_error``."""
    jitter: float = 1e-5
    """Taylor/MMSE: added to the diagonal of the margins' correlation matrix Σ (singular when C − 1 > d)."""
    abseps: float = 1e-4
    """Taylor/MMSE: absolute error target of the multivariate normal CDF Φ_Σ."""

    def __post_init__(self) -> None:
        check_choice("estimator", self.estimator, ESTIMATORS)
        check_choice("noise", self.noise, ("gaussian", "uniform"))
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ConfigError(f"sigma must be a finite number > 0, got {self.sigma}")
        if self.n_samples is not None and self.n_samples < 1:
            raise ConfigError(f"n_samples must be >= 1 (or unset for the default), got {self.n_samples}")
        if self.target_error is not None and not 0 < self.target_error < 0.5:
            raise ConfigError(f"target_error must be in (0, 0.5), got {self.target_error}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if not self.memory_budget_mb > 0:
            raise ConfigError(f"memory_budget_mb must be positive, got {self.memory_budget_mb}")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"chunk must be >= 1 (or unset for the default), got {self.chunk}")
        if not (self.jitter >= 0 and self.abseps > 0):
            raise ConfigError(f"need jitter >= 0 and abseps > 0, got {self.jitter}, {self.abseps}")


def estimate(model: Model, x: torch.Tensor, cfg: AverageCaseConfig, *,
             target: torch.Tensor | None = None) -> torch.Tensor:
    """p_σ(x) ``[B]`` by the estimator ``cfg.estimator`` (point estimates only; for Monte Carlo
    confidence intervals call :func:`monte_carlo`)."""
    g = torch.Generator(device=x.device)
    g.manual_seed(cfg.seed)
    if cfg.estimator == "mc":
        return monte_carlo(model, x, cfg.sigma, n_samples=cfg.n_samples or 10_000, chunk=cfg.chunk,
                           memory_budget_mb=cfg.memory_budget_mb, noise=cfg.noise, target=target,
                           target_error=cfg.target_error, confidence=cfg.confidence, generator=g).p
    if cfg.estimator == "taylor":
        return taylor(model, x, cfg.sigma, target=target, generator=g, jitter=cfg.jitter, abseps=cfg.abseps)
    if cfg.estimator == "taylor_mvs":
        return taylor_mvs(model, x, cfg.sigma, target=target)
    if cfg.estimator == "mmse":
        return mmse(model, x, cfg.sigma, n_samples=cfg.n_samples or 10, noise=cfg.noise, target=target, generator=g,
                    chunk=cfg.chunk or 512, jitter=cfg.jitter, abseps=cfg.abseps)
    if cfg.estimator == "mmse_mvs":
        return mmse_mvs(model, x, cfg.sigma, n_samples=cfg.n_samples or 10, noise=cfg.noise, target=target,
                        generator=g, chunk=cfg.chunk or 512)
    return softmax_confidence(model, x, target=target)
