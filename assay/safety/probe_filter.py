"""Activation-probe safety filter on a causal model, and the one-pass suffix-mode erase-and-check.

Erase-and-check: Kumar, Agarwal, Srinivas, Li, Feizi & Lakkaraju 2024, "Certifying LLM Safety against
Adversarial Prompting" (arXiv 2309.02705). Filter: a linear probe on the residual stream of a causal
LM at one site, read at the last token (a ``last``-pooled probe):

    F(x) = σ(w·h_T(s ⊕ x) + b),   h_τ = the site's output at position τ, s = fixed start tokens

(the start tokens — e.g. BOS or a chat-template header — give the empty sequence a position to score).

One pass for all suffix-mode prefixes [assay design, spec concepts_safety §3]: in suffix mode every
checked sequence is a prefix P[:τ], τ ∈ {L − d, …, L}, and in a causal model h at position |s| + τ − 1
of the full pass depends only on s ⊕ P[:τ]. So one forward pass over s ⊕ P gives every prefix's
score: 1 pass + (d + 1) dot products instead of d + 1 passes, with the same verdicts (scores agree to
float rounding). Batched calls on unequal lengths pad on the right, which causal attention never sees
from the real positions, so no attention mask is needed. Training recipe (§3): full prompts with
their labels plus the prefixes P[:τ], τ ∈ [L − d, L), of safe prompts labelled safe — each safe prompt's
prefixes also come from one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from assay.hooks import run_to
from assay.lenses.probes import LinearProbe, logistic
from assay.safety.certificate import Certificate, EraseConfig, check_budget
from assay.safety.filter import check_prompt

__all__ = ["ProbeFilter", "fit_probe_filter", "one_pass_suffix_check"]


class ProbeFilter:
    """A last-token linear probe on a causal model's residual stream, as a batched safety filter."""

    def __init__(self, model: nn.Module, site: str, probe: LinearProbe, *, start_ids: Sequence[int],
                 pad_id: int = 0, context_length: int | None = None, name: str = "probe") -> None:
        if len(start_ids) == 0:
            raise ValueError("start_ids must hold at least one token (e.g. BOS), so the empty sequence can be scored")
        self.model, self.site, self.probe = model, site, probe
        self.start = tuple(int(t) for t in start_ids)
        self.pad_id, self.name = pad_id, name
        self.context_length = context_length

    def residuals(self, sequences: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Right-padded site outputs ``[n, T, d_model]`` of ``start ⊕ x`` and each x's last index ``[n]``."""
        rows = [self.start + tuple(int(t) for t in s) for s in sequences]
        width = max(len(r) for r in rows)
        device = next(self.model.parameters()).device
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        last = torch.tensor([len(r) - 1 for r in rows], device=device)
        return run_to(self.model, self.site, ids.to(device)), last

    def harmful_logit(self, sequences: Sequence[Sequence[int]]) -> Tensor:
        """Probe scores w·h_last + b ``[n]``."""
        h, last = self.residuals(sequences)
        return self.probe.score(h[torch.arange(len(last), device=h.device), last]).float().cpu()

    def harmful_probability(self, sequences: Sequence[Sequence[int]]) -> Tensor:
        """σ(probe score) at each sequence's last token ``[n]``."""
        return torch.sigmoid(self.harmful_logit(sequences))

    def prefix_logits(self, tokens: Sequence[int]) -> Tensor:
        """Scores of every prefix P[:τ], τ = 0 … L, from ONE forward pass ``[L + 1]``."""
        h, _ = self.residuals([tokens])
        return self.probe.score(h[0, len(self.start) - 1:]).float().cpu()


def one_pass_suffix_check(tokens: Sequence[int], flt: ProbeFilter, config: EraseConfig) -> Certificate:
    """Suffix-mode erase-and-check with one forward pass: same verdict and witness as
    :func:`assay.safety.certificate.erase_and_check` with this filter (longest harmful prefix first)."""
    if config.mode != "suffix":
        raise ValueError(f"the one-pass check covers suffix mode only (every erased sequence is a prefix), got "
                         f"mode={config.mode!r}; use erase_and_check for {config.mode}")
    toks = check_prompt(tokens, flt)
    planned = check_budget(len(toks), config)
    probs = torch.sigmoid(flt.prefix_logits(toks))  # [L + 1], index τ = prefix length
    witness = None
    for tau in range(len(toks), len(toks) - planned, -1):  # P, P[:-1], …: erase_and_check's order
        if float(probs[tau]) > config.threshold:
            witness = toks[:tau]
            break
    return Certificate(method="erase-and-check", mode="suffix", d=config.d, k=1, filter_id=flt.name,
                       n_calls=planned, planned_calls=planned, harmful=witness is not None, witness=witness,
                       certified=True)


def fit_probe_filter(model: nn.Module, site: str, harmful: Sequence[Sequence[int]], safe: Sequence[Sequence[int]], *,
                     start_ids: Sequence[int], d: int, C: float = 1.0, pad_id: int = 0,
                     context_length: int | None = None, name: str = "probe", batch_size: int = 32) -> ProbeFilter:
    """Fit the probe (standardised L2 logistic regression, :func:`assay.lenses.probes.logistic`) on the last
    token of harmful (1) and safe (0) prompts plus every prefix P[:τ], τ ∈ [L − d, L), of the safe ones (0)."""
    if not harmful or not safe:
        raise ValueError(f"need harmful and safe prompts, got {len(harmful)} harmful and {len(safe)} safe")
    shell = ProbeFilter(model, site, LinearProbe(torch.zeros(1), torch.zeros(()), "none"), start_ids=start_ids,
                        pad_id=pad_id, context_length=context_length, name=name)
    feats, labels = [], []
    for label, prompts in ((1, harmful), (0, safe)):
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            h, last = shell.residuals(chunk)
            for row, n in enumerate(last.tolist()):
                first = n if label == 1 else max(n - d, len(shell.start) - 1)
                feats.append(h[row, first:n + 1])
                labels += [label] * (n + 1 - first)
    probe = logistic(torch.cat(feats), torch.tensor(labels), C=C, standardise=True)
    return ProbeFilter(model, site, probe, start_ids=start_ids, pad_id=pad_id, context_length=context_length,
                       name=name)
