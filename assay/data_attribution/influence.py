"""Influence functions: S[i, t] = ∇ℓ(z′_t)ᵀ (H + λI)⁻¹ ∇ℓ(z_i), with explicit, CG and LiSSA solvers.

Koh & Liang 2017, "Understanding Black-box Predictions via Influence Functions" (ICML 2017).
H is the Hessian of the training objective J(θ) = (1/n) Σ_j ℓ(z_j; θ) + (l2/2)‖θ‖² (the *mean* loss,
so removing z_i moves θ by ≈ H⁻¹∇ℓ(z_i)/n and the target loss by ≈ S[i, t]/n; S > 0: z_i helps).

Solvers for x = (H + λI)⁻¹ b:
- explicit: form H with ``torch.func.hessian`` (tiny models), Cholesky solve;
- conjugate gradient on Hessian-vector products (``jvp`` of ``grad``), all columns at once;
- LiSSA (Agarwal, Bullins & Hazan 2017, "Second-Order Stochastic Optimization for Machine
  Learning in Linear Time"): h ← b + (1 − λ/s) h − H_batch h / s, result h/s, whose fixed point is
  (H + λI)⁻¹ b; it converges only if s > ‖H‖, so the scale defaults to 1.2 × a power-iteration
  estimate of ‖H + λI‖.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jvp, vmap

from assay.data_attribution.grads import ParamSelection, cross_entropy, select_parameters

__all__ = [
    "objective_fn",
    "loss_hessian",
    "make_hvp",
    "solve_explicit",
    "solve_cg",
    "solve_lissa",
    "spectral_norm",
    "influence_scores",
]

Hvp = Callable[[torch.Tensor], torch.Tensor]


def objective_fn(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    params: Sequence[str] | ParamSelection | None = None,
    l2: float = 0.0,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """``(J, θ)``: J(θ_flat) = mean cross-entropy + (l2/2)‖θ‖² over the selected parameters, and the
    current flat θ."""
    sel = params if isinstance(params, ParamSelection) else select_parameters(model, params)
    all_params = dict(model.named_parameters())
    fixed = {n: p.detach() for n, p in all_params.items() if n not in sel.names}
    fixed.update(dict(model.named_buffers()))
    theta = torch.cat([all_params[n].detach().reshape(-1) for n in sel.names])
    sizes = [int(torch.Size(s).numel()) for s in sel.shapes]

    def objective(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, sizes)
        state = {**fixed, **{n: p.reshape(s) for n, p, s in zip(sel.names, parts, sel.shapes)}}
        out = functional_call(model, state, (inputs,))
        return cross_entropy(out, targets).mean() + 0.5 * l2 * (flat * flat).sum()

    return objective, theta


def loss_hessian(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    params: Sequence[str] | ParamSelection | None = None,
    l2: float = 0.0,
) -> torch.Tensor:
    """The explicit Hessian ``[P, P]`` of the training objective (tiny models only)."""
    fn, theta = objective_fn(model, inputs, targets, params=params, l2=l2)
    if theta.numel() > 20_000:
        raise ValueError(f"explicit Hessian of {theta.numel()} parameters is too large; use CG or LiSSA")
    return hessian(fn)(theta).detach()


def make_hvp(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    params: Sequence[str] | ParamSelection | None = None,
    l2: float = 0.0,
) -> Hvp:
    """v ``[P]`` or ``[P, m]`` ↦ H v, by forward-over-reverse (``jvp`` of ``grad``), columns vmapped."""
    fn, theta = objective_fn(model, inputs, targets, params=params, l2=l2)
    g = grad(fn)

    def one(v: torch.Tensor) -> torch.Tensor:
        return jvp(g, (theta,), (v,))[1]

    many = vmap(one, in_dims=1, out_dims=1)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return (one(v) if v.dim() == 1 else many(v)).detach()

    return hvp


def solve_explicit(h: torch.Tensor, b: torch.Tensor, *, damping: float = 0.0) -> torch.Tensor:
    """(H + λI)⁻¹ b by Cholesky, in float64."""
    a = h.double() + damping * torch.eye(h.shape[0], dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise ValueError("H + damping·I is not positive definite; increase the damping (or l2)")
    return torch.cholesky_solve(b.double().reshape(h.shape[0], -1), chol).reshape(b.shape).to(b.dtype)


def solve_cg(
    hvp: Hvp, b: torch.Tensor, *, damping: float = 0.0, max_iter: int = 100, tol: float = 1e-8
) -> torch.Tensor:
    """Conjugate gradient for (H + λI) x = b, every column of ``b [P, m]`` at once."""
    squeeze = b.dim() == 1
    b2 = b[:, None] if squeeze else b

    def op(v: torch.Tensor) -> torch.Tensor:
        return hvp(v) + damping * v

    x = torch.zeros_like(b2)
    r = b2.clone()
    p = r.clone()
    rs = (r * r).sum(0)
    b_norm = (b2 * b2).sum(0).sqrt().clamp_min(1e-30)
    for _ in range(max_iter):
        active = (rs.sqrt() / b_norm) >= tol
        if not bool(active.any()):
            break
        ap = op(p)
        curv = (p * ap).sum(0)
        if bool((active & (curv <= 0)).any()):
            worst = float((curv / (p * p).sum(0).clamp_min(1e-30))[active].min())
            raise ValueError(
                f"H + damping·I has negative curvature along a CG direction (pᵀ(H + λI)p / ‖p‖² = {worst:.3g}): "
                "the Hessian is indefinite (a non-convex model) and CG would return garbage; increase the "
                "damping above the most negative eigenvalue, or use TRAK / EK-FAC, whose curvature is PSD"
            )
        alpha = rs / curv.clamp_min(1e-30)
        x += alpha * p
        r -= alpha * ap
        rs_new = (r * r).sum(0)
        p = r + (rs_new / rs.clamp_min(1e-30)) * p
        rs = rs_new
    return x[:, 0] if squeeze else x


def spectral_norm(hvp: Hvp, p: int, *, iters: int = 50, generator: torch.Generator | None = None) -> float:
    """‖H‖₂ by power iteration."""
    v = torch.randn(p, generator=generator)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        w = hvp(v)
        lam = float(w.norm())
        if lam == 0.0:
            return 0.0
        v = w / lam
    return lam


def solve_lissa(
    hvp_batch: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    n_train: int,
    *,
    damping: float = 0.0,
    scale: float,
    depth: int = 1000,
    repeats: int = 1,
    batch_size: int = 64,
    generator: torch.Generator,
) -> torch.Tensor:
    """LiSSA estimate of (H + λI)⁻¹ b; ``hvp_batch(v, idx)`` is the Hessian of the objective on training
    rows ``idx`` times ``v``. ``scale`` must exceed ‖H + λI‖ (see :func:`spectral_norm`)."""
    if scale <= 0:
        raise ValueError(f"LiSSA scale must be > 0, got {scale}")
    out = torch.zeros_like(b)
    for _ in range(repeats):
        h = b.clone()
        for _ in range(depth):
            idx = torch.randint(0, n_train, (batch_size,), generator=generator)
            h = b + (1.0 - damping / scale) * h - hvp_batch(h, idx) / scale
        out += h / scale
    return out / repeats


def influence_scores(train_grads: torch.Tensor, ihvp_targets: torch.Tensor) -> torch.Tensor:
    """S = G_train (H + λI)⁻¹ G_targetᵀ ``[n, m]`` from train loss gradients ``[n, P]`` and the solved
    target side ``[P, m]``."""
    if train_grads.shape[1] != ihvp_targets.shape[0]:
        raise ValueError(
            f"train gradients have {train_grads.shape[1]} parameters, solved targets {ihvp_targets.shape[0]}"
        )
    return train_grads @ ihvp_targets
