"""A cyclic knowledge graph: entities on random rings, relations that walk around them, facts as walks.

Nishi, Ramesh, Okawa, Khona, Tanaka, Lubana 2025, "Representation Shattering in Transformers: A
Synthetic Study with Knowledge Editing" (ICML 2025, arXiv 2410.17194). N entities are placed in
``n_orders`` random cyclic orders (the paper's orders I, II, III; random permutations). Each order o
defines 2·``max_hops`` relations: h = 1 … max_hops steps clockwise (``o+h``) and anticlockwise (``o-h``),
so the default has 3 × 8 = 24 relation tokens. A fact is (e, r, e′) with e′ the entity h steps from e
in r's order and direction; every relation is a bijection of the entities (a rotation of one ring).

Documents are random walks alternating entity and relation tokens ::

    <bos> e₀ r₁ e₁ r₂ e₂ … r_L e_L,     e_j = r_j(e_{j−1}),  e₀ and each r_j uniform

and only the entities after a relation token are scored (the relations are random). With
``test_fraction`` > 0 a seeded fraction of the (e, r) facts never appears as a step of a training walk
(``split="train"``); their inverses do, so ``split="test"`` walks (every step allowed, the held-out
facts scored) measure logical inference. Per-token labels: ``entity`` (entity id of the input token,
−1 otherwise), ``relation`` (relation id, −1 otherwise) and ``position_<o>`` (the input entity's index
on ring o, −1 otherwise). Static truth: ``orders`` [n_orders, N] (entity at each ring index),
``positions`` [n_orders, N] (ring index of each entity), ``facts`` [N, R] (object of each fact),
``relation_order``, ``relation_shift``, ``held_out`` [N, R] (bool).

Fact prompts for editing and probing (:meth:`KnowledgeGraphWorld.fact_prompts`): a walk that *ends* at
the subject (built backwards with the inverse relations, so it is a valid walk from a uniform start)
followed by the relation token; the model's answer is read at the last position and the subject's
representation at the one before. Spec check: composing (o, +2) with (o, −2) returns the start entity.
Task metric: ``fact_acc`` (argmax accuracy on the scored entities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from assay.config import ConfigError, check_choice
from assay.worlds.base import Batch
from assay.worlds.vocab import BOS, Doc, DocWorld, check_logits, make_vocab, token_accuracy

__all__ = ["KnowledgeGraphConfig", "KnowledgeGraphWorld", "FactPrompts", "ORDER_NAMES"]

ORDER_NAMES = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII")
"""Names of the cyclic orders (the paper's I, II, III), in order."""


@dataclass(frozen=True, kw_only=True)
class KnowledgeGraphConfig:
    """Entities on random cyclic orders; relations are hops around one ring; documents are random walks."""

    n_entities: int = 64
    """Number of entities N (the paper uses 2048; the CPU default 64)."""
    n_orders: int = 3
    """Number of random cyclic orders (the paper's I, II, III)."""
    max_hops: int = 4
    """Relations per order and direction: hops 1 … max_hops clockwise and anticlockwise."""
    walk_steps: int = 15
    """Relation steps per walk: a document is ``<bos>`` plus 2·walk_steps + 1 tokens (32 by default)."""
    test_fraction: float = 0.0
    """Fraction of (entity, relation) facts held out of the training walks (a logical-inference test)."""
    split: Literal["train", "test", "all"] = "train"
    """Which walks to sample: training walks (held-out facts never stepped), test walks (only held-out facts
    scored), or all facts."""
    seed: int = 0
    """Seed of the random orders and of the held-out facts."""

    def __post_init__(self) -> None:
        check_choice("split", self.split, ("train", "test", "all"))
        if not 1 <= self.n_orders <= len(ORDER_NAMES):
            raise ConfigError(f"n_orders must be in 1 … {len(ORDER_NAMES)}, got {self.n_orders}")
        if self.max_hops < 1:
            raise ConfigError(f"max_hops must be >= 1, got {self.max_hops}")
        if self.n_entities < 2 * self.max_hops + 1:
            raise ConfigError(f"n_entities={self.n_entities} is too small for max_hops={self.max_hops}: hops of "
                              f"±1 … ±{self.max_hops} only give distinct relations on a ring of >= "
                              f"{2 * self.max_hops + 1} entities; raise n_entities or lower max_hops")
        if self.walk_steps < 1:
            raise ConfigError(f"walk_steps must be >= 1, got {self.walk_steps}")
        if not 0.0 <= self.test_fraction < 0.5:
            raise ConfigError(f"test_fraction must be in [0, 0.5) (each held-out fact needs its inverse trained), "
                              f"got {self.test_fraction}")
        if self.split == "test" and self.test_fraction == 0.0:
            raise ConfigError("split='test' with test_fraction=0 has no held-out facts; raise test_fraction")

    @property
    def n_relations(self) -> int:
        """Number of relation tokens R = n_orders · 2 · max_hops."""
        return self.n_orders * 2 * self.max_hops


@dataclass(frozen=True)
class FactPrompts:
    """Fact queries, each in several contexts: ``tokens`` [n·K, T] end with ``… subject relation``."""

    tokens: torch.Tensor
    """Token ids [n·K, T]: ``<bos>``, a walk of ``context_steps`` steps ending at the subject, the relation."""
    subject: torch.Tensor
    """Subject entity id of each row [n·K]."""
    relation: torch.Tensor
    """Relation id of each row [n·K]."""
    target: torch.Tensor
    """Token id of the true object of each row [n·K]."""
    n_contexts: int
    """Contexts K per fact; rows ``i·K … i·K + K − 1`` are fact i."""

    @property
    def subject_position(self) -> int:
        """Position of the subject token (the last but one)."""
        return self.tokens.shape[1] - 2


class KnowledgeGraphWorld(DocWorld):
    """Random walks on a cyclic knowledge graph, with the rings and the fact table as ground truth."""

    label_kinds: ClassVar[dict[str, str]] = {}
    acceptance: tuple[str, float] = ("fact_acc", 0.9)
    """Metric and threshold the reference model must reach (this module's choice; the paper's pre-edit
    direct recall is 94–99%)."""

    def __init__(self, config: KnowledgeGraphConfig | None = None) -> None:
        self.config = cfg = config or KnowledgeGraphConfig()
        N, H, R = cfg.n_entities, cfg.max_hops, cfg.n_relations
        rng = np.random.default_rng(cfg.seed)
        self.orders = torch.as_tensor(np.stack([rng.permutation(N) for _ in range(cfg.n_orders)]))
        """Entity at each index of each ring [n_orders, N]."""
        self.positions = self.orders.argsort(1)
        """Ring index of each entity [n_orders, N]."""
        names, order, shift = [], [], []
        for o in range(cfg.n_orders):
            for sign in (1, -1):
                for h in range(1, H + 1):
                    names.append(f"{ORDER_NAMES[o]}{'+' if sign > 0 else '-'}{h}")
                    order.append(o)
                    shift.append(sign * h)
        self.relation_names = tuple(names)
        """Relation token names, e.g. ``I+2`` (order I, two steps clockwise)."""
        self.relation_order = torch.tensor(order)
        """Order of each relation [R]."""
        self.relation_shift = torch.tensor(shift)
        """Signed hop count of each relation [R]."""
        self.inverse = torch.tensor([names.index(n.replace("+", "#").replace("-", "+").replace("#", "-"))
                                     for n in names])
        """The inverse relation of each relation [R] (o+h ↔ o−h)."""
        ent = torch.arange(N)
        self.facts = torch.stack([self.orders[o][(self.positions[o][ent] + s) % N] for o, s in zip(order, shift)], 1)
        """Object entity of each fact [N, R]."""
        self.held_out = torch.zeros(N, R, dtype=torch.bool)
        """Facts never stepped in training walks [N, R]."""
        n_test = int(round(cfg.test_fraction * N * R))
        if n_test:
            self.held_out.view(-1)[torch.as_tensor(rng.permutation(N * R)[:n_test])] = True
            # a held-out fact and its inverse must not both be held out (nothing would teach either)
            both = self.held_out & self.held_out[self.facts, self.inverse[None, :].expand(N, R)]
            self.held_out &= ~(both & (ent[:, None] < self.facts))
        if cfg.split == "train" and bool(self.held_out.all(1).any()):
            raise ConfigError("an entity has every fact held out, so a training walk cannot leave it; "
                              "lower test_fraction")
        self.vocab = make_vocab([f"e{i}" for i in range(N)] + list(names))
        self.label_kinds = {"entity": "int", "relation": "int"} | {f"position_{ORDER_NAMES[o]}": "int"
                                                                  for o in range(cfg.n_orders)}

    # ------------------------------------------------------------------ tokens
    def entity_token(self, entity: int | torch.Tensor) -> int | torch.Tensor:
        """Token id of an entity id (ints or tensors)."""
        return entity + 4

    def relation_token(self, relation: int | torch.Tensor) -> int | torch.Tensor:
        """Token id of a relation id (ints or tensors)."""
        return relation + 4 + self.config.n_entities

    def reference_model(self) -> dict[str, Any]:
        """Tiny-transformer settings (spec §10 CPU default: 2 layers, d = 64, 32-token walks, 3,000 steps)."""
        return {"n_layers": 2, "n_heads": 2, "d_model": 64, "context": 2 * self.config.walk_steps + 2,
                "steps": 3000, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.95),
                "pack": False}

    # ------------------------------------------------------------------ walks
    def _doc(self, rng: np.random.Generator) -> Doc:
        cfg = self.config
        R = cfg.n_relations
        held = self.held_out.numpy()
        facts = self.facts.numpy()
        e = int(rng.integers(cfg.n_entities))
        tokens, scored = [BOS, self.entity_token(e)], [False, False]
        ents, rels = [-1, e], [-1, -1]
        for _ in range(cfg.walk_steps):
            allowed = np.flatnonzero(~held[e]) if cfg.split == "train" else np.arange(R)
            r = int(allowed[rng.integers(len(allowed))])
            test_step = bool(held[e, r])
            e = int(facts[e, r])
            tokens += [self.relation_token(r), self.entity_token(e)]
            scored += [cfg.split != "test" or test_step, False]
            ents += [-1, e]
            rels += [r, -1]
        pos = self.positions.numpy()
        labels: dict[str, list[Any]] = {"entity": ents, "relation": rels}
        for o in range(cfg.n_orders):
            labels[f"position_{ORDER_NAMES[o]}"] = [int(pos[o, x]) if x >= 0 else -1 for x in ents]
        return Doc(tokens, labels, scored)

    def fact_prompts(self, subjects: torch.Tensor, relations: torch.Tensor, *, n_contexts: int = 5,
                     context_steps: int = 4, generator: torch.Generator) -> FactPrompts:
        """Each fact (subjects[i], relations[i]) after ``n_contexts`` random walks of ``context_steps`` steps
        that end at the subject (drawn backwards through inverse relations: a valid walk from a uniform start).

        Context walks only use trained facts when the world holds facts out (``split`` aside)."""
        subjects, relations = torch.as_tensor(subjects).long(), torch.as_tensor(relations).long()
        if subjects.shape != relations.shape or subjects.ndim != 1:
            raise ValueError(f"subjects and relations must be 1-d of equal length, got {tuple(subjects.shape)} and "
                             f"{tuple(relations.shape)}")
        N, R = self.config.n_entities, self.config.n_relations
        if len(subjects) and (subjects.min() < 0 or subjects.max() >= N or relations.min() < 0 or relations.max() >= R):
            raise ValueError(f"subjects must be in [0, {N}) and relations in [0, {R})")
        if n_contexts < 1 or context_steps < 0:
            raise ValueError(f"need n_contexts >= 1 and context_steps >= 0, got {n_contexts}, {context_steps}")
        if context_steps + 1 > self.config.walk_steps:
            raise ValueError(f"context_steps={context_steps} makes prompts longer than the training walks "
                             f"({self.config.walk_steps} steps); use at most {self.config.walk_steps - 1}")
        n = len(subjects) * n_contexts
        subj = subjects.repeat_interleave(n_contexts)
        rel = relations.repeat_interleave(n_contexts)
        tokens = torch.full((n, 2 * context_steps + 3), BOS, dtype=torch.long)
        tokens[:, -1] = self.relation_token(rel)
        cur = subj.clone()
        tokens[:, -2] = self.entity_token(cur)
        for j in range(context_steps):
            r = torch.randint(R, (n,), generator=generator)
            for _ in range(64):  # re-draw steps whose forward fact is held out
                bad = self.held_out[self.facts[cur, self.inverse[r]], r]
                if not bad.any():
                    break
                r = torch.where(bad, torch.randint(R, (n,), generator=generator), r)
            else:
                if self.held_out[self.facts[cur, self.inverse[r]], r].any():
                    raise RuntimeError("64 re-draws did not avoid the held-out facts in a context walk; "
                                       "lower test_fraction")
            prev = self.facts[cur, self.inverse[r]]  # prev --r--> cur
            tokens[:, -3 - 2 * j] = self.relation_token(r)
            tokens[:, -4 - 2 * j] = self.entity_token(prev)
            cur = prev
        target = self.entity_token(self.facts[subj, rel])
        return FactPrompts(tokens, subj, rel, target, n_contexts)

    def evaluate(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """``fact_acc``: argmax accuracy on the scored entities (those after a relation token)."""
        check_logits(logits, batch)
        return {"fact_acc": token_accuracy(logits, batch.targets)}
