"""EK-FAC influence: a Kronecker-factored, eigenvalue-corrected Gauss–Newton for linear layers.

George, Laurent, Bouthillier, Ballas & Vincent 2018, "Fast Approximate Natural Gradient Descent in a
Kronecker-factored Eigenbasis"; used for influence by Grosse et al. 2023, "Studying Large Language
Model Generalization with Influence Functions". Per ``nn.Linear`` layer with inputs ā (a 1 appended
for the bias) and output gradients s (labels sampled from the model — the true Fisher — or the
given labels — the empirical Fisher):

    A = E[ā āᵀ] = Q_A Λ_A Q_Aᵀ,   S = E[s sᵀ] = Q_S Λ_S Q_Sᵀ,
    Λ*_{od} = E[(Q_Sᵀ s)_o² (Q_Aᵀ ā)_d²]            (corrected eigenvalues, rank-1 per-example DW)
    (G + λI)⁻¹ V = Q_S [(Q_Sᵀ V Q_A) ⊘ (Λ* + λ)] Q_Aᵀ,  λ = damping or 0.1 · mean Λ*.

Layers are treated as independent (block-diagonal G). Inputs must be ``[B, d_in]`` (one ā per example).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import nn

from assay.data_attribution.featurize import LinearPlan, linear_plan
from assay.data_attribution.grads import ParamSelection, select_parameters

__all__ = ["EKFACLayer", "fit_ekfac", "layer_grads", "ekfac_scores"]


class EKFACLayer(NamedTuple):
    """One layer's eigenbasis and corrected eigenvalues."""

    q_a: torch.Tensor
    """Eigenvectors of A ``[d_in, d_in]``."""
    q_s: torch.Tensor
    """Eigenvectors of S ``[d_out, d_out]``."""
    eigen: torch.Tensor
    """Corrected eigenvalues Λ* ``[d_out, d_in]``."""
    damping: float
    """λ added to Λ*."""


def _plan(model: nn.Module, params: Sequence[str] | ParamSelection | None) -> list[LinearPlan]:
    sel = params if isinstance(params, ParamSelection) else select_parameters(model, params)
    plan = linear_plan(model, sel)
    if plan is None:
        raise ValueError("EK-FAC supports nn.Linear weights/biases only; select those parameters")
    return plan


def layer_grads(
    model: nn.Module, plan: list[LinearPlan], inputs: torch.Tensor, targets: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (ā ``[B, d_in]``, s ``[B, d_out]``): per-example inputs and loss gradients at the output."""
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def make(p: LinearPlan):
        def hook(module, args, output):
            cache[p.name] = (args[0].detach(), output)

        return hook

    handles = [p.module.register_forward_hook(make(p)) for p in plan]
    try:
        with torch.enable_grad():
            logits = model(inputs)
            loss = nn.functional.cross_entropy(logits, targets, reduction="sum")
            outs = torch.autograd.grad(loss, [cache[p.name][1] for p in plan])
    finally:
        for h in handles:
            h.remove()
    result = {}
    for p, s in zip(plan, outs):
        a = cache[p.name][0]
        if a.dim() != 2:
            raise ValueError(f"EK-FAC needs [B, d] inputs at layer {p.name!r}, got {tuple(a.shape)}")
        parts = ([a] if p.weight else []) + ([torch.ones_like(a[:, :1])] if p.bias else [])
        result[p.name] = (torch.cat(parts, 1), s.detach())
    return result


def fit_ekfac(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    params: Sequence[str] | ParamSelection | None = None,
    fisher: Literal["true", "empirical"] = "true",
    n_samples: int = 1,
    damping: float | None = None,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
) -> dict[str, EKFACLayer]:
    """Fit the EK-FAC factors on the training data (two passes: covariances, then corrected eigenvalues)."""
    if fisher not in ("true", "empirical"):
        raise ValueError(f"fisher must be 'true' or 'empirical', got {fisher!r}")
    plan = _plan(model, params)

    def batches():
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size]
            if fisher == "empirical":
                yield layer_grads(model, plan, x, targets[start : start + batch_size])
                continue
            with torch.no_grad():
                probs = torch.softmax(model(x), -1)
            for _ in range(n_samples):
                yield layer_grads(model, plan, x, torch.multinomial(probs, 1, generator=generator).squeeze(1))

    cov: dict[str, list[torch.Tensor]] = {}
    count = 0
    for lg in batches():
        count += next(iter(lg.values()))[0].shape[0]
        for name, (a, s) in lg.items():
            c = cov.setdefault(name, [torch.zeros(a.shape[1], a.shape[1], dtype=torch.float64),
                                      torch.zeros(s.shape[1], s.shape[1], dtype=torch.float64)])
            c[0] += a.double().T @ a.double()
            c[1] += s.double().T @ s.double()
    bases = {n: (torch.linalg.eigh(c[0] / count)[1], torch.linalg.eigh(c[1] / count)[1]) for n, c in cov.items()}
    eig = {n: torch.zeros(qs.shape[0], qa.shape[0], dtype=torch.float64) for n, (qa, qs) in bases.items()}
    for lg in batches():
        for name, (a, s) in lg.items():
            qa, qs = bases[name]
            eig[name] += ((s.double() @ qs) ** 2).T @ ((a.double() @ qa) ** 2)
    out = {}
    for name, (qa, qs) in bases.items():
        lam = eig[name] / count
        d = 0.1 * float(lam.mean()) if damping is None else float(damping)
        out[name] = EKFACLayer(qa.float(), qs.float(), lam.float(), d)
    return out


def ekfac_scores(
    model: nn.Module,
    factors: dict[str, EKFACLayer],
    train: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    *,
    params: Sequence[str] | ParamSelection | None = None,
    block: int = 256,
) -> torch.Tensor:
    """S[i, t] = Σ_layers ⟨DW_i, (G + λI)⁻¹ DW_t⟩ ``[n, m]`` with rank-1 per-example gradients DW = s āᵀ."""
    plan = _plan(model, params)
    tg = layer_grads(model, plan, *target)
    inv_t = {}
    for p in plan:
        f = factors[p.name]
        a, s = tg[p.name]
        inv_t[p.name] = ((s @ f.q_s)[:, :, None] * (a @ f.q_a)[:, None, :]) / (f.eigen + f.damping)  # [m, o, d]
    n = train[0].shape[0]
    out = torch.zeros(n, target[0].shape[0])
    for start in range(0, n, block):
        lg = layer_grads(model, plan, train[0][start : start + block], train[1][start : start + block])
        for p in plan:
            f = factors[p.name]
            a, s = lg[p.name]
            out[start : start + block] += torch.einsum("no,mod,nd->nm", s @ f.q_s, inv_t[p.name], a @ f.q_a)
    return out
