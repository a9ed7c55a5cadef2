"""Adversarial attacks (FGSM, PGD under L∞ and L2), robust-accuracy curves, adversarial training.

Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial Examples" (FGSM);
Madry, Makelov, Schmidt, Tsipras & Vladu 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks" (PGD).

Loss ℓ = CE(f(x′), y), ascended (untargeted, y the true label) or descended (targeted, y the target):

    L∞:  x′ ← Π_{‖x′−x‖∞≤ε, bounds}(x′ + α·sign(∇ℓ)),          random start x + U(−ε, ε)^d
    L2:  x′ ← Π_{‖x′−x‖₂≤ε, bounds}(x′ + α·∇ℓ/‖∇ℓ‖₂),           random start uniform in the ε-ball
    Π_L2: δ ← δ·min(1, ε/‖δ‖₂);   FGSM = one L∞ step with α = ε from x.

Defaults: 10 steps, α = 2.5ε/steps, random start, 1 restart. With several restarts each example
keeps its best run (a successful one, else the highest loss). ``bounds`` clamps to the data range
(e.g. (0, 1) for images); ``None`` leaves the input unbounded.

Captum's ``PGD`` takes the same L∞ steps (sign of the gradient, clip, bound) — the parity test
runs both without random start; its L2 mode also steps by the gradient's sign (then projects to the
L2 ball), which differs from the normalised-gradient step here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from assay.robustness.validate import check_nonnegative, classifier_logits

__all__ = ["Attack", "RobustAccuracy", "fgsm", "pgd", "robust_accuracy", "adversarial_fit", "project"]

Norm = Literal["linf", "l2"]
Model = Callable[[torch.Tensor], torch.Tensor]


class Attack(NamedTuple):
    """The result of an attack."""

    x_adv: torch.Tensor
    """Adversarial inputs, shaped like the clean inputs."""
    success: torch.Tensor
    """Per example: the attack changed the prediction away from y (untargeted) or onto y (targeted)."""
    loss: torch.Tensor
    """Cross-entropy against y at ``x_adv`` ``[B]``."""


class RobustAccuracy(NamedTuple):
    """Accuracy under attack as a function of the radius."""

    epsilons: torch.Tensor
    """Radii ``[E]``."""
    accuracy: torch.Tensor
    """Fraction of examples still classified correctly at each radius ``[E]``."""


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (t.ndim - 1)))


def project(delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project perturbations ``delta [B, ...]`` onto the ε-ball of ``norm`` (per example)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        return delta * (eps / _flat_norm(delta).clamp_min(1e-30)).clamp(max=1.0)
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")


def _random_start(x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator | None) -> torch.Tensor:
    if norm == "linf":
        u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        return (2 * u - 1) * eps
    d = x[0].numel()
    n = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    r = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device, generator=generator)
    return n / _flat_norm(n).clamp_min(1e-30) * eps * r ** (1.0 / d)


def _loss_and_grad(model: Model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(classifier_logits(model, x), y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def _bound(x: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    return x if bounds is None else x.clamp(bounds[0], bounds[1])


def _check(x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> float:
    eps = check_nonnegative("eps", eps)
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    y = torch.as_tensor(y)
    if y.shape != (x.shape[0],) or y.is_floating_point():
        raise ValueError(f"y must be class ids of shape [{x.shape[0]}], got {tuple(y.shape)} {y.dtype}")
    return eps


def _outcome(model: Model, x_adv: torch.Tensor, y: torch.Tensor, targeted: bool) -> Attack:
    with torch.no_grad():
        logits = classifier_logits(model, x_adv)
    loss = F.cross_entropy(logits, y, reduction="none")
    pred = logits.argmax(1)
    return Attack(x_adv.detach(), pred == y if targeted else pred != y, loss)


def pgd(model: Model, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: Norm = "linf", steps: int = 10,
        step_size: float | None = None, random_start: bool = True, restarts: int = 1, targeted: bool = False,
        bounds: tuple[float, float] | None = None, generator: torch.Generator | None = None) -> Attack:
    """Projected gradient descent on the cross-entropy within the ε-ball (see the module docstring)."""
    eps = _check(x, y, eps, norm)
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps}, {restarts}")
    alpha = 2.5 * eps / steps if step_size is None else check_nonnegative("step_size", step_size)
    sign = -1.0 if targeted else 1.0
    best: Attack | None = None
    for _ in range(restarts):
        delta = _random_start(x, eps, norm, generator) if random_start and eps > 0 else torch.zeros_like(x)
        x_adv = _bound(x + delta, bounds)
        for _ in range(steps):
            _, grad = _loss_and_grad(model, x_adv, y)
            if norm == "linf":
                step = grad.sign()
            else:
                step = grad / _flat_norm(grad).clamp_min(1e-30)
            x_adv = x_adv + sign * alpha * step
            x_adv = _bound(x + project(x_adv - x, eps, norm), bounds).detach()
        run = _outcome(model, x_adv, y, targeted)
        if best is None:
            best = run
        else:
            score_new = run.success.to(run.loss.dtype) * 1e30 + sign * run.loss
            score_old = best.success.to(best.loss.dtype) * 1e30 + sign * best.loss
            better = score_new > score_old
            shape = (-1,) + (1,) * (x.ndim - 1)
            best = Attack(torch.where(better.reshape(shape), run.x_adv, best.x_adv),
                          torch.where(better, run.success, best.success), torch.where(better, run.loss, best.loss))
    assert best is not None
    return best


def fgsm(model: Model, x: torch.Tensor, y: torch.Tensor, eps: float, *, targeted: bool = False,
         bounds: tuple[float, float] | None = None) -> Attack:
    """Fast gradient sign method: one L∞ step of size ε from the clean input."""
    return pgd(model, x, y, eps, norm="linf", steps=1, step_size=eps, random_start=False, targeted=targeted,
               bounds=bounds)


def robust_accuracy(model: Model, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float], *,
                    norm: Norm = "linf", steps: int = 10, restarts: int = 1, random_start: bool = True,
                    bounds: tuple[float, float] | None = None, batch_size: int = 256,
                    generator: torch.Generator | None = None) -> RobustAccuracy:
    """Accuracy under untargeted PGD at each radius (ε = 0 is the clean accuracy)."""
    eps_list = [check_nonnegative("eps", e) for e in epsilons]
    acc = []
    for eps in eps_list:
        correct = 0
        for s in range(0, x.shape[0], batch_size):
            xb, yb = x[s:s + batch_size], y[s:s + batch_size]
            if eps == 0:
                with torch.no_grad():
                    correct += int((classifier_logits(model, xb).argmax(1) == yb).sum())
                continue
            att = pgd(model, xb, yb, eps, norm=norm, steps=steps, restarts=restarts, random_start=random_start,
                      bounds=bounds, generator=generator)
            correct += int((~att.success).sum())
        acc.append(correct / max(1, x.shape[0]))
    return RobustAccuracy(torch.tensor(eps_list), torch.tensor(acc))


def adversarial_fit(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, eps: float,
                    norm: Norm = "linf", steps: int = 5, epochs: int = 5, batch_size: int = 64, lr: float = 1e-3,
                    adv_fraction: float = 1.0, bounds: tuple[float, float] | None = None,
                    seed: int = 0) -> torch.nn.Module:
    """Madry-style adversarial training: AdamW on CE at PGD examples (mixed with clean ones when
    ``adv_fraction`` < 1: loss = adv_fraction·CE(adv) + (1 − adv_fraction)·CE(clean)). Seeded;
    returns the model in eval mode."""
    eps = check_nonnegative("eps", eps)
    if not 0 <= adv_fraction <= 1:
        raise ValueError(f"adv_fraction must be in [0, 1], got {adv_fraction}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    n = inputs.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            xb, yb = inputs[idx], targets[idx]
            model.eval()  # attack with fixed BatchNorm statistics
            xa = pgd(model, xb, yb, eps, norm=norm, steps=steps, bounds=bounds, generator=g).x_adv if eps > 0 else xb
            model.train()
            loss = adv_fraction * F.cross_entropy(model(xa), yb)
            if adv_fraction < 1:
                loss = loss + (1 - adv_fraction) * F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()
