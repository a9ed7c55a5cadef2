"""Knowledge editing of a tiny transformer: a ROME rank-one edit and a fine-tuning edit of one MLP.

ROME: Meng, Bau, Andonian, Belinkov 2022, "Locating and Editing Factual Associations in GPT" (NeurIPS
2022), repo ``kmeng01/rome`` (``compute_u.py``, ``compute_v.py``, ``rome_main.py``). Studied as the cause
of representation shattering by Nishi, Ramesh, Okawa, Khona, Tanaka, Lubana 2025, "Representation
Shattering in Transformers: A Synthetic Study with Knowledge Editing" (ICML 2025, arXiv 2410.17194).

The edited site is the output projection W (``blocks.{ℓ}.mlp.fc_out``, y = W k + b) of the MLP of layer
ℓ of an :class:`assay.models.transformer.Transformer`; its input k is the MLP's hidden activation.

- Key k* = the mean of k at the request's key position (in ROME the subject's last token) over its prompts
  (the fact in several contexts).
- Covariance C = Σ k kᵀ / m (uncentred) over keys of the model's own training data
  (:func:`key_covariance`; 1e-4·tr(C)/d_ff·I is added when m < 10·d_ff).
- Value: δ is added to the MLP output at the key position and optimised with Adam (lr 0.5, ≤ 20 steps)
  on NLL(new object) + 0.0625·KL(after ‖ before) on the request's KL prompts + 0.5·‖δ‖/‖v₀‖² (the norm,
  not squared, as in the repo), ‖δ‖ projected to ≤ 4‖v₀‖, stopping once the loss is < 0.05;
  v* = v₀ + δ with v₀ = W k* + b.
- Update (:func:`rank_one_update`): W ← W + (v − W k*)(C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀk*), v = v* − b; afterwards
  W k* + b = v* exactly, and any key k with kᵀC⁻¹k* = 0 maps as before. Check (spec): W = I₂, k* = e₁,
  v = e₂: C = I → W′ = [[0, 0], [1, 1]]; C = [[2, 1], [1, 2]] → W′ = [[0, 0.5], [1, 0.5]] (correlated
  keys leak: W′e₂ = (0.5, 0.5)).

Fine-tuning edit (FT-L; spec §5.2, the Zhu et al. 2020 constrained variant left out): Adam (lr 1e-3) on
W of layer ℓ only, on the request's prompts, until the mean P(new object) ≥ 0.9 or ``max_steps``.

Both editors return an edited *copy* of the model; the model passed in is never changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assay.config import ConfigError
from assay.hooks import capture, patch

__all__ = ["EditRequest", "EditResult", "RomeConfig", "FineTuneConfig", "rank_one_update", "mlp_keys",
           "key_covariance", "rome_edit", "fine_tune_edit", "target_probability"]


@dataclass(frozen=True)
class EditRequest:
    """One fact to rewrite: prompts that end with ``… subject relation`` and the new object."""

    tokens: Tensor
    """Prompts [K, T] (the same fact in K contexts); the answer is read at the last position."""
    key_position: int
    """Where ROME reads its key and writes its value, in every prompt: the subject's last token in ROME; in a
    model that looks the fact up at a later token (a 2-layer model reading the subject through its first
    attention layer), that token."""
    target: int
    """Token id of the new object."""
    kl_tokens: Tensor | None = None
    """Prompts [m, T′] about the same subject with other relations, whose next-token distribution at the last
    position ROME keeps close to the original (δ is added at the same ``key_position``); None: no KL term."""

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2 or len(self.tokens) == 0:
            raise ValueError(f"tokens must be [K, T] prompts with K >= 1, got shape {tuple(self.tokens.shape)}")
        T = self.tokens.shape[1]
        if not 0 <= self.key_position < T:
            raise ValueError(f"key_position={self.key_position} must lie inside prompts of length {T}")
        if self.kl_tokens is not None and (self.kl_tokens.ndim != 2 or self.kl_tokens.shape[1] <= self.key_position):
            raise ValueError(f"kl_tokens must be [m, T′] prompts containing key_position={self.key_position}")


class EditResult(NamedTuple):
    """An edited copy of a model and what the edit did."""

    model: nn.Module
    """The edited copy (eval mode)."""
    delta_weight: Tensor
    """W_after − W_before of the edited projection [d_model, d_mlp]."""
    target_prob: float
    """Mean P(new object) over the request's prompts after the edit."""
    steps: int
    """Optimisation steps taken (ROME: of the value δ; fine-tuning: of W)."""
    key: Tensor | None = None
    """ROME's key k* [d_mlp] (None for fine-tuning)."""
    value: Tensor | None = None
    """ROME's target output v* = W k* + b + δ of the edited projection [d_model] (None for fine-tuning)."""


@dataclass(frozen=True, kw_only=True)
class RomeConfig:
    """ROME's value optimisation (defaults: the repo's GPT-2 hyper-parameters)."""

    layer: int = 0
    """Block whose MLP output projection is edited."""
    lr: float = 0.5
    """Adam learning rate of δ."""
    steps: int = 20
    """Maximum Adam steps on δ."""
    kl_weight: float = 0.0625
    """Weight of KL(after ‖ before) on the KL prompts."""
    norm_weight: float = 0.5
    """Weight of ‖δ‖ / ‖v₀‖²."""
    max_norm_ratio: float = 4.0
    """‖δ‖ is projected to at most this times ‖v₀‖."""
    stop_loss: float = 0.05
    """Stop once the total loss is below this."""

    def __post_init__(self) -> None:
        if self.layer < 0 or self.steps < 0 or self.lr <= 0 or self.max_norm_ratio <= 0:
            raise ConfigError(f"RomeConfig needs layer >= 0, steps >= 0, lr > 0 and max_norm_ratio > 0, got {self}")


@dataclass(frozen=True, kw_only=True)
class FineTuneConfig:
    """Fine-tuning one MLP output projection on the edit prompts (FT-L)."""

    layer: int = 0
    """Block whose MLP output projection is fine-tuned."""
    lr: float = 1e-3
    """Adam learning rate."""
    max_steps: int = 25
    """Maximum Adam steps."""
    target_prob: float = 0.9
    """Stop once the mean P(new object) reaches this."""

    def __post_init__(self) -> None:
        if self.layer < 0 or self.max_steps < 0 or self.lr <= 0 or not 0 < self.target_prob <= 1:
            raise ConfigError(f"FineTuneConfig needs layer >= 0, max_steps >= 0, lr > 0 and target_prob in (0, 1], "
                              f"got {self}")


def _mlp(model: nn.Module, layer: int) -> nn.Module:
    blocks = getattr(model, "blocks", None)
    if blocks is None or not 0 <= layer < len(blocks):
        n = len(blocks) if blocks is not None else 0
        raise ConfigError(f"layer {layer} does not exist: the model has {n} blocks (an assay Transformer is needed)")
    return blocks[layer].mlp


def rank_one_update(weight: Tensor, key: Tensor, value: Tensor, cov: Tensor) -> Tensor:
    """W + (value − W key)(C⁻¹key)ᵀ / ((C⁻¹key)ᵀkey) for y = W k (``weight`` [d_out, d_in]); the new weight
    maps ``key`` to ``value`` exactly and leaves keys C⁻¹-orthogonal to ``key`` unchanged."""
    if weight.ndim != 2 or key.shape != (weight.shape[1],) or value.shape != (weight.shape[0],):
        raise ValueError(f"need weight [d_out, d_in], key [d_in], value [d_out]; got {tuple(weight.shape)}, "
                         f"{tuple(key.shape)}, {tuple(value.shape)}")
    if cov.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"cov must be [d_in, d_in] = {weight.shape[1]}² (the covariance of the projection's "
                         f"input), got {tuple(cov.shape)}")
    W, k, v = weight.double(), key.double(), value.double()
    u = torch.linalg.solve(cov.double(), k)
    denom = u @ k
    if not denom > 0:
        raise ValueError("kᵀC⁻¹k is not positive: the covariance is not positive definite (add a ridge)")
    return (W + torch.outer(v - W @ k, u) / denom).to(weight.dtype)


def mlp_keys(model: nn.Module, layer: int, tokens: Tensor) -> Tensor:
    """The input of ``blocks.{layer}.mlp.fc_out`` (the MLP's hidden activation) [n, T, d_mlp]."""
    mlp = _mlp(model, layer)
    with torch.no_grad(), capture(model, [f"blocks.{layer}.mlp.fc_in"]) as cap:
        model(tokens)
    return mlp.act(cap[f"blocks.{layer}.mlp.fc_in"])


def key_covariance(keys: Tensor) -> Tensor:
    """C = KᵀK / m (float64) of keys [m, d]; adds 1e-4·tr(C)/d·I when m < 10·d (too few keys for a stable C⁻¹)."""
    if keys.ndim != 2 or len(keys) == 0:
        raise ValueError(f"keys must be [m, d] with m >= 1, got shape {tuple(keys.shape)}")
    K = keys.double()
    m, d = K.shape
    C = K.T @ K / m
    if m < 10 * d:
        C = C + 1e-4 * torch.trace(C) / d * torch.eye(d, dtype=C.dtype)
    return C


def target_probability(model: nn.Module, tokens: Tensor, target: int) -> float:
    """Mean softmax probability of token ``target`` at the last position of ``tokens`` [K, T]."""
    with torch.no_grad():
        return float(torch.softmax(model(tokens)[:, -1].double(), -1)[:, target].mean())


def _last_log_probs(model: nn.Module, tokens: Tensor) -> Tensor:
    return torch.log_softmax(model(tokens)[:, -1].double(), -1)


def rome_edit(model: nn.Module, request: EditRequest, cov: Tensor, config: RomeConfig | None = None) -> EditResult:
    """ROME: optimise the value v* for the new object, then the closed-form rank-one update of W (module doc)."""
    cfg = config or RomeConfig()
    mlp = _mlp(model, cfg.layer)
    T = request.tokens.shape[1]
    if cfg.layer == len(model.blocks) - 1 and request.key_position != T - 1:
        raise ConfigError(f"ROME cannot edit layer {cfg.layer}, the last block, at position {request.key_position}: a "
                          "value written there never reaches the answer position (no attention follows); pick an "
                          "earlier layer or the last position")
    s = request.key_position
    key = mlp_keys(model, cfg.layer, request.tokens)[:, s].double().mean(0)
    W, b = mlp.fc_out.weight.detach(), mlp.fc_out.bias.detach()
    v0 = W.double() @ key + b.double()
    kl_before = None if request.kl_tokens is None else _last_log_probs(model, request.kl_tokens).detach()
    delta = torch.zeros_like(v0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    site = f"blocks.{cfg.layer}.mlp"

    def add_delta(h: Tensor) -> Tensor:
        h = h.clone()
        h[:, s] = h[:, s] + delta.to(h.dtype)
        return h

    steps = 0
    for steps in range(cfg.steps + 1):  # noqa: B007 (steps is reported)
        with patch(model, {site: add_delta}):
            nll = -_last_log_probs(model, request.tokens)[:, request.target].mean()
            loss = nll + cfg.norm_weight * delta.norm() / v0.norm() ** 2
            if kl_before is not None:
                kl_after = _last_log_probs(model, request.kl_tokens)
                loss = loss + cfg.kl_weight * F.kl_div(kl_before, kl_after, log_target=True, reduction="batchmean")
        if loss.item() < cfg.stop_loss or steps == cfg.steps:
            break
        (delta.grad,) = torch.autograd.grad(loss, [delta])  # no gradient reaches the model's weights
        opt.step()
        with torch.no_grad():
            cap = cfg.max_norm_ratio * v0.norm()
            if delta.norm() > cap:
                delta.mul_(cap / delta.norm())
    edited = copy.deepcopy(model)
    target_w = W.double() @ key + delta.detach()
    new_w = rank_one_update(W, key, target_w, cov)
    with torch.no_grad():
        _mlp(edited, cfg.layer).fc_out.weight.copy_(new_w)
    edited.eval()
    return EditResult(edited, new_w - W, target_probability(edited, request.tokens, request.target), steps,
                      key, v0 + delta.detach())


def fine_tune_edit(model: nn.Module, request: EditRequest, config: FineTuneConfig | None = None) -> EditResult:
    """FT-L: Adam on layer ℓ's MLP output projection only, on the edit prompts, until P(new object) ≥ target_prob."""
    cfg = config or FineTuneConfig()
    _mlp(model, cfg.layer)
    edited = copy.deepcopy(model).eval()
    weight = _mlp(edited, cfg.layer).fc_out.weight
    before = weight.detach().clone()
    for p in edited.parameters():
        p.requires_grad_(False)
    weight.requires_grad_(True)
    opt = torch.optim.Adam([weight], lr=cfg.lr)
    steps = 0
    for steps in range(cfg.max_steps + 1):  # noqa: B007 (steps is reported)
        logp = _last_log_probs(edited, request.tokens)[:, request.target]
        if logp.exp().mean().item() >= cfg.target_prob or steps == cfg.max_steps:
            break
        opt.zero_grad()
        (-logp.mean()).backward()
        opt.step()
    weight.requires_grad_(False)
    for p in edited.parameters():
        p.requires_grad_(True)
    return EditResult(edited, weight.detach() - before, target_probability(edited, request.tokens, request.target), steps)
