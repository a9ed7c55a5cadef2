"""Compositional bijections: apply a chosen sequence of token-wise bijections, step by step or directly.

Ramesh, Lubana, Khona, Dick, Tanaka 2024, "Compositional Capabilities of Autoregressive
Transformers: A Study on Synthetic, Interpretable Tasks" (ICML 2024, arXiv 2311.12997) [code:
rahul13ramesh/compositional_capabilities]. Each of D slots s has the identity and F random
bijections f_{s,1..F} of an alphabet of N data tokens; a composition picks one function per slot and
applies them, in slot order (``order="in_order"``) or a random order of slots::

    y_0 = x,   y_j = f_{σ(j), i_σ(j)}(y_{j−1})  (token-wise),   answer = y_D

Document: ``<bos> T{s}_{i} × D  x_1 … x_L  [<sep> y_j] × D  <eos>`` (``format="step"``: every
intermediate y_1 … y_D) or ``… x <sep> y_D <eos>`` (``format="direct"``). Loss only on the output
part. Task tokens name (slot, function): ``T{s}_0`` is the identity of slot s.

Ground truth: ``world.bijections`` [D, F + 1, N] (row 0 = identity); per example ``functions``
[D] (function index per slot), ``order`` [D] (slot applied at step j), ``intermediates`` [D + 1, L]
(y_0 … y_D) and ``final`` [L]; per token ``block`` (output block of the input token, −1 in the
prompt) and ``target_block`` (block of the next token if it is an output data token, else −1).
The (F + 1)^D compositions are split by ``seed`` into ``n_train`` training compositions and the
held-out rest (``split``).

Task metrics: ``token_acc`` (teacher-forced argmax accuracy on scored targets) and ``answer_acc``
(every token of the final output block right). Acceptance: ``answer_acc`` ≥ 0.95 (this module's
choice; the issue gives no threshold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from assay.config import ConfigError
from assay.worlds.base import Batch
from assay.worlds.vocab import BOS, EOS, SEP, Doc, DocWorld, check_logits, make_vocab, token_accuracy

__all__ = ["BijectionsConfig", "BijectionsWorld", "apply_composition"]


@dataclass(frozen=True, kw_only=True)
class BijectionsConfig:
    """Compositions of random token-wise bijections."""

    n_tokens: int = 10
    """Alphabet size N of the data tokens."""
    x_len: int = 6
    """Length L of the input string x."""
    depth: int = 5
    """Number of slots D (functions composed)."""
    n_functions: int = 4
    """Random bijections per slot F (plus the identity)."""
    format: Literal["step", "direct"] = "step"
    """Emit every intermediate result (step by step) or only the final one (direct)."""
    order: Literal["in_order", "random"] = "in_order"
    """Apply the slots in order, or in a random order per example."""
    n_train: int | None = None
    """Number of compositions in the training split; None = all of them."""
    split: Literal["train", "test"] = "train"
    """Sample training compositions or held-out ones (needs n_train)."""
    seed: int = 0
    """Seed of the static structure (the bijections and the split)."""

    def __post_init__(self) -> None:
        for name in ("n_tokens", "x_len", "depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_functions < 0:
            raise ConfigError(f"n_functions must be >= 0, got {self.n_functions}")
        total = (self.n_functions + 1) ** self.depth
        if self.n_train is not None and not 1 <= self.n_train <= total:
            raise ConfigError(f"n_train must be in 1..{total} (the number of compositions), got {self.n_train}")
        if self.split == "test" and (self.n_train is None or self.n_train == total):
            raise ConfigError("split='test' needs held-out compositions: set n_train below "
                              f"{total} = (n_functions + 1) ** depth")


def apply_composition(bijections: torch.Tensor, functions: list[int], order: list[int],
                      x: list[int]) -> list[list[int]]:
    """``[y_0 = x, y_1, …, y_D]`` applying slot ``order[j]``'s function ``functions[order[j]]`` at step j."""
    ys = [list(x)]
    for slot in order:
        f = bijections[slot, functions[slot]].tolist()
        ys.append([f[t] for t in ys[-1]])
    return ys


class BijectionsWorld(DocWorld):
    """Prompts naming a composition of bijections and an input, followed by the (intermediate) outputs."""

    label_kinds: ClassVar[dict[str, str]] = {"block": "int", "target_block": "int"}
    acceptance: tuple[str, float] = ("answer_acc", 0.95)
    """Metric and threshold the reference model must reach (higher is better)."""

    def __init__(self, config: BijectionsConfig | None = None) -> None:
        self.config = cfg = config or BijectionsConfig()
        rng = np.random.default_rng(cfg.seed)
        N, D, F = cfg.n_tokens, cfg.depth, cfg.n_functions
        perms = [[np.arange(N)] + [rng.permutation(N) for _ in range(F)] for _ in range(D)]
        self.bijections = torch.from_numpy(np.array(perms)).long()
        """Bijections ``[depth, n_functions + 1, n_tokens]``; index 0 of each slot is the identity."""
        total = (F + 1) ** D
        chosen = rng.permutation(total)
        n_train = total if cfg.n_train is None else cfg.n_train
        self.train_compositions = np.sort(chosen[:n_train])
        """Composition indices (base F + 1 digits, slot 0 first) in the training split."""
        self.test_compositions = np.sort(chosen[n_train:])
        """Held-out composition indices."""
        self.vocab = make_vocab([f"d{i}" for i in range(N)] + [f"T{s}_{i}" for s in range(D) for i in range(F + 1)])

    def composition(self, index: int) -> list[int]:
        """Function index per slot of composition ``index``."""
        F1 = self.config.n_functions + 1
        return [(int(index) // F1**s) % F1 for s in range(self.config.depth)]

    def reference_model(self) -> dict[str, Any]:
        """Tiny-transformer settings (spec §4: Ramesh et al.'s nanoGPT; CPU default steps)."""
        return {"n_layers": 2, "n_heads": 1, "d_model": 120, "context": 50, "steps": 3000, "batch_size": 16,
                "lr": 3e-4, "weight_decay": 0.1, "betas": (0.9, 0.95), "pack": False}

    def _doc(self, rng: np.random.Generator) -> Doc:
        cfg = self.config
        pool = self.train_compositions if cfg.split == "train" else self.test_compositions
        functions = self.composition(pool[rng.integers(len(pool))])
        order = list(range(cfg.depth)) if cfg.order == "in_order" else [int(s) for s in rng.permutation(cfg.depth)]
        x = [int(t) for t in rng.integers(cfg.n_tokens, size=cfg.x_len)]
        ys = apply_composition(self.bijections, functions, order, x)
        F1 = cfg.n_functions + 1
        tokens = [BOS] + [4 + cfg.n_tokens + s * F1 + functions[s] for s in order] + [4 + t for t in x]
        block = [-1] * len(tokens)
        outs = ys[1:] if cfg.format == "step" else ys[-1:]
        first_scored = len(tokens) - 1
        for j, y in enumerate(outs):
            tokens += [SEP] + [4 + t for t in y]
            block += [j] * (1 + len(y))
        tokens.append(EOS)
        block.append(-1)
        target_block = [b if tok >= 4 else -1 for b, tok in zip(block[1:], tokens[1:])] + [-1]
        loss = [t >= first_scored for t in range(len(tokens))]
        example = {"functions": functions, "order": order, "intermediates": ys, "final": ys[-1]}
        return Doc(tokens, {"block": block, "target_block": target_block}, loss, example)

    def evaluate(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Teacher-forced token and answer accuracy of ``logits`` [n, T, V] (module docstring)."""
        check_logits(logits, batch)
        tb = batch.labels["target_block"]
        final = (tb == tb.max(1, keepdim=True).values) & (tb >= 0)
        right = (logits.argmax(-1) == batch.targets) | ~final
        return {"token_acc": token_accuracy(logits, batch.targets),
                "answer_acc": float(right.all(1).double().mean()) if len(batch) else float("nan")}
