"""Input checks shared by the robustness methods: noise scales, radii, and classifier outputs.

Every robustness estimator here needs a *classifier*: a model whose forward pass returns a
floating tensor of logits shaped ``[batch, n_classes]`` with at least two classes. These helpers turn
the ways that can go wrong (a regression head, a sequence model returning ``[batch, T, V]``, a
Hugging Face output object, a wrong batch size) into one clear error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["check_positive", "check_nonnegative", "classifier_logits", "check_target"]


def check_positive(name: str, value: float) -> float:
    """``value`` as a float, or a ``ValueError`` unless it is finite and > 0."""
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def check_nonnegative(name: str, value: float) -> float:
    """``value`` as a float, or a ``ValueError`` unless it is finite and >= 0."""
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def classifier_logits(model: Callable[[torch.Tensor], object], x: torch.Tensor) -> torch.Tensor:
    """Run ``model(x)`` and check it returned classifier logits ``[batch, n_classes]``, n_classes ≥ 2."""
    out = model(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"the model must return a tensor of logits [batch, n_classes], got {type(out).__name__}; "
            "wrap it, e.g. lambda x: model(x).logits"
        )
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"the model must return logits of shape [batch, n_classes] = [{x.shape[0]}, C], got "
            f"{tuple(out.shape)}; for sequence models select one position, e.g. lambda x: model(x)[:, -1]"
        )
    if out.shape[1] < 2:
        raise ValueError(
            f"robustness of a prediction needs a classifier with at least 2 classes; the model returns "
            f"{out.shape[1]} output(s) per example (a regression or single-logit head). For a binary "
            "classifier with one logit s, use lambda x: torch.cat([-s(x), s(x)], 1) / 2"
        )
    if not out.is_floating_point():
        raise TypeError(f"the model must return floating-point logits, got dtype {out.dtype}")
    return out


def check_target(target: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The class each example is scored against: ``target`` if given (checked), else argmax logits."""
    if target is None:
        return logits.argmax(1)
    target = torch.as_tensor(target, device=logits.device)
    if target.shape != (logits.shape[0],) or target.is_floating_point():
        raise ValueError(f"target must be class ids of shape [{logits.shape[0]}], got {tuple(target.shape)} "
                         f"{target.dtype}")
    if target.numel() and (target.min() < 0 or target.max() >= logits.shape[1]):
        raise ValueError(f"target class ids must lie in [0, {logits.shape[1]}), got "
                         f"[{int(target.min())}, {int(target.max())}]")
    return target.long()
