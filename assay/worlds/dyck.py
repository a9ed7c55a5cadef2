"""Dyck-k: balanced strings of k bracket types, sampled from a PCFG, with the stack state as truth.

Menon, Shrivastava, Krueger, Lubana 2025, "Analyzing (In)Abilities of SAEs via Formal Languages"
(NAACL 2025, arXiv 2410.11767) [code: Abhinav271828/pcfg-sae-final]. Grammar (top-down expansion,
a fresh uniform for every rule choice, samples longer than ``max_len`` brackets rejected)::

    S       → S S [p_concat] | Brack_i [(1 − p_concat)/k] for i = 0..k−1
    Brack_i → o_i S c_i [p_nest] | o_i c_i [1 − p_nest]

Documents are ``<bos> brackets <eos>``. Per-token labels (state after reading the token):
``depth`` (stack size), ``top`` (type of the innermost open bracket, −1 if none), ``bracket`` (type
of the token itself, −1 for specials), ``is_open``, ``matching_pos`` (position of the partner
bracket), ``is_complete`` (depth 0 after at least one bracket), ``valid_next`` (bool [n, T, V]: every
o_j; c_top if depth > 0; ``<eos>`` iff complete) and ``forced_close`` (1 where the next token is a
closing bracket — its type is forced by the stack even though *whether* to close is not).

Check values: ``o0 o1 c1 o0 c0 c0`` → depth 1,2,1,2,1,0, top 0,1,0,0,0,−1; untruncated mean length
L = (1 − p_concat)·2 / (1 − 2 p_concat − (1 − p_concat) p_nest) = 28 for the defaults (L = 0.6 L +
0.7 (2 + 0.5 L)); 95.4% of samples have ≤ 128 brackets.

Task metric (``evaluate``): ``close_acc`` — at positions whose next token is a closing bracket,
the argmax over the k closing brackets is the correct one. Acceptance for the reference model:
``close_acc`` ≥ 0.98 (issue 3). Also ``valid_next_acc`` (argmax over the vocabulary is a valid
continuation), ``valid_mass`` (probability on valid continuations) and ``ce``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from assay.config import ConfigError
from assay.worlds.base import Batch
from assay.worlds.vocab import (
    BOS,
    EOS,
    IGNORE,
    Doc,
    DocWorld,
    argmax_in_set,
    check_logits,
    make_vocab,
    masked_cross_entropy,
    masked_mean,
    valid_mass,
)

__all__ = ["DyckConfig", "DyckWorld", "dyck_states"]


@dataclass(frozen=True, kw_only=True)
class DyckConfig:
    """Dyck-k balanced brackets from the Menon et al. PCFG."""

    k: int = 2
    """Number of bracket types."""
    p_nest: float = 0.5
    """Probability that a bracket pair encloses a non-empty S (Brack → o S c)."""
    p_concat: float = 0.3
    """Probability of S → S S."""
    max_len: int = 128
    """Samples with more brackets than this are rejected and redrawn."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k (bracket types) must be >= 1, got {self.k}")
        if not 0.0 <= self.p_nest <= 1.0:
            raise ConfigError(f"p_nest must be in [0, 1], got {self.p_nest}")
        if not 0.0 <= self.p_concat < 1.0:
            raise ConfigError(f"p_concat must be in [0, 1), got {self.p_concat}")
        if 2 * self.p_concat + (1 - self.p_concat) * self.p_nest >= 1.0:
            raise ConfigError(
                f"p_concat={self.p_concat}, p_nest={self.p_nest} make the grammar critical or supercritical "
                "(2 p_concat + (1 − p_concat) p_nest >= 1: strings grow without bound); lower either"
            )
        if self.max_len < 2:
            raise ConfigError(f"max_len must be >= 2 (the shortest string is o c), got {self.max_len}")


def dyck_states(codes: list[int], k: int) -> dict[str, list[Any]]:
    """Stack walk over bracket codes (2i = o_i, 2i + 1 = c_i): the labels after each bracket.

    Returns lists ``depth``, ``top``, ``bracket``, ``is_open``, ``matching_pos`` (index into
    ``codes``, −1 if unmatched), ``is_complete`` and ``valid_next`` (tuples of codes; −1 stands for
    end-of-string). Raises ``ValueError`` on a close that does not match.
    """
    stack: list[int] = []
    out: dict[str, list[Any]] = {n: [] for n in ("depth", "top", "bracket", "is_open", "matching_pos",
                                                  "is_complete", "valid_next")}
    match = [-1] * len(codes)
    opens = tuple(2 * j for j in range(k))
    for t, c in enumerate(codes):
        kind, is_open = c // 2, c % 2 == 0
        if not 0 <= kind < k:
            raise ValueError(f"bracket code {c} out of range for k={k}")
        if is_open:
            stack.append(t)
        else:
            if not stack or codes[stack[-1]] // 2 != kind:
                raise ValueError(f"unbalanced close c{kind} at position {t}")
            j = stack.pop()
            match[j], match[t] = t, j
        top = codes[stack[-1]] // 2 if stack else -1
        out["depth"].append(len(stack))
        out["top"].append(top)
        out["bracket"].append(kind)
        out["is_open"].append(int(is_open))
        out["is_complete"].append(int(not stack))
        out["valid_next"].append(opens + ((2 * top + 1,) if stack else (-1,)))
    out["matching_pos"] = match
    return out


class DyckWorld(DocWorld):
    """Dyck-k documents ``<bos> brackets <eos>`` with the stack state per token."""

    label_kinds: ClassVar[dict[str, str]] = {
        "depth": "int", "top": "int", "bracket": "int", "is_open": "int", "matching_pos": "int",
        "is_complete": "int", "forced_close": "int", "valid_next": "set",
    }
    position_labels: ClassVar[tuple[str, ...]] = ("matching_pos",)
    acceptance: tuple[str, float] = ("close_acc", 0.98)
    """Metric and threshold the reference model must reach (higher is better)."""

    def __init__(self, config: DyckConfig | None = None) -> None:
        self.config = config or DyckConfig()
        k = self.config.k
        self.vocab = make_vocab(t for i in range(k) for t in (f"o{i}", f"c{i}"))
        self.open_ids = tuple(4 + 2 * i for i in range(k))
        """Token id of each opening bracket type."""
        self.close_ids = tuple(5 + 2 * i for i in range(k))
        """Token id of each closing bracket type."""

    def reference_model(self) -> dict[str, Any]:
        """Tiny-transformer settings (spec §2, CPU default); train on ``pack(batch, context)``."""
        return {"n_layers": 2, "n_heads": 2, "d_model": 64, "context": 64, "steps": 3000, "batch_size": 64,
                "lr": 1e-3, "weight_decay": 1e-4, "betas": (0.9, 0.95), "pack": True}

    def sample_codes(self, rng: np.random.Generator) -> list[int]:
        """One bracket string as codes (2i = o_i, 2i + 1 = c_i), by top-down PCFG expansion."""
        cfg = self.config
        share = (1.0 - cfg.p_concat) / cfg.k
        while True:
            out: list[int] = []
            stack = [-1]  # -1 = S, -2 - i = Brack_i, >= 0 = a bracket code to emit
            while stack and len(out) <= cfg.max_len:
                sym = stack.pop()
                if sym >= 0:
                    out.append(sym)
                elif sym == -1:
                    u = rng.random()
                    if u < cfg.p_concat:
                        stack += [-1, -1]
                    else:
                        stack.append(-2 - min(int((u - cfg.p_concat) / share), cfg.k - 1))
                else:
                    i = -2 - sym
                    out.append(2 * i)
                    stack.append(2 * i + 1)
                    if rng.random() < cfg.p_nest:
                        stack.append(-1)
            if not stack and len(out) <= cfg.max_len:
                return out

    def doc_from_codes(self, codes: list[int]) -> Doc:
        """The document and labels of a bracket string (codes as in :meth:`sample_codes`)."""
        s = dyck_states(codes, self.config.k)
        opens = tuple(self.open_ids)
        tokens = [BOS] + [4 + c for c in codes] + [EOS]
        by_top = {-1: opens + (EOS,), **{j: opens + (self.close_ids[j],) for j in range(self.config.k)}}
        labels: dict[str, list[Any]] = {
            "depth": [0] + s["depth"] + [0],
            "top": [-1] + s["top"] + [-1],
            "bracket": [-1] + s["bracket"] + [-1],
            "is_open": [-1] + s["is_open"] + [-1],
            "matching_pos": [-1] + [m + 1 if m >= 0 else -1 for m in s["matching_pos"]] + [-1],
            "is_complete": [0] + s["is_complete"] + [0],
            "valid_next": [opens] + [by_top[t] for t in s["top"]] + [opens],
        }
        labels["forced_close"] = [int(c % 2 == 1) for c in codes] + [0, 0]
        return Doc(tokens, labels, [True] * len(tokens))

    def _doc(self, rng: np.random.Generator) -> Doc:
        return self.doc_from_codes(self.sample_codes(rng))

    def evaluate(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Task metrics of next-token ``logits`` [n, T, V] on ``batch`` (see module docstring)."""
        check_logits(logits, batch)
        scored = batch.targets != IGNORE
        forced = (batch.labels["forced_close"] == 1) & scored
        close = torch.tensor(self.close_ids)
        pred_close = close[logits[..., close].argmax(-1)]
        ce = masked_cross_entropy(logits, batch.targets)
        return {
            "close_acc": masked_mean((pred_close == batch.targets).float(), forced),
            "valid_next_acc": argmax_in_set(logits, batch.labels["valid_next"], scored),
            "valid_mass": valid_mass(logits, batch.labels["valid_next"], scored),
            "ce": masked_mean(ce, scored),
        }
