"""FullGrad: input-gradients plus bias-gradients, a complete decomposition of the output.

Srinivas & Fleuret (2019), "Full-Gradient Representation for Neural Network Visualization": for a
ReLU/piecewise-linear network (BatchNorm in eval mode)

    f_t(x) = ⟨∇_x f_t, x⟩ + Σ_ℓ Σ_units ∇_{h_ℓ} f_t ⊙ b_ℓ,

over every layer ℓ with a bias (Linear, Conv, BatchNorm with its effective bias
b_BN = β − μ_run·γ/√(σ²_run + ε)). Conv biases broadcast over space. The saliency map sums
ψ(∇_x f ⊙ x) and the bilinearly upsampled ψ(bias-gradient maps) of every 4-D layer output, with
ψ(M) = |M| min–max normalised per example ("simple" FullGrad uses ψ(∇_h f); "smooth" averages over
Gaussian-noised inputs).

Networks with smooth blocks (GELU, LayerNorm, attention) are not piecewise linear; the identity
still holds once each such block's *implicit bias* y − J(z)·z (its output minus its Jacobian applied
to its input, computed by forward-mode AD) is added — name those blocks in ``implicit_bias`` (their
inner biases are then not counted again). ``completeness_gap`` reports how far the decomposition
is from f_t(x).

Biases and gradients are paired per *call* by the tensor recorded in the forward hook (never by
registration order, the bug of idiap/fullgrad-saliency#13), so reused modules count once per call;
each recorded output is passed on as a clone, so in-place ops downstream (``ReLU(inplace=True)``)
cannot overwrite it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from assay.attribution import engine
from assay.attribution.engine import EngineConfig
from assay.config import ConfigError
from assay.hooks import resolve

__all__ = ["FullGradConfig", "FullGradResult", "fullgrad", "effective_bias"]

_EXPLICIT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm)


@dataclass(frozen=True, kw_only=True)
class FullGradConfig(EngineConfig):
    """FullGrad saliency and its completeness decomposition.

    Not ``stochastic``: only the 'smooth' variant draws noise. Not ``complete`` in the engine's sense:
    the decomposition is exact, but the saliency map (ψ-normalised) does not sum to the output."""

    name: ClassVar[str] = "fullgrad"

    variant: Literal["fullgrad", "simple", "smooth"] = "fullgrad"
    """'fullgrad': ψ(∇h ⊙ b); 'simple': ψ(∇h); 'smooth': FullGrad averaged over noisy inputs."""
    n_samples: int = 25
    """Noisy copies for the smooth variant."""
    noise_level: float = 0.15
    """Noise σ as a fraction of each example's value range (smooth variant)."""
    implicit_bias: tuple[str, ...] = ()
    """Sites of smooth blocks (GELU MLPs, LayerNorms, attention) whose implicit bias y − J(z)z is
    added so the decomposition is exact for non-piecewise-linear networks."""
    seed: int = 0
    """Seed of the smooth variant's noise when no generator is passed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in ("fullgrad", "simple", "smooth"):
            raise ConfigError(f"variant must be 'fullgrad', 'simple' or 'smooth', got {self.variant!r}")
        if self.n_samples < 1:
            raise ConfigError(f"n_samples must be ≥ 1, got {self.n_samples}")


class FullGradResult(NamedTuple):
    """FullGrad output for targets ``[B]``."""

    saliency: torch.Tensor
    """The FullGrad map: ``[B, H, W]`` for image inputs ``[B, C, H, W]``, else shaped like x."""
    input_term: torch.Tensor
    """∇_x f_t ⊙ x, shaped like x."""
    bias_terms: dict[str, torch.Tensor]
    """``"site#call" -> ∇_h f_t ⊙ b`` per biased layer call (implicit-bias blocks included), shaped like h."""
    bias_total: torch.Tensor
    """Σ over all bias terms, ``[B]``."""
    output: torch.Tensor
    """f_t(x), ``[B]``."""
    completeness_gap: torch.Tensor
    """f_t(x) − (Σ input_term + bias_total), ``[B]``; ~0 for exact decompositions."""
    target: torch.Tensor
    """The explained class per example, ``[B]``."""


def effective_bias(m: nn.Module) -> torch.Tensor | None:
    """The additive constant of a Linear/Conv (its bias) or eval-mode BatchNorm (β − μγ/√(σ²+ε))."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.training or m.running_mean is None:
            raise ValueError(
                f"{type(m).__name__} must be in eval mode with running statistics for FullGrad; call model.eval()"
            )
        scale = torch.rsqrt(m.running_var + m.eps)
        gamma = m.weight if m.weight is not None else torch.ones_like(scale)
        beta = m.bias if m.bias is not None else torch.zeros_like(scale)
        return (beta - m.running_mean * gamma * scale).detach()
    b = getattr(m, "bias", None)
    return None if b is None else b.detach()


def _implicit(module: nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y − J(z)·z for a block; a block whose input is not floating point (positions) is all bias."""
    if not z.dtype.is_floating_point:
        return y.detach()
    try:
        _, jz = torch.func.jvp(module, (z,), (z,))
    except (RuntimeError, NotImplementedError):
        try:
            _, jz = torch.autograd.functional.jvp(module, (z,), (z,))
        except (RuntimeError, NotImplementedError) as e:
            raise ValueError(
                f"cannot compute the implicit bias of {type(module).__name__}: it supports neither forward-mode "
                f"nor double-backward AD ({e}); use an eager implementation (e.g. attn_impl='eager')"
            ) from None
    return (y - jz).detach()


def _decompose(model, x, targets, output, implicit_sites):
    """One forward + backward: (input_term, {key: (grad_h, bias_term)}, f_t)."""
    implicit = {resolve(model, s): s for s in implicit_sites} if isinstance(model, nn.Module) else {}
    inside = {sub for m in implicit for sub in m.modules() if sub is not m}
    names = {m: n for n, m in model.named_modules()} if isinstance(model, nn.Module) else {}
    records: list[tuple[str, torch.Tensor, torch.Tensor | None, nn.Module, torch.Tensor | None]] = []
    calls: dict[str, int] = {}
    state = {"on": True}

    def hook(m, args, out):
        if not state["on"] or not isinstance(out, torch.Tensor):
            return None
        key = names.get(m, type(m).__name__)
        calls[key] = calls.get(key, 0) + 1
        z = None
        if m in implicit:
            z = args[0].detach().clone() if args and isinstance(args[0], torch.Tensor) else None
            if z is None:
                raise ValueError(f"implicit-bias block {key!r} must take a tensor as its first argument")
        elif effective_bias(m) is None:
            return None
        if out.dim() == 0 or out.shape[0] != xg.shape[0]:
            raise ValueError(
                f"module {key!r} returns an output of shape {tuple(out.shape)} without the batch dimension "
                f"{xg.shape[0]}; FullGrad needs per-example outputs (feed such constants through the input)"
            )
        records.append((f"{key}#{calls[key] - 1}", out, effective_bias(m) if z is None else None, m, z))
        return out.clone()

    mods = [m for m in (model.modules() if isinstance(model, nn.Module) else [])
            if m in implicit or (isinstance(m, _EXPLICIT) and m not in inside)]
    handles = [m.register_forward_hook(hook) for m in mods]
    xg = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            y = engine.select_output(model(xg), output)
            sel = y.gather(1, targets[:, None])[:, 0]
            outs = [r[1] for r in records]
            grads = torch.autograd.grad(sel.sum(), [xg, *outs], allow_unused=True)
    except RuntimeError as e:
        if "inplace" in str(e) or "in-place" in str(e):
            raise ValueError(
                "FullGrad failed on an in-place operation on the input or a recorded activation "
                f"({e}); build the model with inplace=False activations"
            ) from None
        raise
    finally:
        for h in handles:
            h.remove()
    state["on"] = False
    if grads[0] is None:
        raise RuntimeError("the model output does not depend on its input (no gradient path)")
    terms = {}
    for (key, out, b, m, z), g in zip(records, grads[1:]):
        g = torch.zeros_like(out) if g is None else g
        if z is not None:
            bias_map = _implicit(m, z, out)
        elif out.dim() >= 2 and not isinstance(m, nn.Linear):
            bias_map = b.view(1, -1, *([1] * (out.dim() - 2))).expand_as(out)
        else:
            bias_map = b.expand_as(out)
        terms[key] = (g.detach(), g.detach() * bias_map)
    return grads[0].detach() * x, terms, sel.detach()


def _psi(m: torch.Tensor) -> torch.Tensor:
    m = m.abs().flatten(1)
    m = m - m.min(1, keepdim=True).values
    return (m / (m.max(1, keepdim=True).values + 1e-6))


def _saliency(x, input_term, terms, simple: bool) -> torch.Tensor:
    B = x.shape[0]
    if x.dim() != 4:
        return _psi(input_term).view_as(x)
    H, W = x.shape[-2:]
    sal = _psi(input_term).view_as(x).sum(1)
    for grad, term in terms.values():
        m = grad if simple else term
        if m.dim() != 4 or m.shape[0] != B:
            continue
        up = F.interpolate(_psi(m).view_as(m), size=(H, W), mode="bilinear", align_corners=True)
        sal = sal + up.sum(1)
    return sal


def fullgrad(
    model, x: torch.Tensor, target=None, *, config: FullGradConfig = FullGradConfig(),
    generator: torch.Generator | None = None,
) -> FullGradResult:
    """FullGrad saliency and the decomposition f_t(x) = Σ input_term + Σ bias terms (+ gap)."""
    engine._check_float(x)
    t, _, single, _ = engine.target_outputs(model, x, target, config.output)
    if not single:
        raise ValueError("FullGrad explains one target per example; pass target as an int or [B] tensor")
    t = t[:, 0]
    input_term, terms, out = _decompose(model, x, t, config.output, config.implicit_bias)
    bias_total = sum((term.flatten(1).sum(1) for _, term in terms.values()), torch.zeros_like(out))
    gap = out - (input_term.flatten(1).sum(1) + bias_total)
    if config.variant == "smooth":
        gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
        flat = x.flatten(1)
        sigma = config.noise_level * (flat.max(1).values - flat.min(1).values)
        eps = torch.randn((config.n_samples, *x.shape), generator=gen, dtype=x.dtype).to(x.device)
        xs = (x[None] + sigma.view(1, -1, *([1] * (x.dim() - 1))) * eps).flatten(0, 1)
        s_in, s_terms, _ = _decompose(model, xs, t.repeat(config.n_samples), config.output, config.implicit_bias)
        avg = {k: (g.view(config.n_samples, *x.shape[:1], *g.shape[1:]).mean(0),) * 2 for k, (g, _) in s_terms.items()}
        mean_in = s_in.view(config.n_samples, *x.shape).mean(0)
        sal = _saliency(x, mean_in, avg, simple=True)
    else:
        sal = _saliency(x, input_term, terms, simple=config.variant == "simple")
    bias_terms = {k: term for k, (_, term) in terms.items()}
    return FullGradResult(sal, input_term, bias_terms, bias_total, out, gap, t)
