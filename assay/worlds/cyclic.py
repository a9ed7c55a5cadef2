"""Cyclic concepts: weekday / month arithmetic ("what day is 3 days after friday?").

The phenomenon: Engels, Michaud, Liao, Gurnee, Tegmark 2024, "Not All Language Model Features Are
Linear" (circular weekday/month features); the task after Wurgaft et al. 2026, "Manifold Steering"
("What day is k days after z?"). Synthetic version (spec §6): concept tokens c_0 … c_{N−1} (N = 7
weekdays or 12 months), offset tokens 1 … N − 1, and a document ::

    <bos> c_z op k = c_a <eos>,   a = (z + k) mod N for op "+",  (z − k) mod N for op "-"

The concept's position on its circle is the ground truth: angle θ(c_z) = 2πz/N. Per token:
``concept`` (index z of a concept token, −1 otherwise) and ``angle`` (2πz/N, NaN otherwise); per
example ``z``, ``k``, ``sign`` (+1/−1), ``answer`` and ``answer_angle``. All N·(N − 1)·|ops| prompts
are split by ``seed`` into train and test (``test_fraction``). Only the answer token is scored.

Task metric: ``answer_acc`` (argmax at the ``=`` position is the right concept); acceptance ≥ 0.95
on the training split (this module's choice; the issue gives no threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from assay.config import ConfigError
from assay.worlds.base import Batch
from assay.worlds.vocab import BOS, EOS, Doc, DocWorld, check_logits, make_vocab, token_accuracy

__all__ = ["CyclicConfig", "CyclicWorld", "CONCEPTS"]

CONCEPTS: dict[str, tuple[str, ...]] = {
    "weekday": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "month": ("january", "february", "march", "april", "may", "june", "july", "august", "september",
              "october", "november", "december"),
}
"""The concept tokens of each circle, in cyclic order."""


@dataclass(frozen=True, kw_only=True)
class CyclicConfig:
    """Modular arithmetic on a circle of named concepts."""

    concept: Literal["weekday", "month"] = "weekday"
    """Which circle: 7 weekdays or 12 months."""
    ops: tuple[str, ...] = ("+",)
    """Operators used: "+" (k after) and/or "-" (k before)."""
    split: Literal["train", "test", "all"] = "train"
    """Which prompts to sample: the training split, the held-out split, or all."""
    test_fraction: float = 0.2
    """Fraction of prompts held out for the test split."""
    seed: int = 0
    """Seed of the train/test split."""

    def __post_init__(self) -> None:
        if not self.ops or any(op not in ("+", "-") for op in self.ops) or len(set(self.ops)) != len(self.ops):
            raise ConfigError(f"ops must be distinct items from ('+', '-'), got {self.ops}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.split == "test" and self.test_fraction == 0.0:
            raise ConfigError("split='test' with test_fraction=0 has no prompts; raise test_fraction")


class CyclicWorld(DocWorld):
    """``c_z op k = c_answer`` prompts with the concepts' angles as ground truth."""

    label_kinds: ClassVar[dict[str, str]] = {"concept": "int", "angle": "float"}
    acceptance: tuple[str, float] = ("answer_acc", 0.95)
    """Metric and threshold the reference model must reach (higher is better)."""

    def __init__(self, config: CyclicConfig | None = None) -> None:
        self.config = cfg = config or CyclicConfig()
        names = CONCEPTS[cfg.concept]
        N = self.n = len(names)
        self.vocab = make_vocab(list(names) + [str(k) for k in range(1, N)] + ["+", "-", "="])
        self.angles = torch.tensor([2 * math.pi * z / N for z in range(N)])
        """Angle 2πz/N of each concept on its circle ``[N]``."""
        prompts = [(z, op, k) for op in cfg.ops for z in range(N) for k in range(1, N)]
        perm = np.random.default_rng(cfg.seed).permutation(len(prompts))
        n_test = int(round(cfg.test_fraction * len(prompts)))
        if cfg.split == "test" and n_test == 0:
            raise ConfigError(f"test_fraction={cfg.test_fraction} holds out no prompt of {len(prompts)}")
        self.test_prompts = sorted(prompts[i] for i in perm[:n_test])
        """Held-out (z, op, k) prompts."""
        self.train_prompts = sorted(prompts[i] for i in perm[n_test:])
        """Training (z, op, k) prompts."""
        self._pool = {"train": self.train_prompts, "test": self.test_prompts, "all": sorted(prompts)}[cfg.split]

    def reference_model(self) -> dict[str, Any]:
        """Tiny-transformer settings (spec §6 CPU default)."""
        return {"n_layers": 2, "n_heads": 2, "d_model": 64, "context": 8, "steps": 2000, "batch_size": 64,
                "lr": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.95), "pack": False}

    def _doc(self, rng: np.random.Generator) -> Doc:
        z, op, k = self._pool[rng.integers(len(self._pool))]
        sign = 1 if op == "+" else -1
        a = (z + sign * k) % self.n
        tid = self.token_id
        tokens = [BOS, 4 + z, tid(op), tid(str(k)), tid("="), 4 + a, EOS]
        concept = [-1, z, -1, -1, -1, a, -1]
        angle = [2 * math.pi * c / self.n if c >= 0 else math.nan for c in concept]
        loss = [False, False, False, False, True, False, False]
        example = {"z": z, "k": k, "sign": sign, "answer": a, "answer_angle": 2 * math.pi * a / self.n}
        return Doc(tokens, {"concept": concept, "angle": angle}, loss, example)

    def evaluate(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Answer accuracy of ``logits`` [n, T, V] at the ``=`` position."""
        check_logits(logits, batch)
        return {"answer_acc": token_accuracy(logits, batch.targets)}
