"""SAE fragility: small input perturbations that change which dictionary latents fire while the
model's output stays (almost) the same.

Li, Srinivas, Bhalla & Lakkaraju 2025/2026, "Interpretability Illusions with Sparse Autoencoders:
Evaluating Robustness of Concept Representations" (arXiv 2505.16004; EACL 2026); reference code
``AI4LIFE-GROUP/sae_robustness``. :func:`fragility_attack` is the continuous version (perturbing
embeddings or any real-valued input by PGD); :func:`token_fragility_attack` the paper's replacement
mode by generalised GCG (gradient-ranked candidate tokens, exact scoring of sampled swaps);
:func:`suffix_fragility_attack` its suffix mode: m tokens appended to the prompt (before a fixed
template), initialised by the model's own greedy continuation (:func:`greedy_suffix`) and optimised by
the same search, the prompt itself never changing.

With h(x) the activation at the SAE's site, z = pre-activations of the lens, S(x) = {i : encode(h)_i > 0}
and p(x) the model's output distribution, projected gradient descent on δ (‖δ‖ ≤ ε) minimises

    untargeted   cos(z(x + δ), z(x))              success: |S(x+δ) ∩ S(x)|/|S(x)| ≤ τ
    targeted     −cos(z(x + δ), z_target)         success: |S(x+δ) ∩ S_t|/|S_t| ≥ τ
    activate j   −z_j(x + δ)                      success: latent j fires
    deactivate j  z_j(x + δ)                      success: latent j does not fire
    + w·max(0, KL(p(x) ‖ p(x + δ)) − κ)/κ         every success also needs KL ≤ κ

and keeps, per example, the successful perturbation of smallest norm (every attack takes
``kl_bound=None``: no KL term and no KL condition). The pre-activations are the
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

from assay.evaluate.fragility import active_set_overlap
from assay.lens import Lens
from assay.robustness.adversarial import project
from assay.robustness.validate import check_nonnegative, check_positive

__all__ = ["FragilityResult", "fragility_attack", "random_baseline", "pre_activations", "active_set_overlap",
           "site_forward", "TokenFragilityResult", "token_fragility_attack", "SuffixFragilityResult",
           "greedy_suffix", "random_suffix", "suffix_fragility_attack", "objective_met", "output_kl"]

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


def output_kl(logp0: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p₀ ‖ softmax(logits)) per row, from the reference log-probabilities ``logp0 [B, n_out]``."""
    return (logp0.exp() * (logp0 - logits.log_softmax(-1))).sum(-1)


def _penalty(kl: torch.Tensor, kl_bound: float | None, kl_weight: float) -> torch.Tensor:
    """kl_weight·max(0, KL − κ)/κ (0 without a bound)."""
    return torch.zeros_like(kl) if kl_bound is None else kl_weight * F.relu(kl - kl_bound) / kl_bound


def _within(kl: torch.Tensor, kl_bound: float | None) -> torch.Tensor:
    """KL ≤ κ per row (all True without a bound)."""
    return torch.ones_like(kl, dtype=torch.bool) if kl_bound is None else kl <= kl_bound


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


def _check_objective(objective: str, kl_bound: float | None) -> float | None:
    if objective not in ("untargeted", "targeted", "activate", "deactivate"):
        raise ValueError(f"objective must be untargeted, targeted, activate or deactivate, got {objective!r}")
    return None if kl_bound is None else check_positive("kl_bound", kl_bound)


def objective_met(objective: str, codes: torch.Tensor, ref_codes: torch.Tensor, latent: torch.Tensor | None,
                  threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective met, |S(codes) ∩ S(ref_codes)|/|S(ref_codes)|) per row, without the KL condition: untargeted
    overlap ≤ threshold, targeted overlap ≥ threshold, activate / deactivate latent ``[B]`` fires / does not."""
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
                     step_size: float | None = None, kl_bound: float | None = 0.01, kl_weight: float = 10.0,
                     overlap_threshold: float = 0.5,
                     pre_activation: Callable[[torch.Tensor], torch.Tensor] | None = None) -> FragilityResult:
    """PGD on the input to manipulate SAE latents under a KL bound on the output (module docstring).

    ``forward(x) -> (h [B, d], logits [B, n_out])``; ``latent`` (int or ``[B]``) for activate /
    deactivate; ``target_h`` the activations whose code to match (targeted). ``step_size`` defaults to
    2.5ε/steps. ``kl_bound`` None puts no bound on the output."""
    eps = check_positive("eps", eps)
    kl_bound = _check_objective(objective, kl_bound)
    check_nonnegative("kl_weight", kl_weight)
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
            kl = output_kl(logp0, logits)
            loss = obj + _penalty(kl, kl_bound, kl_weight)
            (grad,) = torch.autograd.grad(loss.sum(), d)
        with torch.no_grad():
            ok, _ = objective_met(objective, lens.encode(h), ref_codes, lat, overlap_threshold)
            ok &= _within(kl, kl_bound)
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
        _, overlap = objective_met(objective, lens.encode(h), ref_codes, lat, overlap_threshold)
        size = _norm(best - x, norm)
        rel = size / _norm(x, norm).clamp_min(1e-30)
        return FragilityResult(best, succeeded, overlap, output_kl(logp0, logits), size, rel)


def random_baseline(forward: Forward, lens: Lens, x: torch.Tensor, sizes: torch.Tensor, *,
                    objective: Objective = "untargeted", latent: int | torch.Tensor | None = None,
                    target_h: torch.Tensor | None = None, norm: Literal["l2", "linf"] = "l2",
                    kl_bound: float | None = 0.01, overlap_threshold: float = 0.5,
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
        ok, overlap = objective_met(objective, lens.encode(h), ref_codes, lat, overlap_threshold)
        kl = output_kl(logits0.log_softmax(-1), logits)
        size = _norm(delta, norm)
        return FragilityResult(x + delta, ok & _within(kl, kl_bound), overlap, kl, size,
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


class _Reference(NamedTuple):
    """What the token attacks compare against: the clean input's output and code (or the target's)."""

    logp0: torch.Tensor
    z: torch.Tensor
    codes: torch.Tensor
    latent: torch.Tensor | None


def _reference(forward_embeds: Forward, embeds: torch.Tensor, lens: Lens, score, objective: str,
               latent: int | torch.Tensor | None, target_h: torch.Tensor | None) -> _Reference:
    with torch.no_grad():
        B = embeds.shape[0]
        h0, logits0 = forward_embeds(embeds)
        _check_outputs(h0, logits0, B)
        z0, codes = score(h0), lens.encode(h0)
        if objective == "targeted":
            if target_h is None or target_h.shape != h0.shape:
                raise ValueError(f"targeted needs target_h shaped like the activations {tuple(h0.shape)}")
            z0, codes = score(target_h), lens.encode(target_h)
    return _Reference(logits0.log_softmax(-1), z0, codes, _latent_indices(objective, latent, B, z0.shape[1],
                                                                           embeds.device))


def _token_loss(h: torch.Tensor, logits: torch.Tensor, ref: _Reference, score, objective: str,
                kl_bound: float | None, kl_weight: float) -> torch.Tensor:
    """The minimised loss per row: the objective plus the KL penalty (none without a KL bound)."""
    z = score(h)
    if objective == "untargeted":
        obj = F.cosine_similarity(z, ref.z, dim=1)
    elif objective == "targeted":
        obj = -F.cosine_similarity(z, ref.z, dim=1)
    else:
        zj = z.gather(1, ref.latent[:, None]).squeeze(1)
        obj = -zj if objective == "activate" else zj
    return obj + _penalty(output_kl(ref.logp0, logits), kl_bound, kl_weight)


def _token_success(h: torch.Tensor, logits: torch.Tensor, ref: _Reference, lens: Lens, objective: str,
                   overlap_threshold: float, kl_bound: float | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(objective met and KL ≤ κ, overlap, KL) per row."""
    ok, overlap = objective_met(objective, lens.encode(h), ref.codes, ref.latent, overlap_threshold)
    kl = output_kl(ref.logp0, logits)
    return ok & _within(kl, kl_bound), overlap, kl


def _repeat(ref: _Reference, n: int) -> _Reference:
    rep = lambda t: None if t is None else t.repeat_interleave(n, 0)  # noqa: E731
    return _Reference(rep(ref.logp0), rep(ref.z), rep(ref.codes), rep(ref.latent))


def _gcg(forward_embeds: Forward, embedding: torch.Tensor, start: torch.Tensor, pos: torch.Tensor,
         ref: _Reference, lens: Lens, score, *, objective: str, iters: int, top_k: int, n_candidates: int,
         kl_bound: float | None, kl_weight: float, overlap_threshold: float, allowed: torch.Tensor | None,
         generator: torch.Generator | None) -> torch.Tensor:
    """Generalised GCG from ``start [B, T]`` over positions ``pos``: per iteration the one-hot gradient ranks
    ``top_k`` candidate tokens per position (``allowed`` ones only), ``n_candidates`` random single swaps are
    scored exactly and the best is kept if it lowers the loss; a row stops once it succeeds."""
    B, V = start.shape[0], embedding.shape[0]
    n_allowed = V if allowed is None else int(allowed.sum())
    cur = start.clone()
    done = torch.zeros(B, dtype=torch.bool, device=start.device)
    rows = torch.arange(B, device=start.device)
    many = _repeat(ref, n_candidates)
    for _ in range(iters):
        with torch.no_grad():
            h, logits = forward_embeds(embedding[cur])
            done |= _token_success(h, logits, ref, lens, objective, overlap_threshold, kl_bound)[0]
            cur_loss = _token_loss(h, logits, ref, score, objective, kl_bound, kl_weight)
        if done.all():
            break
        onehot = F.one_hot(cur, V).to(embedding.dtype).requires_grad_(True)
        with torch.enable_grad():
            h, logits = forward_embeds(onehot @ embedding)
            loss = _token_loss(h, logits, ref, score, objective, kl_bound, kl_weight)
            (grad,) = torch.autograd.grad(loss.sum(), onehot)
        rank = -grad[:, pos]
        if allowed is not None:
            rank = rank.masked_fill(~allowed, float("-inf"))
        cand = rank.topk(min(top_k, n_allowed), dim=-1).indices  # [B, P, k]
        which = torch.randint(0, pos.numel(), (B, n_candidates), generator=generator, device=start.device)
        pick = torch.randint(0, cand.shape[-1], (B, n_candidates), generator=generator, device=start.device)
        new_tok = cand[rows[:, None], which, pick]  # [B, n]
        trial = cur[:, None].repeat(1, n_candidates, 1)
        trial.scatter_(2, pos[which][..., None], new_tok[..., None])
        with torch.no_grad():
            h, logits = forward_embeds(embedding[trial.reshape(B * n_candidates, -1)])
            trial_loss = _token_loss(h, logits, many, score, objective, kl_bound, kl_weight)
            best_loss, best = trial_loss.reshape(B, n_candidates).min(1)
            accept = (best_loss < cur_loss) & ~done
            cur[accept] = trial[rows, best][accept]
    return cur


def _check_search(iters: int, top_k: int, n_candidates: int, allowed: torch.Tensor | None, V: int) -> None:
    if min(iters, top_k, n_candidates) < 1:
        raise ValueError(f"iters, top_k and n_candidates must be >= 1, got {iters}, {top_k}, {n_candidates}")
    if allowed is not None and (allowed.shape != (V,) or allowed.dtype != torch.bool or not allowed.any()):
        raise ValueError(f"allowed must be a bool mask [V] = [{V}] over the vocabulary with at least one True, "
                         f"got {tuple(allowed.shape)} {allowed.dtype}")


def token_fragility_attack(forward_embeds: Forward, embedding: torch.Tensor, tokens: torch.Tensor, lens: Lens, *,
                           editable: torch.Tensor, objective: Objective = "untargeted",
                           latent: int | torch.Tensor | None = None, target_h: torch.Tensor | None = None,
                           iters: int = 20, top_k: int = 16, n_candidates: int = 64, kl_bound: float | None = 0.01,
                           kl_weight: float = 10.0, overlap_threshold: float = 0.5,
                           pre_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
                           allowed: torch.Tensor | None = None,
                           generator: torch.Generator | None = None) -> TokenFragilityResult:
    """Token replacement by generalised GCG (Zou et al. 2023 as used by Li et al.): per iteration, the
    gradient of the objective w.r.t. one-hot tokens ranks ``top_k`` candidate tokens per editable
    position; ``n_candidates`` random single-token swaps are scored exactly and the best is kept if it
    lowers the loss. ``forward_embeds(embeds [B, T, e]) -> (h, logits)``; ``embedding`` is the token
    embedding matrix ``[V, e]``; ``editable`` a bool mask ``[T]`` of positions that may change;
    ``allowed`` an optional bool mask ``[V]`` of the tokens that may be swapped in; ``kl_bound`` None puts
    no bound on the output."""
    kl = _check_objective(objective, kl_bound)
    if tokens.ndim != 2 or editable.shape != (tokens.shape[1],) or editable.dtype != torch.bool:
        raise ValueError(f"need tokens [B, T] and a bool editable mask [T], got {tuple(tokens.shape)}, "
                         f"{tuple(editable.shape)} {editable.dtype}")
    if not editable.any():
        raise ValueError("need at least one editable position")
    _check_search(iters, top_k, n_candidates, allowed, embedding.shape[0])
    score = pre_activation or (lambda h: pre_activations(lens, h))
    ref = _reference(forward_embeds, embedding[tokens], lens, score, objective, latent, target_h)
    cur = _gcg(forward_embeds, embedding, tokens, torch.nonzero(editable).flatten(), ref, lens, score,
               objective=objective, iters=iters, top_k=top_k, n_candidates=n_candidates, kl_bound=kl,
               kl_weight=kl_weight, overlap_threshold=overlap_threshold, allowed=allowed, generator=generator)
    with torch.no_grad():
        h, logits = forward_embeds(embedding[cur])
        ok, overlap, kl_out = _token_success(h, logits, ref, lens, objective, overlap_threshold, kl)
        return TokenFragilityResult(cur, ok, overlap, kl_out, (cur != tokens).sum(1))


class SuffixFragilityResult(NamedTuple):
    """Outcome of the suffix-append attack per sequence."""

    tokens: torch.Tensor
    """The attacked input ``[B, T + m (+ tail)]``: prompt, optimised suffix, tail."""
    suffix: torch.Tensor
    """The optimised suffix ``[B, m]``."""
    init: torch.Tensor
    """The suffix the search started from ``[B, m]`` (greedy continuation, random, or given)."""
    success: torch.Tensor
    """Objective met (with KL ≤ κ when a KL bound is set) ``[B]`` (bool)."""
    overlap: torch.Tensor
    """|S(x′) ∩ S_ref|/|S_ref| ``[B]``, S_ref = the clean prompt's active set (the target's when targeted)."""
    kl: torch.Tensor
    """KL(p(x) ‖ p(x′)) of the outputs at the read position, x = prompt (+ tail) without suffix ``[B]``."""
    loss: torch.Tensor
    """The minimised loss at the result ``[B]`` (objective, plus the KL penalty when bounded)."""
    init_loss: torch.Tensor
    """The same loss at the initial suffix ``[B]`` (the search never ends above it)."""


def greedy_suffix(next_token_logits: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, length: int, *,
                  allowed: torch.Tensor | None = None) -> torch.Tensor:
    """The model's greedy continuation of ``tokens [B, T]``: ``length`` steps of appending the argmax of
    ``next_token_logits(ids [B, t]) -> [B, V]`` (over the ``allowed`` tokens only when given) ``[B, length]``."""
    ids = tokens
    with torch.no_grad():
        for _ in range(length):
            logits = next_token_logits(ids)
            if logits.ndim != 2 or logits.shape[0] != ids.shape[0]:
                raise ValueError(f"next_token_logits must return [B, V] logits, got {tuple(logits.shape)}")
            if allowed is not None:
                logits = logits.masked_fill(~allowed, float("-inf"))
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    return ids[:, tokens.shape[1]:]


def random_suffix(allowed: torch.Tensor, batch: int, length: int, *,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``[batch, length]`` tokens drawn uniformly from the ``allowed [V]`` ones."""
    ids = torch.nonzero(allowed).flatten()
    return ids[torch.randint(0, ids.numel(), (batch, length), generator=generator, device=ids.device)]


def suffix_fragility_attack(forward_embeds: Forward, embedding: torch.Tensor, tokens: torch.Tensor, lens: Lens, *,
                            length: int, init: Literal["greedy", "random"] | torch.Tensor = "greedy",
                            next_token_logits: Callable[[torch.Tensor], torch.Tensor] | None = None,
                            tail: torch.Tensor | None = None, objective: Objective = "untargeted",
                            latent: int | torch.Tensor | None = None, target_h: torch.Tensor | None = None,
                            iters: int = 20, top_k: int = 16, n_candidates: int = 64,
                            kl_bound: float | None = None, kl_weight: float = 10.0, overlap_threshold: float = 0.5,
                            pre_activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
                            allowed: torch.Tensor | None = None,
                            generator: torch.Generator | None = None) -> SuffixFragilityResult:
    """The paper's suffix mode: append ``length`` tokens to the prompt ``tokens [B, T]`` (before the fixed
    ``tail``, the paper's template " \\nThe previous text is about", when given) and optimise only them
    by generalised GCG (:func:`token_fragility_attack`'s search); the prompt and tail never change.

    ``init="greedy"`` starts from the model's own greedy continuation (:func:`greedy_suffix`, as the
    reference code does with ``model.generate``), ``"random"`` from uniform ``allowed`` tokens, a tensor
    ``[B, length]`` from that suffix. ``next_token_logits(ids) -> [B, V]`` gives the greedy steps; by
    default the logits of ``forward_embeds``, which then must read the last position (no ``tail``).
    The reference code and output are the clean prompt (+ tail) without suffix. ``kl_bound`` None (the
    paper's suffix attack) puts no bound on the output; a number adds the KL penalty and success test of
    :func:`token_fragility_attack`."""
    kl = _check_objective(objective, kl_bound)
    V = embedding.shape[0]
    if tokens.ndim != 2 or tokens.shape[1] < 1:
        raise ValueError(f"need prompt tokens [B, T] with T >= 1, got {tuple(tokens.shape)}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length (suffix tokens) must be an int >= 1, got {length!r}")
    _check_search(iters, top_k, n_candidates, allowed, V)
    B = tokens.shape[0]
    tail_ids = tokens.new_zeros(B, 0) if tail is None else torch.as_tensor(tail, device=tokens.device).long()
    if tail_ids.ndim == 1:
        tail_ids = tail_ids.expand(B, -1)
    if tail_ids.ndim != 2 or tail_ids.shape[0] != B:
        raise ValueError(f"tail must be token ids [T_tail] or [B, T_tail], got {tuple(tail_ids.shape)}")
    ok_tokens = torch.ones(V, dtype=torch.bool, device=tokens.device) if allowed is None else allowed
    if isinstance(init, torch.Tensor):
        start = init.to(tokens.device).long()
        if start.shape != (B, length):
            raise ValueError(f"an init suffix must be [B, length] = [{B}, {length}], got {tuple(start.shape)}")
    elif init == "greedy":
        if next_token_logits is None:
            if tail is not None:
                raise ValueError("init='greedy' with a tail needs next_token_logits (forward_embeds reads the "
                                 "position after the tail, not the next token of the prompt)")
            next_token_logits = lambda ids: forward_embeds(embedding[ids])[1]  # noqa: E731
        start = greedy_suffix(next_token_logits, tokens, length, allowed=allowed)
    elif init == "random":
        start = random_suffix(ok_tokens, B, length, generator=generator)
    else:
        raise ValueError(f"init must be 'greedy', 'random' or a [B, length] tensor of token ids, got {init!r}")
    score = pre_activation or (lambda h: pre_activations(lens, h))
    ref = _reference(forward_embeds, embedding[torch.cat([tokens, tail_ids], 1)], lens, score, objective, latent,
                     target_h)
    T = tokens.shape[1]
    full = torch.cat([tokens, start, tail_ids], 1)
    pos = torch.arange(T, T + length, device=tokens.device)
    cur = _gcg(forward_embeds, embedding, full, pos, ref, lens, score, objective=objective, iters=iters,
               top_k=top_k, n_candidates=n_candidates, kl_bound=kl, kl_weight=kl_weight,
               overlap_threshold=overlap_threshold, allowed=allowed, generator=generator)
    with torch.no_grad():
        h, logits = forward_embeds(embedding[cur])
        ok, overlap, kl_out = _token_success(h, logits, ref, lens, objective, overlap_threshold, kl)
        loss = _token_loss(h, logits, ref, score, objective, kl, kl_weight)
        init_loss = _token_loss(*forward_embeds(embedding[full]), ref, score, objective, kl, kl_weight)
    return SuffixFragilityResult(cur, cur[:, T:T + length], start, ok, overlap, kl_out, loss, init_loss)
