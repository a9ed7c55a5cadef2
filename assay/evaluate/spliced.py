"""Downstream fidelity: CE loss and KL when a site's activation is replaced by a reconstruction.

Definitions (SAELens ``evals``; Bricken et al. 2023), next-token CE on the
same tokens with BOS/padding excluded via ``mask``:

    CE recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)      (also vs mean ablation)
    KL score     = (KL_zero − KL_sae) / KL_zero,   KL = KL(p_clean ‖ p_patched), mean over tokens

The replacement runs through :func:`assay.hooks.patch`. ``reconstruct`` is any callable from
activations ``[..., d]`` to activations (an SAE's ``decode(encode(·))``); this module never imports a
method. With ``input_site`` the splice reads one site and overwrites another (a transcoder replacing an
MLP: read ``blocks.i.ln2``, write ``blocks.i.mlp``; Dunefsky et al. 2024, SAELens#513): the input is
captured in the same forward pass, and the baselines ablate the **output** site. :func:`replacement_metrics`
replaces several sites at once (every MLP by its transcoder: the replacement model) and reports CE, KL to
the clean model and top-1 agreement.
Check: CE_clean 3.0, CE_zero 8.0, CE_sae 3.5 → recovered 0.9.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from assay.hooks import patch

__all__ = ["SplicedMetrics", "spliced_metrics", "ReplacementMetrics", "replacement_metrics", "recovered", "logits_of"]


class SplicedMetrics(NamedTuple):
    """Downstream loss with the site spliced; all CE/KL are means over the counted tokens."""

    ce_clean: float
    """CE of the unmodified model."""
    ce_sae: float
    """CE with the site replaced by the reconstruction."""
    ce_zero: float
    """CE with the site zero-ablated."""
    ce_mean: float
    """CE with the site replaced by the mean activation (mean over the counted tokens)."""
    ce_recovered: float
    """(CE_zero − CE_sae)/(CE_zero − CE_clean)."""
    ce_recovered_mean: float
    """(CE_mean − CE_sae)/(CE_mean − CE_clean)."""
    kl_sae: float
    """Mean KL(p_clean ‖ p_sae)."""
    kl_zero: float
    """Mean KL(p_clean ‖ p_zero)."""
    kl_score: float
    """(KL_zero − KL_sae)/KL_zero."""
    n_tokens: int
    """Number of predicted tokens counted."""


def recovered(clean: float, patched: float, baseline: float) -> float:
    """(baseline − patched)/(baseline − clean)."""
    return (baseline - patched) / (baseline - clean) if baseline != clean else float("nan")


def logits_of(output) -> Tensor:
    """Logits from a model output (a tensor, or an object/dict with ``logits``)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict):
        return output["logits"]
    return output.logits


def _keeping(fn: Callable[[Tensor], Tensor], keep_first: int) -> Callable[[Tensor], Tensor]:
    """``fn`` with the first ``keep_first`` positions (dim 1) of its input passed through unchanged."""
    if keep_first == 0:
        return fn

    def kept(h: Tensor) -> Tensor:
        if h.dim() != 3:
            raise ValueError(f"keep_first needs activations [n, T, d] at the site, got shape {tuple(h.shape)}")
        out = fn(h).clone()
        out[:, :keep_first] = h[:, :keep_first]
        return out

    return kept


@contextmanager
def _splice_from(model: nn.Module, splices: Mapping[str, tuple[str, Callable[[Tensor], Tensor]]],
                 keep_first: int) -> Iterator[None]:
    """Replace each ``site`` by ``fn`` of its ``input_site``'s activation in the same pass, for ``splices``
    ``{site: (input_site, fn)}`` all at once (the first ``keep_first`` positions keep ``site``'s own
    activation). With several splices, later input sites see the earlier replacements (errors compound)."""
    from assay.hooks import capture

    def make(site: str, input_site: str, fn: Callable[[Tensor], Tensor], cap) -> Callable[[Tensor], Tensor]:
        def from_input(h: Tensor) -> Tensor:
            if input_site not in cap:
                raise ValueError(f"input_site {input_site!r} has not run when {site!r} is spliced; it must come "
                                 "earlier in the forward pass (e.g. blocks.0.ln2 → blocks.0.mlp)")
            x = cap.pop(input_site)
            if x.shape[:-1] != h.shape[:-1]:
                raise ValueError(f"input_site {input_site!r} gives shape {tuple(x.shape)} but {site!r} has "
                                 f"{tuple(h.shape)}: the two sites must share their leading (batch, position) shape")
            out = fn(x)
            if keep_first:
                out = out.clone()
                out[:, :keep_first] = h[:, :keep_first]
            return out

        return from_input

    for site, (input_site, _) in splices.items():
        if input_site == site:
            raise ValueError(f"input_site and site are both {site!r}; a transcoder splice reads one site and "
                             "replaces another")
    with capture(model, [i for i, _ in splices.values()]) as cap:
        with patch(model, {site: make(site, i, fn, cap) for site, (i, fn) in splices.items()}):
            yield


class ReplacementMetrics(NamedTuple):
    """The model with several sites replaced at once (e.g. every MLP by its transcoder: the replacement
    model), against the clean model, over the counted tokens."""

    ce_clean: float
    """CE of the unmodified model."""
    ce_replaced: float
    """CE of the replacement model."""
    kl: float
    """Mean KL(p_clean ‖ p_replaced)."""
    top1_agreement: float
    """Fraction of tokens where the two models' most likely next token agree."""
    n_tokens: int
    """Number of predicted tokens counted."""


@torch.no_grad()
def replacement_metrics(model: nn.Module, splices: Mapping[str, tuple[str, Callable[[Tensor], Tensor]]],
                        batches: Iterable[Tensor | tuple[Tensor, Tensor]], *, keep_first: int = 0
                        ) -> ReplacementMetrics:
    """CE, KL to the clean model and top-1 agreement with ``splices`` ``{site: (input_site, fn)}`` applied
    together (circuits.md §1.3: splice every layer at once; errors compound, so never report only the
    one-layer figures). ``batches`` and ``keep_first`` as in :func:`spliced_metrics`."""
    if not splices:
        raise ValueError("give at least one {site: (input_site, fn)} splice")
    sums = dict(clean=0.0, rep=0.0, kl=0.0, agree=0.0)
    count = 0
    for item in batches:
        tokens, mask = item if isinstance(item, tuple) else (item, torch.ones_like(item, dtype=torch.bool))
        mask = mask.bool()
        clean = logits_of(model(tokens))
        clean_logp = clean[:, :-1].float().log_softmax(-1)
        ce, _ = _ce_kl(clean, clean_logp, tokens, mask)
        sums["clean"] += ce.item()
        with _splice_from(model, splices, keep_first):
            out = logits_of(model(tokens))
        ce, kl = _ce_kl(out, clean_logp, tokens, mask)
        sums["rep"] += ce.item()
        sums["kl"] += kl.item()
        m = mask[:, 1:]
        sums["agree"] += (out[:, :-1].argmax(-1) == clean[:, :-1].argmax(-1))[m].sum().item()
        count += int(m.sum())
    if count == 0:
        raise ValueError("no target tokens were counted (empty batches or an all-False mask)")
    return ReplacementMetrics(sums["clean"] / count, sums["rep"] / count, sums["kl"] / count, sums["agree"] / count,
                              count)


def _ce_kl(logits: Tensor, clean_logp: Tensor, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    logp = logits[:, :-1].float().log_softmax(-1)
    tgt = tokens[:, 1:]
    ce = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    kl = F.kl_div(logp, clean_logp, log_target=True, reduction="none").sum(-1)
    m = mask[:, 1:]
    return ce[m].sum(), kl[m].sum()


@torch.no_grad()
def spliced_metrics(
    model: nn.Module,
    site: str,
    batches: Iterable[Tensor | tuple[Tensor, Tensor]],
    reconstruct: Callable[[Tensor], Tensor],
    *,
    mean_activation: Tensor | None = None,
    keep_first: int = 0,
    input_site: str | None = None,
) -> SplicedMetrics:
    """CE/KL with ``site`` spliced, over ``batches`` of token ids ``[n, T]`` or ``(tokens, mask)`` pairs.

    ``mask [n, T]`` marks target tokens to count (exclude padding; position 0 is never a target).
    ``mean_activation [d]`` for mean ablation; None estimates it from the clean activations of the
    first batch. ``keep_first`` leaves the first positions of every sequence unpatched in all three
    replacements (1: the BOS, whose outsized activation SAEs are not trained on); needs ``[n, T, d]``
    activations. ``input_site``: ``reconstruct`` maps that site's activation (same pass, e.g. the MLP input)
    to the replacement of ``site`` (the MLP output); None: it maps ``site``'s own activation.
    """
    if keep_first < 0:
        raise ValueError(f"keep_first must be >= 0, got {keep_first}")
    if input_site is not None and input_site == site:
        raise ValueError(f"input_site and site are both {site!r}; a transcoder splice reads one site and "
                         "replaces another (leave input_site=None to splice an SAE)")
    sums = dict(clean=0.0, sae=0.0, zero=0.0, mean=0.0, kl_sae=0.0, kl_zero=0.0)
    count = 0
    mean = mean_activation
    for item in batches:
        tokens, mask = item if isinstance(item, tuple) else (item, torch.ones_like(item, dtype=torch.bool))
        mask = mask.bool()
        if mean is None:
            from assay.hooks import capture

            with capture(model, [site]) as cap:
                model(tokens)
            h = cap[site]
            mean = h[mask].mean(0) if h.shape[:2] == mask.shape else h.reshape(-1, h.shape[-1]).mean(0)
        clean = logits_of(model(tokens))
        clean_logp = clean[:, :-1].float().log_softmax(-1)
        ce, _ = _ce_kl(clean, clean_logp, tokens, mask)
        sums["clean"] += ce.item()
        m = mean
        for name, fn in (
            ("sae", lambda h: reconstruct(h).to(h.dtype)),
            ("zero", torch.zeros_like),
            ("mean", lambda h, m=m: m.to(h.dtype).expand_as(h).clone()),
        ):
            with (_splice_from(model, {site: (input_site, fn)}, keep_first) if name == "sae" and input_site
                  else patch(model, {site: _keeping(fn, keep_first)})):
                out = logits_of(model(tokens))
            ce, kl = _ce_kl(out, clean_logp, tokens, mask)
            sums[name] += ce.item()
            if name in ("sae", "zero"):
                sums["kl_" + name] += kl.item()
        count += int(mask[:, 1:].sum())
    if count == 0:
        raise ValueError("no target tokens were counted (empty batches or an all-False mask)")
    c = {k: v / count for k, v in sums.items()}
    return SplicedMetrics(
        ce_clean=c["clean"], ce_sae=c["sae"], ce_zero=c["zero"], ce_mean=c["mean"],
        ce_recovered=recovered(c["clean"], c["sae"], c["zero"]),
        ce_recovered_mean=recovered(c["clean"], c["sae"], c["mean"]),
        kl_sae=c["kl_sae"], kl_zero=c["kl_zero"],
        kl_score=(c["kl_zero"] - c["kl_sae"]) / c["kl_zero"] if c["kl_zero"] > 0 else float("nan"),
        n_tokens=count,
    )
