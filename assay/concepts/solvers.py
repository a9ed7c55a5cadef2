"""Solvers of SpLiCE's nonnegative lasso: coordinate descent, batched ADMM (dense and Woodbury forms), and a
batched working-set solver for large dictionaries.

Bhalla, Oesterling, Srinivas, Calmon & Lakkaraju 2024, "Interpreting CLIP with Sparse Linear Concept
Embeddings (SpLiCE)" (NeurIPS 2024, arXiv 2402.10376). For concept rows C ``[c, d]`` and a centred query z
``[d]`` (a batch is rows of ``z [B, d]``, codes rows of ``w [B, c]``):

    w* = argmin_{w ≥ 0} P(w),   P(w) = ‖Cᵀw − z‖² + λ‖w‖₁                                     (1)

— sklearn's ``Lasso(alpha=λ/(2d), positive=True, fit_intercept=False)`` on (X = Cᵀ, y = z) minimises P/(2d).
Optimality (KKT), with g = ∇‖Cᵀw − z‖² + λ = 2C(Cᵀw − z) + λ:  g_j = 0 where w_j > 0 and g_j ≥ 0 where w_j = 0.
The dual of (1) is D(θ) = 2θᵀz − ‖θ‖² over 2Cθ ≤ λ; θ = s·r, r = z − Cᵀw, s = min(1, λ / max_j 2C_j r)
is feasible, and the duality gap P(w) − D(θ) ≥ P(w) − P(w*) bounds the suboptimality.

- :func:`nonneg_lasso_cd` — cyclic coordinate descent on the residual (sklearn's algorithm), batched over
  queries, with sweeps over the active set between full sweeps; stops when the gap ≤ tol·‖z‖².
- :func:`nonneg_lasso_admm` — the repository's ADMM (split w = x = q, penalty ρ):
  x ← (2CCᵀ + ρI)⁻¹(2Cz + ρ(q − u)), q ← max(x + u − λ/ρ, 0), u ← u + x − q; ``form="dense"`` factors the
  c×c matrix, ``form="woodbury"`` uses (2CCᵀ + ρI_c)⁻¹b = (b − 2C(ρI_d + 2CᵀC)⁻¹Cᵀb)/ρ (a d×d factor).
- :func:`nonneg_lasso_batched` — for c ≫ d: each query keeps a working set of k concepts (its support
  plus the most violated KKT conditions), the k×k subproblems of the whole batch are solved together by
  ADMM in Gram form with *polishing* (solve G_SS w_S = C_S z − λ/2 on the support S, accepted when it
  satisfies the subproblem's KKT conditions), then one product with C checks the KKT conditions of all c
  concepts; violators join the working sets and the loop repeats. The result meets the same gap test.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = ["SolverResult", "lasso_objective", "duality_gap", "kkt_violation", "nonneg_lasso_cd",
           "nonneg_lasso_admm", "nonneg_lasso_batched", "solve", "SOLVERS"]

SOLVERS = ("batched", "cd", "admm")
"""Names :func:`solve` accepts."""


class SolverResult(NamedTuple):
    """A solved batch of nonnegative lasso problems."""

    w: Tensor
    """Codes ``[B, c]`` (nonnegative)."""
    iterations: int
    """Sweeps (coordinate descent), iterations (ADMM) or working-set rounds (batched)."""
    gap: Tensor
    """Duality gap per query ``[B]`` (an upper bound on P(w) − P(w*))."""


def _check(C: Tensor, z: Tensor, lam: float) -> tuple[Tensor, Tensor, bool]:
    if C.dim() != 2:
        raise ValueError(f"concept rows C must be [c, d], got shape {tuple(C.shape)}")
    single = z.dim() == 1
    z2 = z.unsqueeze(0) if single else z
    if z2.dim() != 2 or z2.shape[1] != C.shape[1]:
        raise ValueError(f"queries must be [B, {C.shape[1]}] (the rows' dimension), got shape {tuple(z.shape)}")
    if not lam >= 0:
        raise ValueError(f"λ must be >= 0, got {lam}; SpLiCE uses 0.2-0.35 for CLIP")
    return C, z2.to(C.dtype), single


def lasso_objective(C: Tensor, z: Tensor, w: Tensor, lam: float) -> Tensor:
    """P(w) = ‖Cᵀw − z‖² + λ‖w‖₁ per query ``[B]`` (float64)."""
    C, z, w = C.double(), z.double(), w.double()
    return (w @ C - z).pow(2).sum(-1) + lam * w.abs().sum(-1)


def _gap(r: Tensor, z: Tensor, l1: Tensor, top: Tensor, lam: float) -> Tensor:
    """P − D from the residual r = z − Cᵀw, ‖w‖₁ and top = max_j 2C_j r (all per query)."""
    s = torch.where(top > lam, lam / top.clamp_min(1e-300), torch.ones_like(top))
    theta = r * s.unsqueeze(-1)
    return r.pow(2).sum(-1) + lam * l1 - (2 * (theta * z).sum(-1) - theta.pow(2).sum(-1))


def duality_gap(C: Tensor, z: Tensor, w: Tensor, lam: float) -> Tensor:
    """P(w) − D(θ) per query ``[B]`` with the feasible dual point of the module docstring (float64)."""
    C, z, w = C.double(), z.double(), w.double()
    r = z - w @ C
    return _gap(r, z, w.abs().sum(-1), (2 * (r @ C.T)).amax(-1), lam)


def kkt_violation(C: Tensor, z: Tensor, w: Tensor, lam: float) -> Tensor:
    """Largest violation of the KKT conditions per query ``[B]``: |g_j| where w_j > 0, max(−g_j, 0) where w_j = 0."""
    C, z, w = C.double(), z.double(), w.double()
    g = 2 * ((w @ C - z) @ C.T) + lam
    return torch.where(w > 0, g.abs(), (-g).clamp_min(0)).amax(-1)


def nonneg_lasso_cd(C: Tensor, z: Tensor, lam: float, *, tol: float = 1e-6, max_sweeps: int = 10_000) -> SolverResult:
    """Cyclic coordinate descent on (1), batched over the rows of ``z``; stops when every query's duality gap
    is ≤ ``tol``·‖z‖² (checked after each full sweep; between full sweeps only active coordinates move)."""
    C, z2, single = _check(C, z, lam)
    Cd, zd = C.double(), z2.double()
    c = C.shape[0]
    sq = Cd.pow(2).sum(1)
    w = torch.zeros(zd.shape[0], c, dtype=torch.float64)
    r = zd.clone()
    target = tol * zd.pow(2).sum(-1).clamp_min(1e-300)
    sweeps = 0

    def sweep(coords: list[int]) -> float:
        biggest = 0.0
        for j in coords:
            if sq[j] == 0:
                continue
            old = w[:, j]
            new = (old + (r @ Cd[j] - lam / 2) / sq[j]).clamp_min(0)
            delta = new - old
            if bool(delta.any()):
                w[:, j] = new
                r.sub_(delta.unsqueeze(1) * Cd[j])
                biggest = max(biggest, float(delta.abs().max()))
        return biggest

    everything = list(range(c))
    while sweeps < max_sweeps:
        sweep(everything)
        sweeps += 1
        gap = duality_gap(Cd, zd, w, lam)
        if bool((gap <= target).all()):
            break
        active = w.gt(0).any(0).nonzero().flatten().tolist()
        for _ in range(100):  # polish the active set before the next full sweep
            sweeps += 1
            if sweep(active) <= tol:
                break
    gap = duality_gap(Cd, zd, w, lam)
    w = w.to(C.dtype)
    return SolverResult(w[0] if single else w, sweeps, gap)


def nonneg_lasso_admm(C: Tensor, z: Tensor, lam: float, *, rho: float = 5.0, tol: float = 1e-6,
                      max_iter: int = 2000, form: Literal["woodbury", "dense"] = "woodbury") -> SolverResult:
    """The SpLiCE repository's ADMM (module docstring), batched over the rows of ``z``; stops when, for every
    query, ‖x − q‖ < tol and ρ‖q − q_prev‖ < tol. ``form`` picks the c×c (dense) or d×d (Woodbury) factor:
    the two give the same iterates up to rounding."""
    C, z2, single = _check(C, z, lam)
    if form not in ("woodbury", "dense"):
        raise ValueError(f"form must be 'woodbury' or 'dense', got {form!r}")
    c, d = C.shape
    eye = torch.eye(c if form == "dense" else d, dtype=C.dtype)
    if form == "dense":
        L = torch.linalg.cholesky(2 * C @ C.T + rho * eye)
    else:
        L = torch.linalg.cholesky(rho * eye + 2 * C.T @ C)
    Cz2 = 2 * z2 @ C.T
    q = torch.zeros(z2.shape[0], c, dtype=C.dtype)
    u = torch.zeros_like(q)
    it = 0
    while it < max_iter:
        it += 1
        b = Cz2 + rho * (q - u)
        if form == "dense":
            x = torch.cholesky_solve(b.T, L).T
        else:
            x = (b - 2 * torch.cholesky_solve((b @ C).T, L).T @ C.T) / rho
        q_prev = q
        q = (x + u - lam / rho).clamp_min(0)
        u = u + x - q
        if bool(((x - q).norm(dim=-1) < tol).all() and (rho * (q - q_prev).norm(dim=-1) < tol).all()):
            break
    gap = duality_gap(C, z2, q, lam)
    return SolverResult(q[0] if single else q, it, gap)


def _polish(G: Tensor, b: Tensor, q: Tensor, lam: float, tol: float) -> tuple[Tensor, Tensor]:
    """Exact solutions on each query's support S = {q > 0}: G_SS w_S = b_S − λ/2 (batched, masked). Returns the
    candidate ``[B, k]`` and which queries it solves (w_S ≥ 0 and the subproblem's KKT conditions hold)."""
    S = q > 0
    k = G.shape[-1]
    eye = torch.eye(k, dtype=G.dtype).expand_as(G)
    both = S.unsqueeze(-1) & S.unsqueeze(-2)
    A = torch.where(both, G, eye)
    rhs = torch.where(S, b - lam / 2, torch.zeros_like(b))
    w, info = torch.linalg.solve_ex(A, rhs.unsqueeze(-1))
    w = w.squeeze(-1).masked_fill(~S, 0)
    g = 2 * ((G @ w.unsqueeze(-1)).squeeze(-1) - b) + lam
    bad = torch.where(S, (w < 0) | (g.abs() > tol), g < -tol).any(-1) | (info != 0)
    return w.clamp_min(0), ~bad


def _admm_gram(G: Tensor, b: Tensor, lam: float, q: Tensor, *, rho: float, tol: float, max_iter: int,
               polish_every: int = 10) -> Tensor:
    """Batched ADMM on k×k Gram subproblems ``G [B, k, k]``, ``b [B, k]`` (= C_W z), warm-started at q; every
    ``polish_every`` iterations the unsolved queries are polished, and solved ones leave the batch."""
    k = G.shape[-1]
    inv = torch.cholesky_inverse(torch.linalg.cholesky(2 * G + rho * torch.eye(k, dtype=G.dtype)))  # k is small
    out = q.clone()
    act = torch.arange(G.shape[0])
    u = torch.zeros_like(q)
    for it in range(1, max_iter + 1):
        x = (inv @ (2 * b + rho * (q - u)).unsqueeze(-1)).squeeze(-1)
        q = (x + u - lam / rho).clamp_min(0)
        u = u + x - q
        if it % polish_every == 0 or it == max_iter:
            w, ok = _polish(G, b, q, lam, tol)
            out[act[ok]] = w[ok]
            keep = ~ok
            if not bool(keep.any()):
                return out
            act, G, b, q, u, inv = act[keep], G[keep], b[keep], q[keep], u[keep], inv[keep]
    out[act] = q
    return out


def nonneg_lasso_batched(C: Tensor, z: Tensor, lam: float, *, tol: float = 1e-6, working_set: int = 32,
                         rho: float = 5.0, max_rounds: int = 20, max_iter: int = 2000) -> SolverResult:
    """The working-set solver of the module docstring for large dictionaries (c ≫ d): per-query working sets
    of ``working_set`` concepts (grown as needed), k×k subproblems solved together by ADMM with polishing,
    one product with C per round to check every concept's KKT condition. Stops when every query's duality
    gap is ≤ ``tol``·‖z‖² (as :func:`nonneg_lasso_cd`)."""
    C, z2, single = _check(C, z, lam)
    B, c = z2.shape[0], C.shape[0]
    zd = z2.double()
    target = tol * zd.pow(2).sum(-1).clamp_min(1e-300)
    kkt_tol = 1e-3 * tol ** 0.5  # subproblem gradient tolerance (the gap test decides convergence)
    vtol = max(kkt_tol, 50 * torch.finfo(C.dtype).eps)  # a full-gradient violation above rounding
    corr = z2 @ C.T  # C_j r at w = 0; the KKT gradient is g = λ − 2·corr
    w = torch.zeros(B, c, dtype=C.dtype)
    gap = torch.full((B,), float("inf"), dtype=torch.float64)
    todo = torch.arange(B)
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        wt, ct, zt = w[todo], corr[todo], zd[todo]
        support = wt > 0
        k = min(c, max(working_set, 2 * int(support.sum(-1).max())))
        score = torch.where(support, torch.full_like(ct, float("inf")), ct)
        idx = score.topk(k, dim=-1).indices  # [n, k]: the support, then the most violated conditions
        Cw = C[idx].double()  # [n, k, d]
        bz = (Cw @ zt.unsqueeze(-1)).squeeze(-1)
        sol = _admm_gram(Cw @ Cw.transpose(1, 2), bz, lam, wt.double().gather(1, idx), rho=rho, tol=kkt_tol,
                         max_iter=max_iter)
        w[todo] = torch.zeros_like(wt).scatter_(1, idx, sol.to(C.dtype))
        r = zt - (sol.unsqueeze(1) @ Cw).squeeze(1)
        ct = r.to(C.dtype) @ C.T  # the one product with all of C per round
        corr[todo] = ct
        violated = ((w[todo] == 0) & (lam - 2 * ct < -vtol)).any(-1)
        gap[todo] = _gap(r, zt, sol.sum(-1), 2 * ct.double().amax(-1), lam)
        todo = todo[violated | (gap[todo] > target[todo])]
        if len(todo) == 0:
            break
    return SolverResult(w[0] if single else w, rounds, gap)


def solve(C: Tensor, z: Tensor, lam: float, *, solver: str = "batched", tol: float = 1e-6) -> SolverResult:
    """Solve (1) with the named solver (``batched``, ``cd`` or ``admm`` (Woodbury form))."""
    if solver == "batched":
        return nonneg_lasso_batched(C, z, lam, tol=tol)
    if solver == "cd":
        return nonneg_lasso_cd(C, z, lam, tol=tol)
    if solver == "admm":
        return nonneg_lasso_admm(C, z, lam, tol=tol)
    raise ValueError(f"unknown solver {solver!r}; choose from: {', '.join(SOLVERS)}")
