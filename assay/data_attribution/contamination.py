"""Contamination testbed: plant benchmark items in a model's training stream, measure the gap and find them.

Bordt, Srinivas, Boreiko & von Luxburg 2025, "How Much Can We Forget about Data Contamination?"
(ICML 2025; repo ``tml-tuebingen/forgetting-contamination``). A pool of benchmark items is split into
a holdout (never inserted) and splits inserted r times each; every copy is written over the training
stream at a uniformly random (step, row) slot, without replacement, inside a chosen window of training;
the insert map is kept. At the end, the metric is the accuracy gap of each split to the holdout::

    gap(r) = acc(split r) − acc(holdout)        (and the same for the answer loss)

CPU version (spec §8): the background stream is a sequence world (default: a Markov-chain mixture);
a benchmark item is a random key–value fact ``SEP key answer`` with its own key token and a uniformly
random answer among ``n_answers`` answer tokens, so only memorisation can beat chance. The fact is
written over positions 1..3 of a row (after the world's ``<bos>``); evaluation is likelihood-based
multiple choice: the answer token with the highest logit after ``<bos> SEP key``.

Attribution ground truth is free: for a contaminated benchmark item t, the rows carrying its copies are
the training points that should rank on top. Scores are TracInCP (Pruthi et al. 2020) over checkpoints
saved during the same run, S[i, t] = Σ_k η_k ∇ℓ_row(z_i; θ_k)·∇ℓ_answer(t; θ_k), and we report per
item precision@r (r = its number of copies) and AUROC of its copies against all other stream rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from assay.config import ConfigError
from assay.models.train import TrainConfig, lr_at, next_token_targets, sequence_loss
from assay.models.transformer import Transformer, TransformerConfig
from assay.stats import auroc
from assay.worlds.base import make_generator

__all__ = [
    "ContaminationConfig",
    "FactPool",
    "ContaminationResult",
    "make_facts",
    "insert_map",
    "contaminated_batch",
    "answer_logits",
    "tracin_rows",
    "run_contamination",
]


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
    n_checkpoints: int = 4
    """Checkpoints (evenly spaced over the run, the last one at the end) for TracIn; 0 skips attribution."""
    attribute: tuple[int, ...] | None = None
    """Repetition counts whose items are attributed (None: every split with ≥ 1 copy)."""
    seed: int = 0
    """Seed of the facts, the insert positions and the model initialisation."""

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
        if self.n_checkpoints < 0:
            raise ConfigError(f"n_checkpoints must be ≥ 0, got {self.n_checkpoints}")
        if self.attribute is not None and not set(self.attribute) <= {r for r in self.repetitions if r > 0}:
            raise ConfigError(f"attribute={self.attribute} must list repetition counts ≥ 1 from {self.repetitions}")


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


class ContaminationResult(NamedTuple):
    """What :func:`run_contamination` measured (splits ordered as holdout, then ``repetitions``)."""

    repetitions: tuple[int, ...]
    """Copies per item of each split; the first entry (0) is the holdout."""
    accuracy: torch.Tensor
    """``[n_splits]`` multiple-choice accuracy of each split at the end of training."""
    loss: torch.Tensor
    """``[n_splits]`` mean answer cross-entropy (full vocabulary) of each split."""
    accuracy_gap: torch.Tensor
    """``[n_splits]`` accuracy − holdout accuracy."""
    loss_gap: torch.Tensor
    """``[n_splits]`` holdout loss − loss (positive: the split is easier than the holdout)."""
    loss_gap_se: torch.Tensor
    """``[n_splits]`` standard error of ``loss_gap`` (two independent sample means)."""
    item_loss: torch.Tensor
    """``[m]`` answer loss of every item."""
    precision_at_r: torch.Tensor
    """``[m]`` TracIn precision@r of each attributed item's copies among all stream rows (NaN: not attributed)."""
    auroc: torch.Tensor
    """``[m]`` AUROC of each attributed item's copies against all other rows (NaN: not attributed)."""
    facts: FactPool
    """The benchmark items."""
    inserts: torch.Tensor
    """``[n_copies, 3]`` insert map: (step, row, item) of every copy."""
    final_train_loss: float
    """Mean training loss over the last 10% of updates."""


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


def _write(tokens: torch.Tensor, rows: torch.Tensor, facts: FactPool, items: torch.Tensor) -> None:
    tokens[rows, 1] = facts.sep
    tokens[rows, 2] = facts.key[items]
    tokens[rows, 3] = facts.answer[items]


def contaminated_batch(world: Any, batch_size: int, generator: torch.Generator, facts: FactPool,
                       inserts_now: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, next-token targets) of one training batch: world rows with the facts of ``inserts_now``
    ``[k, 3]`` written over positions 1..3 of their rows."""
    tokens = world.sample(batch_size, generator=generator).inputs.clone()
    if tokens.dim() != 2 or tokens.shape[1] < 5:
        raise ValueError(f"the world must give token rows [n, T ≥ 5], got {tuple(tokens.shape)}")
    if len(inserts_now):
        _write(tokens, inserts_now[:, 1], facts, inserts_now[:, 2])
    return tokens, next_token_targets(tokens, getattr(world, "pad_id", -100))


def _prompts(facts: FactPool, bos: int) -> torch.Tensor:
    return torch.stack([torch.full_like(facts.key, bos), torch.full_like(facts.key, facts.sep), facts.key], 1)


@torch.no_grad()
def answer_logits(model: nn.Module, facts: FactPool, bos: int) -> torch.Tensor:
    """``[m, vocab]`` next-token logits after ``<bos> SEP key`` for every item."""
    return model(_prompts(facts, bos))[:, -1]


def tracin_rows(checkpoints: list[tuple[dict[str, torch.Tensor], float]], model: nn.Module,
                rows: tuple[torch.Tensor, torch.Tensor], facts: FactPool, items: torch.Tensor, bos: int, *,
                chunk: int = 128) -> torch.Tensor:
    """TracInCP scores ``[n_rows, len(items)]``: Σ_k η_k ∇(row's mean next-token loss)·∇(item's answer
    loss), all parameters, per-row gradients by ``vmap(grad)`` in chunks (never all stored)."""
    inputs, targets = rows
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    prompts, answers = _prompts(facts, bos)[items], facts.answer[items]

    def row_loss(ps, x, y):
        out = functional_call(model, dict(zip(names, ps)), (x[None],))
        return sequence_loss(out, y[None])

    def answer_loss(ps, x, a):
        out = functional_call(model, dict(zip(names, ps)), (x[None],))[0, -1]
        return nn.functional.cross_entropy(out[None], a[None])

    flat = lambda gs: torch.cat([g.reshape(g.shape[0], -1) for g in gs], 1)  # noqa: E731
    scores = torch.zeros(inputs.shape[0], len(items), dtype=torch.float64)
    for state, lr in checkpoints:
        ps = tuple(state[n] for n in names)
        g_t = flat(vmap(grad(answer_loss), in_dims=(None, 0, 0))(ps, prompts, answers)).double()
        per_row = vmap(grad(row_loss), in_dims=(None, 0, 0))
        for s in range(0, inputs.shape[0], chunk):
            g = flat(per_row(ps, inputs[s : s + chunk], targets[s : s + chunk])).double()
            scores[s : s + chunk] += lr * (g @ g_t.T)
    return scores


def run_contamination(
    world: Any,
    cfg: ContaminationConfig,
    train_cfg: TrainConfig,
    model_cfg: dict[str, int] | None = None,
) -> ContaminationResult:
    """Train a tiny transformer on ``world``'s stream with the facts of ``cfg`` planted, then measure the
    accuracy/loss gap per split and TracIn's recovery of the copies (see the module docstring).

    ``train_cfg`` supplies steps, batch size, AdamW and schedule settings and the data seed (its eval and
    checkpoint fields are unused); ``model_cfg`` overrides :class:`TransformerConfig` fields (context is
    the world's row length; attention defaults to the eager kernel, which ``vmap`` batches). Training is one seeded loop: same configs ⇒ same result.
    """
    bos = getattr(world, "bos_id", None)
    if bos is None:
        raise ValueError(f"world {type(world).__name__} has no bos_id; the testbed writes facts after <bos>")
    g_facts = make_generator(cfg.seed)
    facts = make_facts(cfg, len(world.vocab), generator=g_facts)
    inserts = insert_map(facts.copies, train_cfg.steps, train_cfg.batch_size, cfg.window, generator=g_facts)
    probe = world.sample(1, generator=make_generator(0)).inputs
    mcfg = TransformerConfig(**{"n_layers": 1, "n_heads": 2, "d_model": 32, "attn_impl": "eager", **(model_cfg or {}),
                                "vocab_size": facts.vocab_size, "context": probe.shape[1]})
    model = Transformer(mcfg, generator=make_generator(cfg.seed + 1))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train_cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2))
    ck_steps = {round(train_cfg.steps * (k + 1) / cfg.n_checkpoints) for k in range(cfg.n_checkpoints)}
    checkpoints: list[tuple[dict[str, torch.Tensor], float]] = []
    want = (cfg.attribute if cfg.attribute is not None else tuple(r for r in cfg.repetitions if r > 0))
    record = cfg.n_checkpoints > 0 and len(want) > 0
    stream_x, stream_y, losses = [], [], []
    g = make_generator(train_cfg.seed)
    bounds = torch.searchsorted(inserts[:, 0].contiguous(), torch.arange(train_cfg.steps + 1))
    model.train()
    for step in range(train_cfg.steps):
        lr = lr_at(step, train_cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = contaminated_batch(world, train_cfg.batch_size, g, facts, inserts[bounds[step] : bounds[step + 1]])
        if record:
            stream_x.append(x)
            stream_y.append(y)
        loss = sequence_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if train_cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if record and step + 1 in ck_steps:
            checkpoints.append(({n: p.detach().clone() for n, p in model.named_parameters()}, lr))
    model.eval()

    logits = answer_logits(model, facts, bos)
    item_loss = nn.functional.cross_entropy(logits, facts.answer, reduction="none")
    choice = facts.answer_ids[logits[:, facts.answer_ids].argmax(1)]
    correct = (choice == facts.answer).double()
    n_splits = 1 + len(cfg.repetitions)
    acc = torch.stack([correct[facts.split == s].mean() for s in range(n_splits)])
    mean_loss = torch.stack([item_loss[facts.split == s].mean() for s in range(n_splits)])
    var = torch.stack([item_loss[facts.split == s].var() / cfg.items_per_split for s in range(n_splits)])

    prec = torch.full((facts.key.shape[0],), float("nan"), dtype=torch.float64)
    roc = prec.clone()
    if record:
        items = torch.nonzero(torch.isin(facts.copies, torch.tensor(want)) & (facts.split > 0)).squeeze(1)
        scores = tracin_rows(checkpoints, model, (torch.cat(stream_x), torch.cat(stream_y)), facts, items, bos)
        row_item = torch.full((train_cfg.steps * train_cfg.batch_size,), -1, dtype=torch.long)
        row_item[inserts[:, 0] * train_cfg.batch_size + inserts[:, 1]] = inserts[:, 2]
        for j, t in enumerate(items.tolist()):
            pos = row_item == t
            r = int(pos.sum())
            top = torch.topk(scores[:, j], r).indices
            prec[t] = float(pos[top].double().mean())
            roc[t] = auroc(scores[:, j], pos)
    tail = max(1, len(losses) // 10)
    return ContaminationResult(
        repetitions=(0, *cfg.repetitions), accuracy=acc, loss=mean_loss, accuracy_gap=acc - acc[0],
        loss_gap=mean_loss[0] - mean_loss, loss_gap_se=(var + var[0]).sqrt(), item_loss=item_loss,
        precision_at_r=prec, auroc=roc, facts=facts, inserts=inserts,
        final_train_loss=sum(losses[-tail:]) / tail,
    )
