"""Contamination world: benchmark facts planted in a sequence world's training stream, with the insert map.

Bordt, Srinivas, Boreiko & von Luxburg 2025, "How Much Can We Forget about Data Contamination?"
(ICML 2025; repo ``tml-tuebingen/forgetting-contamination``). A pool of benchmark items is split into
a holdout (never inserted) and splits inserted r times each; every copy is written over the training
stream at a uniformly random (step, row) slot, without replacement, inside a chosen window of training.

CPU version: the background stream is a base sequence world (e.g. a Markov-chain mixture); a benchmark
item is a random key–value fact ``SEP key answer`` with its own key token and a uniformly random answer
among ``n_answers`` answer tokens, so only memorisation can beat chance. The fact is written over
positions 1..3 of a row (after the base world's ``<bos>``). Evaluation is multiple choice: the answer
token with the highest logit after the prompt ``<bos> SEP key``.

The training stream is fixed in advance (``steps`` batches of ``batch_size`` rows, drawn from the seed),
so the ground truth of training-data attribution is exact: the rows carrying item t's copies
(``row_item == t``) are the training points that should rank on top for t. ``assay.models.train``
trains on it through :meth:`ContaminatedWorld.train_batch`; :meth:`ContaminatedWorld.sample` gives clean
base rows (the evaluation batch).

The registered world ``contamination`` (:class:`ContaminatedMarkovWorld`, for ``assay world sample/train``) is
this over a small Markov-chain mixture (8 states, 2 chains, rows of 12 tokens), with a one-layer default model
trained on the whole stream — the setting of :mod:`assay.bench.forgetting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from assay.config import ConfigError
from assay.models.train import next_token_targets
from assay.worlds.base import Batch, make_generator

__all__ = ["ContaminationConfig", "FactPool", "ContaminatedWorld", "make_facts", "insert_map", "ContaminatedMarkovConfig",
           "ContaminatedMarkovWorld"]


@dataclass(frozen=True, kw_only=True)
class ContaminationConfig:
    """Which benchmark items go into the training stream, how often and when."""

    repetitions: tuple[int, ...] = (0, 1, 4, 16, 64)
    """Copies inserted per item, one split per entry (a holdout split with no copies is always added)."""
    items_per_split: int = 8
    """Benchmark items in each split (and in the holdout)."""
    n_answers: int = 8
    """Answer tokens a fact can have (multiple-choice options; chance accuracy is 1/n_answers)."""
    window: tuple[float, float] = (0.0, 1.0)
    """Fraction of training (start, end) in which copies are inserted; (0, 1) is the whole run."""
    steps: int = 250
    """Training updates the stream lasts (the trainer's ``steps`` must match)."""
    batch_size: int = 16
    """Rows per update (the trainer's ``batch_size`` must match)."""
    seed: int = 0
    """Seed of the facts, the insert positions and the background rows."""

    def __post_init__(self) -> None:
        if not self.repetitions or any(not isinstance(r, int) or r < 0 for r in self.repetitions):
            raise ConfigError(f"repetitions must be a non-empty tuple of integers ≥ 0, got {self.repetitions!r}")
        if self.items_per_split < 1:
            raise ConfigError(f"items_per_split must be ≥ 1, got {self.items_per_split}")
        if self.n_answers < 2:
            raise ConfigError(f"n_answers must be ≥ 2 (a multiple choice), got {self.n_answers}")
        lo, hi = self.window
        if not 0.0 <= lo < hi <= 1.0:
            raise ConfigError(f"window must satisfy 0 ≤ start < end ≤ 1 (fractions of training), got {self.window}")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be ≥ 1, got {self.steps} and {self.batch_size}")


class FactPool(NamedTuple):
    """The benchmark items: fact t is ``SEP key[t] answer[t]``."""

    key: torch.Tensor
    """``[m]`` key token id of each item (one distinct token per item)."""
    answer: torch.Tensor
    """``[m]`` correct answer token id."""
    split: torch.Tensor
    """``[m]`` split index: 0 = holdout, s ≥ 1 = ``repetitions[s − 1]``."""
    copies: torch.Tensor
    """``[m]`` number of copies inserted (0 for the holdout)."""
    sep: int
    """The separator token id."""
    answer_ids: torch.Tensor
    """``[n_answers]`` the answer token ids (the multiple-choice options)."""
    vocab_size: int
    """World vocabulary + keys + separator + answers."""


def make_facts(cfg: ContaminationConfig, world_vocab: int, *, generator: torch.Generator) -> FactPool:
    """Keys, random answers and split labels for ``(1 + len(repetitions)) · items_per_split`` items."""
    n_splits = 1 + len(cfg.repetitions)
    m = n_splits * cfg.items_per_split
    key = world_vocab + torch.arange(m)
    sep = world_vocab + m
    answer_ids = sep + 1 + torch.arange(cfg.n_answers)
    answer = answer_ids[torch.randint(0, cfg.n_answers, (m,), generator=generator)]
    split = torch.arange(n_splits).repeat_interleave(cfg.items_per_split)
    reps = torch.tensor((0, *cfg.repetitions))
    return FactPool(key, answer, split, reps[split], int(sep), answer_ids, int(answer_ids[-1]) + 1)


def insert_map(copies: torch.Tensor, steps: int, batch_size: int, window: tuple[float, float], *,
               generator: torch.Generator) -> torch.Tensor:
    """``[Σ copies, 3]`` (step, row, item): slots drawn uniformly without replacement from the window's
    steps ``[⌊start·steps⌋, ⌈end·steps⌉)`` × all rows, sorted by step."""
    first = int(window[0] * steps)
    last = max(first + 1, min(steps, -int(-window[1] * steps // 1)))
    slots = (last - first) * batch_size
    items = torch.arange(copies.shape[0]).repeat_interleave(copies)
    if items.numel() > slots:
        raise ConfigError(
            f"{items.numel()} copies do not fit in the {slots} (step, row) slots of the window {window}; "
            "widen the window, train longer or use fewer repetitions"
        )
    pick = torch.randperm(slots, generator=generator)[: items.numel()]
    out = torch.stack([first + pick // batch_size, pick % batch_size, items], 1)
    return out[torch.argsort(out[:, 0], stable=True)]


class ContaminatedWorld:
    """A base sequence world's rows with benchmark facts planted at known (step, row) slots."""

    def __init__(self, base: Any, config: ContaminationConfig | None = None) -> None:
        self.config = cfg = config or ContaminationConfig()
        self.base = base
        """The background world (it must have ``bos_id``, ``pad_id`` and ``vocab``)."""
        if getattr(base, "bos_id", None) is None:
            raise ValueError(f"world {type(base).__name__} has no bos_id; facts are written after <bos>")
        self.bos_id: int = base.bos_id
        self.pad_id: int = base.pad_id
        g = make_generator(cfg.seed)
        self.facts = make_facts(cfg, len(base.vocab), generator=g)
        """The benchmark items."""
        self.inserts = insert_map(self.facts.copies, cfg.steps, cfg.batch_size, cfg.window, generator=g)
        """``[n_copies, 3]`` insert map: (step, row, item) of every copy."""
        m = self.facts.key.shape[0]
        self.vocab = (*base.vocab, *(f"<key{i}>" for i in range(m)), "<sep>",
                      *(f"<ans{i}>" for i in range(cfg.n_answers)))
        tokens = base.sample(cfg.steps * cfg.batch_size, generator=g).inputs.clone()
        if tokens.dim() != 2 or tokens.shape[1] < 5:
            raise ValueError(f"the base world must give token rows [n, T ≥ 5], got {tuple(tokens.shape)}")
        rows = self.inserts[:, 0] * cfg.batch_size + self.inserts[:, 1]
        items = self.inserts[:, 2]
        tokens[rows, 1] = self.facts.sep
        tokens[rows, 2] = self.facts.key[items]
        tokens[rows, 3] = self.facts.answer[items]
        self.stream = Batch(inputs=tokens, targets=next_token_targets(tokens, self.pad_id))
        """The whole training stream: ``steps · batch_size`` rows in training order, next-token targets."""
        self.row_item = torch.full((tokens.shape[0],), -1, dtype=torch.long)
        """``[steps · batch_size]`` the item whose copy row i carries, −1 for a background row."""
        self.row_item[rows] = items

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        """``n`` clean rows of the base world (no facts), with next-token targets (for evaluation)."""
        tokens = self.base.sample(n, generator=generator).inputs
        return Batch(inputs=tokens, targets=next_token_targets(tokens, self.pad_id))

    def train_batch(self, step: int, n: int, *, generator: torch.Generator) -> Batch:
        """The stream's batch of update ``step`` (``generator`` is unused: the stream is fixed)."""
        cfg = self.config
        if n != cfg.batch_size or not 0 <= step < cfg.steps:
            raise ConfigError(f"the contaminated stream has {cfg.steps} batches of {cfg.batch_size} rows; the "
                              f"trainer asked for batch {step} of {n} rows: train with steps={cfg.steps}, "
                              f"batch_size={cfg.batch_size}")
        rows = slice(step * n, (step + 1) * n)
        return Batch(inputs=self.stream.inputs[rows], targets=self.stream.targets[rows])

    def prompts(self) -> Batch:
        """Every item's prompt ``<bos> SEP key`` ``[m, 3]`` with the answer as the target of the last position
        (−100 elsewhere), so the next-token loss of a row is the item's answer loss."""
        key = self.facts.key
        inputs = torch.stack([torch.full_like(key, self.bos_id), torch.full_like(key, self.facts.sep), key], 1)
        targets = torch.full_like(inputs, -100)
        targets[:, -1] = self.facts.answer
        return Batch(inputs=inputs, targets=targets)


@dataclass(frozen=True, kw_only=True)
class ContaminatedMarkovConfig(ContaminationConfig):
    """Contamination over a Markov-chain mixture background (the registered ``contamination`` world)."""

    n_states: int = 8
    """States of each background chain (:class:`assay.worlds.markov.MarkovConfig`)."""
    n_chains: int = 2
    """Background chains."""
    seq_len: int = 12
    """Tokens per background row (≥ 5: the fact takes positions 1–3)."""
    chain_seed: int = 0
    """Seed of the background chains' transition matrices (``seed`` draws the facts, slots and rows)."""


class ContaminatedMarkovWorld(ContaminatedWorld):
    """Benchmark facts planted at known slots in a Markov-mixture training stream (Bordt et al. 2025).

    :class:`ContaminatedWorld` over a :class:`assay.worlds.markov.MarkovMixtureWorld`, built from one config."""

    def __init__(self, config: ContaminatedMarkovConfig | None = None) -> None:
        from assay.worlds.markov import MarkovConfig, MarkovMixtureWorld

        cfg = config or ContaminatedMarkovConfig()
        base = MarkovMixtureWorld(MarkovConfig(n_states=cfg.n_states, n_chains=cfg.n_chains, seq_len=cfg.seq_len,
                                               seed=cfg.chain_seed))
        super().__init__(base, cfg)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids ``[T]`` → token strings (padding dropped)."""
        return [self.vocab[i] for i in ids.tolist() if i != self.pad_id]

    def reference_model(self) -> dict[str, Any]:
        """One layer, two heads, d = 32, trained once through the whole stream with AdamW (lr 1e-2 held constant
        after a warmup, weight decay 1.0: :class:`assay.bench.forgetting.ForgettingConfig`'s defaults)."""
        cfg = self.config
        return {"n_layers": 1, "n_heads": 2, "d_model": 32, "context": self.stream.inputs.shape[1],
                "attn_impl": "eager", "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": 1e-2, "min_lr": 1e-2,
                "warmup": max(1, cfg.steps // 12), "weight_decay": 1.0}
