"""Matrix completion as a token task: masked low-rank matrices, and the singular-value-thresholding baseline.

Gopalani, Lubana, Hu 2024, "Abrupt Learning in Transformers: A Case Study on Matrix Completion"
(NeurIPS 2024, arXiv 2410.22244) [code: pulkitgopalani/tf-matcomp].
M = UVᵀ ∈ ℝ^{n×n}, U, V ∈ U[−1, 1]^{n×r}, entries rounded to
``value_step``; each entry is masked independently with probability p. Tokens: ``<mask>`` and one
token per value −value_max, −value_max + step, …, value_max.

Two layouts. ``"encoder"`` (default), the paper's: a row is ``m₁₁ … m_nn`` (row-major, masked entries as
``<mask>``) read by a bidirectional model (``causal=False``), and every position is trained to output its true
entry. ``"copy"``, for a causal model: the masked matrix twice, ``m₁₁ … m_nn <sep> m₁₁ … m_nn``; at the second
copy every position has seen the whole masked matrix. The loss covers every entry (``loss_on="all"``, the
repo's) or the masked ones (``"masked"``, §9's MLM loss); it is the squared error of the expected value under
the softmax over value tokens (``loss="mse"``, default: a real-valued output, as the repo's MSE head) or
cross-entropy over value tokens (``"ce"``). Phenomenon: a plateau where observed entries are copied and a
masked entry is predicted as the mean 0 — masked MSE ≈ E[M²] = r/9 (rank 2: 0.2222) — then a sudden drop.
``evaluate`` reads the model's prediction as that expected value.

Per-token labels [n, T]: ``entry`` (true value; NaN at the first copy and ``<sep>`` of the copy layout),
``masked`` (bool; False off the target positions). Per-matrix labels: ``matrix`` [n, n, n] (rounded M), ``mask``
[n, n, n] (True = masked), ``U``, ``V`` [n, n, r].

Baseline: :func:`svt_complete`, singular value thresholding (Cai, Candès, Shen 2010, "A Singular
Value Thresholding Algorithm for Matrix Completion", SIAM J. Optim.) — the iteration
X^k = D_τ(Y^{k−1}), Y^k = Y^{k−1} + δ P_Ω(M − X^k), D_τ(Y) = U max(Σ − τ, 0) Vᵀ, which for large τ
approaches the nuclear-norm-minimal completion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from assay.config import ConfigError, check_choice
from assay.worlds.base import Batch
from assay.worlds.vocab import IGNORE, PAD, SEP, check_logits, make_vocab

__all__ = ["MatrixCompletionConfig", "MatrixCompletionWorld", "shrink_singular_values", "svt_complete"]

MASK = 4
"""Token id of ``<mask>``; value tokens follow it."""


@dataclass(frozen=True, kw_only=True)
class MatrixCompletionConfig:
    """Masked low-rank matrices written as token sequences."""

    size: int = 5
    """Rows and columns n of M."""
    rank: int = 2
    """Rank r of M = UVᵀ (1 ≤ r ≤ size)."""
    mask_prob: float = 0.3
    """Probability p that an entry is masked."""
    value_step: float = 0.1
    """Resolution of the value tokens (entries are rounded to it)."""
    value_max: float | None = None
    """Value tokens span [−value_max, value_max]; None: ``rank`` (|u·v| ≤ r for U, V ∈ [−1, 1])."""
    loss_on: Literal["all", "masked"] = "all"
    """Train on every entry (the repo) or only on the masked entries (§9's MLM loss)."""
    layout: Literal["encoder", "copy"] = "encoder"
    """``"encoder"``: a row is the n² masked entries and each position is trained to output its true entry — the
    paper's BERT input, for a bidirectional model (``reference_model()`` sets ``causal=False``); ``"copy"``: the
    masked matrix twice, ``m₁₁ … m_nn <sep> m₁₁ … m_nn``, targets at the second copy, for a causal model."""
    loss: Literal["mse", "ce"] = "mse"
    """``"mse"``: squared error of the expected value under the softmax over value tokens (a real-valued output,
    as the paper's MSE head; :meth:`MatrixCompletionWorld.training_loss`); ``"ce"``: cross-entropy over value
    tokens (the trainer's default loss on ``targets``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 2:
            raise ConfigError(f"size must be an integer >= 2, got {self.size!r}")
        if not isinstance(self.rank, int) or not 1 <= self.rank <= self.size:
            raise ConfigError(f"rank must lie in [1, size={self.size}] (an n×n matrix has rank at most n), "
                              f"got {self.rank!r}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"mask_prob must lie in (0, 1): with 0 nothing is to be completed, with 1 nothing is "
                              f"observed; got {self.mask_prob}")
        if not self.value_step > 0:
            raise ConfigError(f"value_step must be > 0, got {self.value_step}")
        if self.value_max is not None and self.value_max < self.rank:
            raise ConfigError(f"value_max={self.value_max} < rank={self.rank}: entries of a rank-{self.rank} matrix "
                              f"with U, V ∈ [−1, 1] reach ±{self.rank}; raise value_max or leave it None")
        check_choice("loss_on", self.loss_on, ("all", "masked"))
        check_choice("layout", self.layout, ("encoder", "copy"))
        check_choice("loss", self.loss, ("mse", "ce"))

    @property
    def max_value(self) -> float:
        """The largest value token, ``value_max`` or ``rank``."""
        return float(self.rank if self.value_max is None else self.value_max)

    @property
    def first_target(self) -> int:
        """Position of entry m₁₁'s prediction in a row: 0 (encoder) or n² + 1 (the second copy)."""
        return 0 if self.layout == "encoder" else self.size**2 + 1

    @property
    def n_values(self) -> int:
        """Number of value tokens."""
        return 2 * round(self.max_value / self.value_step) + 1


def shrink_singular_values(Y: torch.Tensor, tau: float) -> torch.Tensor:
    """D_τ(Y) = U max(Σ − τ, 0) Vᵀ for matrices ``Y`` [..., m, n] (the proximal map of τ‖·‖_*)."""
    U, S, Vh = torch.linalg.svd(Y, full_matrices=False)
    return U @ torch.diag_embed((S - tau).clamp_min(0)) @ Vh


def svt_complete(observed: torch.Tensor, known: torch.Tensor, *, tau: float | None = None, delta: float | None = None,
                 steps: int = 500) -> torch.Tensor:
    """Singular value thresholding (Cai, Candès & Shen 2010) for matrices [..., m, n]: ``observed`` entries
    count where ``known`` is True. Defaults τ = 5·√(mn), δ = min(1.2 · mn / |Ω|, 1.9) (the paper's, per matrix, kept below 2 where the
    iteration converges)."""
    if observed.shape != known.shape:
        raise ValueError(f"observed {tuple(observed.shape)} and known {tuple(known.shape)} must have one shape")
    m, n = observed.shape[-2:]
    tau = 5.0 * (m * n) ** 0.5 if tau is None else tau
    k = known.to(observed.dtype)
    frac = k.sum((-2, -1), keepdim=True).clamp_min(1) / (m * n)
    step = (1.2 / frac).clamp_max(1.9) if delta is None else torch.full_like(frac, delta)  # converges for 0 < δ < 2
    Y = torch.zeros_like(observed)
    X = Y
    for _ in range(steps):
        X = shrink_singular_values(Y, tau)
        Y = Y + step * k * (observed - X)
    return X


class MatrixCompletionWorld:
    """Masked rank-r matrices as token rows (``m …`` or ``m … <sep> m …``); the true matrix and mask are the
    ground truth."""

    pad_id: int = PAD

    def __init__(self, config: MatrixCompletionConfig | None = None) -> None:
        self.config = cfg = config or MatrixCompletionConfig()
        half = cfg.n_values // 2
        self.values = torch.arange(-half, half + 1, dtype=torch.float64) * cfg.value_step
        """The value of each value token (token id ``MASK + 1 + i`` has value ``values[i]``)."""
        self.vocab = make_vocab(("<mask>", *(f"{v:.6g}" for v in self.values.tolist())))
        self.acceptance = ("masked_mse", 0.5 * cfg.rank / 9, "min")
        """Masked-entry MSE must fall to half the plateau r/9; lower is better."""
        self.training_loss = self.value_mse if cfg.loss == "mse" else None
        """The loss :func:`assay.models.train.train` minimises, ``(logits, batch) -> scalar``; None: its
        cross-entropy on ``targets``."""

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids ``[T]`` → token strings (padding dropped)."""
        return [self.vocab[i] for i in ids.tolist() if i != self.pad_id]

    def tokenize(self, values: torch.Tensor) -> torch.Tensor:
        """Values (multiples of ``value_step`` within ±max) → token ids."""
        idx = torch.round(values.double() / self.config.value_step).long() + len(self.values) // 2
        if (idx < 0).any() or (idx >= len(self.values)).any():
            raise ValueError(f"values outside ±{self.config.max_value} cannot be tokenised")
        return idx + MASK + 1

    def detokenize(self, ids: torch.Tensor) -> torch.Tensor:
        """Value token ids → values (float64)."""
        return self.values[ids - MASK - 1]

    def reference_model(self) -> dict[str, Any]:
        """Tiny-transformer settings (spec §9 CPU default: 2 layers, d = 64; steps measured in docs/dynamics_worlds.md)."""
        cfg = self.config
        encoder = cfg.layout == "encoder"
        return {"n_layers": 2, "n_heads": 4, "d_model": 64, "context": cfg.first_target + cfg.size**2,
                **({"causal": False} if encoder else {}), "steps": 3000, "batch_size": 128, "lr": 1e-3, "warmup": 100,
                "weight_decay": 0.0}

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        """``n`` masked matrices as token rows, with the truth."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        cfg = self.config
        s, r = cfg.size, cfg.rank
        U = torch.rand(n, s, r, generator=generator, dtype=torch.float64) * 2 - 1
        V = torch.rand(n, s, r, generator=generator, dtype=torch.float64) * 2 - 1
        M = torch.round(U @ V.transpose(1, 2) / cfg.value_step) * cfg.value_step + 0.0  # + 0.0: no −0
        mask = torch.rand(n, s, s, generator=generator, dtype=torch.float64) < cfg.mask_prob
        true_ids = self.tokenize(M).reshape(n, s * s)
        shown = torch.where(mask.reshape(n, -1), MASK, true_ids)
        if cfg.layout == "copy":
            shown = torch.cat([shown, torch.full((n, 1), SEP, dtype=torch.long), shown], 1)
        inputs, at = shown, cfg.first_target
        scored = mask.reshape(n, -1) if cfg.loss_on == "masked" else torch.ones(n, s * s, dtype=torch.bool)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, at:] = torch.where(scored, true_ids, IGNORE)
        entry = torch.full(inputs.shape, float("nan"), dtype=torch.float64)
        entry[:, at:] = M.reshape(n, -1)
        masked = torch.zeros(inputs.shape, dtype=torch.bool)
        masked[:, at:] = mask.reshape(n, -1)
        labels = {"entry": entry.float(), "masked": masked, "matrix": M.float(), "mask": mask,
                  "U": U.float(), "V": V.float()}
        return Batch(inputs=inputs, targets=targets, labels=labels)

    def predicted_values(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's entry estimates [n, size, size]: expected value under its softmax over value tokens at the
        target positions (differentiable; in ``logits``' dtype)."""
        s = self.config.size
        probs = torch.softmax(logits[:, self.config.first_target :, MASK + 1 :], -1)
        return (probs @ self.values.to(probs)).reshape(-1, s, s)

    def value_mse(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Training loss of ``loss="mse"``: mean squared error of :meth:`predicted_values` against the true entries
        over the scored entries (all, or the masked ones with ``loss_on="masked"``)."""
        check_logits(logits, batch)
        M = batch.labels["matrix"].to(logits.dtype)
        scored = batch.labels["mask"] if self.config.loss_on == "masked" else torch.ones_like(batch.labels["mask"])
        return ((self.predicted_values(logits) - M) ** 2)[scored].mean()

    def baseline(self, batch: Batch, **svt_kwargs: Any) -> torch.Tensor:
        """SVT completions [n, size, size] of the batch's observed entries (:func:`svt_complete`)."""
        M, mask = batch.labels["matrix"].double(), batch.labels["mask"]
        return svt_complete(torch.where(mask, 0.0, M), ~mask, **svt_kwargs)

    def evaluate(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """``masked_mse`` / ``observed_mse`` of the expected-value prediction, ``masked_acc`` (argmax is the true
        value token at masked entries) and ``plateau_mse`` = r/9, the masked MSE of predicting 0."""
        check_logits(logits, batch)
        s = self.config.size
        M, mask = batch.labels["matrix"].double(), batch.labels["mask"]
        err = (self.predicted_values(logits.double()) - M) ** 2
        argmax = logits[:, self.config.first_target :, MASK + 1 :].argmax(-1).reshape(-1, s, s) + MASK + 1
        hit = argmax == self.tokenize(M)
        return {"masked_mse": float(err[mask].mean()), "observed_mse": float(err[~mask].mean()),
                "masked_acc": float(hit[mask].double().mean()), "plateau_mse": self.config.rank / 9}
