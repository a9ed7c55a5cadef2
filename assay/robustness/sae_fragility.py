"""SAE fragility: small input perturbations that change which dictionary latents fire while the
model's output stays (almost) the same.

Li, Srinivas, Bhalla & Lakkaraju 2025/2026, "Interpretability Illusions with Sparse Autoencoders:
Evaluating Robustness of Concept Representations" (arXiv 2505.16004; EACL 2026); reference code
``AI4LIFE-GROUP/sae_robustness``. :func:`fragility_attack` is the continuous version (perturbing
embeddings or any real-valued input by PGD); :func:`token_fragility_attack` the token-replacement
version by generalised GCG (gradient-ranked candidate tokens, exact scoring of sampled swaps).

With h(x) the activation at the SAE's site, z = pre-activations of the lens, S(x) = {i : encode(h)_i > 0}
and p(x) the model's output distribution, projected gradient descent on δ (‖δ‖ ≤ ε) minimises

    untargeted   cos(z(x + δ), z(x))              success: |S(x+δ) ∩ S(x)|/|S(x)| ≤ τ
    targeted     −cos(z(x + δ), z_target)         success: |S(x+δ) ∩ S_t|/|S_t| ≥ τ
    activate j   −z_j(x + δ)                      success: latent j fires
    deactivate j  z_j(x + δ)                      success: latent j does not fire
    + w·max(0, KL(p(x) ‖ p(x + δ)) − κ)/κ         every success also needs KL ≤ κ

and keeps, per example, the successful perturbation of smallest norm. The pre-activations are the
SAE's own (:func:`pre_activations`: exactly the scores whose positive part or top-k its encoder
keeps, for every assay SAE but SpaDE); otherwise ``lens.encode`` itself (whose gradient vanishes for
latents that are off — pass ``pre_activation``).
A random direction of the same norm is the baseline (:func:`random_baseline`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from assay.lens import Lens
from assay.robustness.adversarial import project
from assay.robustness.validate import check_nonnegative, check_positive

__all__ = ["FragilityResult", "fragility_attack", "random_baseline", "pre_activations", "active_set_overlap",
           "site_forward", "TokenFragilityResult", "token_fragility_attack"]

Objective = Literal["untargeted", "targeted", "activate", "deactivate"]
Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class FragilityResult(NamedTuple):
    """Outcome of the attack per example."""

    x_adv: torch.Tensor
    """Perturbed inputs (the smallest successful perturbation; the last iterate where it failed)."""
    success: torch.Tensor
    """Objective met with KL ≤ κ ``[B]`` (bool)."""
    overlap: torch.Tensor
    """|S(x′) ∩ S_ref|/|S_ref| with S_ref = S(x) (S_target when targeted) ``[B]``."""
    kl: torch.Tensor
    """KL(p(x) ‖ p(x′)) of the model outputs ``[B]``."""
    perturbation_norm: torch.Tensor
    """‖x′ − x‖ in the attack's norm ``[B]``."""
    relative_perturbation: torch.Tensor
    """‖x′ − x‖/‖x‖ in the same norm ``[B]``."""


def pre_activations(lens: Lens, h: torch.Tensor) -> torch.Tensor:
    """Differentiable latent scores whose positive part (or top-k) decides which latents fire.

    The lens's own ``pre_acts(h)`` when it has one (assay BatchTopK, Matryoshka, JumpReLU); for an
    assay ReLU SAE h W_enc + b_enc (it does not centre by b_dec); for matching pursuit the first
    greedy step's correlations (h·s − b_dec) W_decᵀ; otherwise (h − b_dec) W_enc + b_enc when the
    lens has those weights (TopK, archetypal, hand-built lenses), else ``lens.encode(h)``."""
    own = getattr(lens, "pre_acts", None)
    if callable(own):
        return own(h)
    arch = getattr(lens, "architecture", None)
    if arch == "mp":
        return (h * lens.input_scale - lens.b_dec) @ lens.W_dec.T  # type: ignore[attr-defined]
    W, b = getattr(lens, "W_enc", None), getattr(lens, "b_enc", None)
    if isinstance(W, torch.Tensor) and isinstance(b, torch.Tensor) and W.shape[0] == h.shape[-1]:
        if arch == "relu":
            return h @ W + b
        b_dec = getattr(lens, "b_dec", None)
        centred = h - b_dec if isinstance(b_dec, torch.Tensor) and b_dec.shape == h.shape[-1:] else h
        return centred @ W + b
    return lens.encode(h)


def active_set_overlap(codes: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """|S(codes) ∩ S(reference)|/|S(reference)| per row, S = nonzero latents (1 when S(reference) = ∅)."""
    a, r = codes != 0, reference != 0
    return (a & r).sum(-1).to(torch.float32) / r.sum(-1).clamp_min(1).to(torch.float32) + (r.sum(-1) == 0)


def site_forward(model: torch.nn.Module, site: str, *, position: int | None = -1,
                 call: Callable[[torch.nn.Module, torch.Tensor], object] | None = None) -> Forward:
    """A ``forward(x) -> (h, logits)`` reading ``site`` with :func:`assay.hooks.capture` (graph kept).

    ``call(model, x)`` runs the model (default ``model(x)``; e.g. ``lambda m, e: m(inputs_embeds=e)``);
    outputs with a ``.logits`` attribute are unwrapped; 3-D activations and logits ``[B, T, ·]`` are
    read at ``position``."""
    from assay.hooks import capture

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with capture(model, [site], detach=False) as cap:
            out = call(model, x) if call is not None else model(x)
        logits = getattr(out, "logits", out)
        h = cap[site]
        if position is not None and h.ndim == 3:
            h = h[:, position]
        if position is not None and logits.ndim == 3:
            logits = logits[:, position]
        return h, logits

    return forward


def _kl(logp0: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return (logp0.exp() * (logp0 - logits.log_softmax(-1))).sum(-1)


def _norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.reshape(delta.shape[0], -1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _latent_indices(objective: str, latent: int | torch.Tensor | None, B: int, n_latents: int,
                    device: torch.device) -> torch.Tensor | None:
    """The ``[B]`` latent indices of an activate/deactivate objective (None for the others), checked."""
    if objective not in ("activate", "deactivate"):
        return None
    if latent is None:
        raise ValueError(f"objective {objective!r} needs latent= (an index or [B] indices)")
    lat = torch.as_tensor(latent, device=device).long().expand(B).clone()
    if lat.min() < 0 or lat.max() >= n_latents:
        raise ValueError(f"latent index out of range [0, {n_latents})")
    return lat


def _check_outputs(h: torch.Tensor, logits: torch.Tensor, B: int) -> None:
    if not isinstance(h, torch.Tensor) or not isinstance(logits, torch.Tensor):
        raise TypeError("forward must return a pair of tensors (activations [B, d], logits [B, n_out])")
    if h.ndim != 2 or logits.ndim != 2 or h.shape[0] != B or logits.shape[0] != B:
        raise ValueError(f"forward must return activations [B, d] and logits [B, n_out] with B = {B}, got "
                         f"{tuple(h.shape)} and {tuple(logits.shape)}; read one position (site_forward's position=)")


def _success(objective: str, codes: torch.Tensor, ref_codes: torch.Tensor, latent: torch.Tensor | None,
             threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    overlap = active_set_overlap(codes, ref_codes)
    if objective == "untargeted":
        ok = overlap <= threshold
    elif objective == "targeted":
        ok = overlap >= threshold
    else:
        fires = codes.gather(1, latent[:, None]).squeeze(1) > 0
        ok = fires if objective == "activate" else ~fires
    return ok, overlap


def fragility_attack(forward: Forward, lens: Lens, x: torch.Tensor, *, objective: Objective = "untargeted",
                     latent: int | torch.Tensor | None = None, target_h: torch.Tensor | None = None,
                     eps: float = 1.0, norm: Literal["l2", "linf"] = "l2", steps: int = 50,
                     step_size: float | None = None, kl_bound: float = 0.01, kl_weight: float = 10.0,
                     overlap_threshold: float = 0.5,
                     pre_activation: Callable[[torch.Tensor], torch.Tensor] | None = None) -> FragilityResult:
    """PGD on the input to manipulate SAE latents under a KL bound on the output (module docstring).

    ``forward(x) -> (h [B, d], logits [B, n_out])``; ``latent`` (int or ``[B]``) for activate /
    deactivate; ``target_h`` the activations whose code to match (targeted). ``step_size`` defaults to
    2.5ε/steps."""
    eps = check_positive("eps", eps)
    kl_bound = check_positive("kl_bound", kl_bound)
    check_nonnegative("kl_weight", kl_weight)
    if objective not in ("untargeted", "targeted", "activate", "deactivate"):
        raise ValueError(f"objective must be untargeted, targeted, activate or deactivate, got {objective!r}")
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    alpha = 2.5 * eps / steps if step_size is None else check_positive("step_size", step_size)
    score = pre_activation or (lambda h: pre_activations(lens, h))
    B = x.shape[0]
    with torch.no_grad():
        h0, logits0 = forward(x)
        _check_outputs(h0, logits0, B)
        logp0 = logits0.log_softmax(-1)
        z0 = score(h0)
        ref_codes = lens.encode(h0)
        if objective == "targeted":
            if target_h is None or target_h.shape != h0.shape:
                raise ValueError(f"targeted needs target_h shaped like the activations {tuple(h0.shape)}")
            z_ref, ref_codes = score(target_h), lens.encode(target_h)
    lat = _latent_indices(objective, latent, B, z0.shape[1], x.device)

    delta = torch.zeros_like(x)
    best = x.detach().clone()
    best_norm = torch.full((B,), float("inf"), device=x.device)
    succeeded = torch.zeros(B, dtype=torch.bool, device=x.device)
    for _ in range(steps + 1):
        d = delta.detach().requires_grad_(True)
        with torch.enable_grad():
            h, logits = forward(x + d)
            z = score(h)
            if objective == "untargeted":
                obj = F.cosine_similarity(z, z0, dim=1)
            elif objective == "targeted":
                obj = -F.cosine_similarity(z, z_ref, dim=1)
            else:
                zj = z.gather(1, lat[:, None]).squeeze(1)
                obj = -zj if objective == "activate" else zj
            kl = _kl(logp0, logits)
            loss = obj + kl_weight * F.relu(kl - kl_bound) / kl_bound
            (grad,) = torch.autograd.grad(loss.sum(), d)
        with torch.no_grad():
            ok, _ = _success(objective, lens.encode(h), ref_codes, lat, overlap_threshold)
            ok &= kl <= kl_bound
            size = _norm(d, norm)
            better = ok & (size < best_norm)
            best[better] = (x + d)[better]
            best_norm = torch.where(better, size, best_norm)
            succeeded |= ok
            fallback = ~succeeded
            best[fallback] = (x + d)[fallback]
            if norm == "linf":
                step = grad.sign()
            else:
                step = grad / _norm(grad, "l2").clamp_min(1e-30).reshape(-1, *([1] * (x.ndim - 1)))
            delta = project(d - alpha * step, eps, norm)
    with torch.no_grad():
        h, logits = forward(best)
        _, overlap = _success(objective, lens.encode(h), ref_codes, lat, overlap_threshold)
        size = _norm(best - x, norm)
        rel = size / _norm(x, norm).clamp_min(1e-30)
        return FragilityResult(best, succeeded, overlap, _kl(logp0, logits), size, rel)


def random_baseline(forward: Forward, lens: Lens, x: torch.Tensor, sizes: torch.Tensor, *,
                    objective: Objective = "untargeted", latent: int | torch.Tensor | None = None,
                    target_h: torch.Tensor | None = None, norm: Literal["l2", "linf"] = "l2",
                    kl_bound: float = 0.01, overlap_threshold: float = 0.5,
                    generator: torch.Generator | None = None) -> FragilityResult:
    """The same success test for random perturbations with per-example sizes ``sizes [B]``."""
    B = x.shape[0]
    if norm == "linf":
        delta = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator).mul(2).sub(1).sign()
    else:
        delta = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        delta = delta / _norm(delta, "l2").reshape(-1, *([1] * (x.ndim - 1)))
    delta = delta * sizes.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    with torch.no_grad():
        h0, logits0 = forward(x)
        _check_outputs(h0, logits0, B)
        ref_codes = lens.encode(h0 if target_h is None else target_h)
        h, logits = forward(x + delta)
        lat = None if latent is None else torch.as_tensor(latent, device=x.device).long().expand(B)
        ok, overlap = _success(objective, lens.encode(h), ref_codes, lat, overlap_threshold)
        kl = _kl(logits0.log_softmax(-1), logits)
        size = _norm(delta, norm)
        return FragilityResult(x + delta, ok & (kl <= kl_bound), overlap, kl, size,
                               size / _norm(x, norm).clamp_min(1e-30))


class TokenFragilityResult(NamedTuple):
    """Outcome of the token-level attack per sequence."""

    tokens: torch.Tensor
    """Edited token ids ``[B, T]`` (the first successful edit set; the last state where it failed)."""
    success: torch.Tensor
    """Objective met with KL ≤ κ ``[B]`` (bool)."""
    overlap: torch.Tensor
    """|S(x′) ∩ S_ref|/|S_ref| ``[B]``."""
    kl: torch.Tensor
    """KL(p(x) ‖ p(x′)) ``[B]``."""
    n_edits: torch.Tensor
    """Positions changed (the Levenshtein distance of token replacements) ``[B]``."""


def token_fragility_attack(forward_embeds: Forward, embedding: torch.Tensor, tokens: torch.Tensor, lens: Lens, *,
                           editable: torch.Tensor, objective: Objective = "untargeted",
                           latent: int | torch.Tensor | None = None, target_h: torch.Tensor | None = None,
                           iters: int = 20, top_k: int = 16, n_candidates: int = 64, kl_bound: float = 0.01,
                           kl_weight: float = 10.0, overlap_threshold: float = 0.5,
                           pre_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
                           generator: torch.Generator | None = None) -> TokenFragilityResult:
    """Token replacement by generalised GCG (Zou et al. 2023 as used by Li et al.): per iteration, the
    gradient of the objective w.r.t. one-hot tokens ranks ``top_k`` candidate tokens per editable
    position; ``n_candidates`` random single-token swaps are scored exactly and the best is kept if it
    lowers the loss. ``forward_embeds(embeds [B, T, e]) -> (h, logits)``; ``embedding`` is the token
    embedding matrix ``[V, e]``; ``editable`` a bool mask ``[T]`` of positions that may change."""
    kl_bound = check_positive("kl_bound", kl_bound)
    if objective not in ("untargeted", "targeted", "activate", "deactivate"):
        raise ValueError(f"objective must be untargeted, targeted, activate or deactivate, got {objective!r}")
    if tokens.ndim != 2 or editable.shape != (tokens.shape[1],) or editable.dtype != torch.bool:
        raise ValueError(f"need tokens [B, T] and a bool editable mask [T], got {tuple(tokens.shape)}, "
                         f"{tuple(editable.shape)} {editable.dtype}")
    if not editable.any() or min(iters, top_k, n_candidates) < 1:
        raise ValueError("need at least one editable position and iters, top_k, n_candidates >= 1")
    B, V = tokens.shape[0], embedding.shape[0]
    pos = torch.nonzero(editable).flatten()
    score = pre_activation or (lambda h: pre_activations(lens, h))
    with torch.no_grad():
        h0, logits0 = forward_embeds(embedding[tokens])
        _check_outputs(h0, logits0, B)
        logp0 = logits0.log_softmax(-1)
        z0, ref_codes = score(h0), lens.encode(h0)
        if objective == "targeted":
            if target_h is None or target_h.shape != h0.shape:
                raise ValueError(f"targeted needs target_h shaped like the activations {tuple(h0.shape)}")
            z0, ref_codes = score(target_h), lens.encode(target_h)
    lat = _latent_indices(objective, latent, B, z0.shape[1], tokens.device)

    def losses(h: torch.Tensor, logits: torch.Tensor, lp0: torch.Tensor, zr: torch.Tensor, lt) -> torch.Tensor:
        z = score(h)
        if objective == "untargeted":
            obj = F.cosine_similarity(z, zr, dim=1)
        elif objective == "targeted":
            obj = -F.cosine_similarity(z, zr, dim=1)
        else:
            zj = z.gather(1, lt[:, None]).squeeze(1)
            obj = -zj if objective == "activate" else zj
        return obj + kl_weight * F.relu(_kl(lp0, logits) - kl_bound) / kl_bound

    cur = tokens.clone()
    done = torch.zeros(B, dtype=torch.bool, device=tokens.device)
    for _ in range(iters):
        with torch.no_grad():
            h, logits = forward_embeds(embedding[cur])
            ok, _ = _success(objective, lens.encode(h), ref_codes, lat, overlap_threshold)
            done |= ok & (_kl(logp0, logits) <= kl_bound)
            cur_loss = losses(h, logits, logp0, z0, lat)
        if done.all():
            break
        onehot = F.one_hot(cur, V).to(embedding.dtype).requires_grad_(True)
        with torch.enable_grad():
            h, logits = forward_embeds(onehot @ embedding)
            (grad,) = torch.autograd.grad(losses(h, logits, logp0, z0, lat).sum(), onehot)
        cand = (-grad[:, pos]).topk(min(top_k, V), dim=-1).indices  # [B, P, k]
        which = torch.randint(0, pos.numel(), (B, n_candidates), generator=generator, device=tokens.device)
        pick = torch.randint(0, cand.shape[-1], (B, n_candidates), generator=generator, device=tokens.device)
        new_tok = cand[torch.arange(B)[:, None], which, pick]  # [B, n]
        trial = cur[:, None].repeat(1, n_candidates, 1)
        trial.scatter_(2, pos[which][..., None], new_tok[..., None])
        with torch.no_grad():
            flat = trial.reshape(B * n_candidates, -1)
            h, logits = forward_embeds(embedding[flat])
            rep = lambda t: t.repeat_interleave(n_candidates, 0)  # noqa: E731
            trial_loss = losses(h, logits, rep(logp0), rep(z0), None if lat is None else rep(lat))
            best_loss, best = trial_loss.reshape(B, n_candidates).min(1)
            accept = (best_loss < cur_loss) & ~done
            cur[accept] = trial[torch.arange(B), best][accept]
    with torch.no_grad():
        h, logits = forward_embeds(embedding[cur])
        ok, overlap = _success(objective, lens.encode(h), ref_codes, lat, overlap_threshold)
        kl = _kl(logp0, logits)
        return TokenFragilityResult(cur, ok & (kl <= kl_bound), overlap, kl, (cur != tokens).sum(1))
