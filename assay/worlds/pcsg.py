"""Percolation PCSG: a typed grammar whose type constraints come from concept classes.

Lubana, Kawaguchi, Dick, Tanaka 2025, "A Percolation Model of Emergence: Analyzing Transformers
Trained on a Formal Language" (ICLR 2025, arXiv 2408.12578) [code: EkdeepSLubana/ConceptPercolation].
Syntax (the paper's production rules; sampled top-down by :func:`assay.worlds.pcfg.sample_tree`)::

    S     → Ph NP VP EndOfSeq;   NP → subjectID [0.8] | NP Conj NP [0.2]
    VP    → descPreP descV [0.4] | relV relPreP relNP [0.4] | VP Conj VP [0.2]
    relNP → objectID [0.7] | objectID Conj relNP [0.3]
    Ph → [P];  descPreP → is | has;  relPreP → on [0.4] | in [0.3] | to [0.3];  Conj → and | or;  EndOfSeq → <eos>

Types (assay's simplified version of the repo's concept classes): ``n_entities`` entities ``e*``,
``n_properties`` descriptive properties ``p*`` (the descV slot) and ``n_relations`` relative
properties ``r*`` (the relV slot) are each split evenly over ``n_classes`` classes (seeded by
``seed``); each relation also allows a non-empty random set of object classes (each class with
probability ``object_density``). A sentence is **type-consistent** when every subject is of the first
subject's class c, every descV and relV belongs to c, and every objectID is of a class its relV allows.

Percolation: an (entity, property) pair is *allowed* when both are of one class. Each allowed pair is
a training pair with probability ``pair_density`` (seeded); ``split="train"`` fills descV slots only
with training pairs, ``"heldout"`` only with held-out ones, ``"all"`` with any allowed pair. Within a
class the training pairs form a random bipartite graph G(n_E/n_C, n_P/n_C, q = pair_density); a giant
component appears near q·√(n₁n₂) = 1 (standard random-graph result; :meth:`PCSGWorld.percolation`).

Per-token labels (state after each token): ``symbol`` (index into :data:`SYMBOLS`), ``next_symbol``,
``entity``, ``class`` (of the entity), ``property``, ``relation`` (−1 where not applicable),
``type_ok`` (1/0 at typed slots — subjectID, descV, relV, objectID — else −1), ``valid_next``
(bool [n, T, V]: tokens the syntax allows next) and ``typed_next`` (those that also keep the sentence
type-consistent). Per example: ``type_ok`` and ``sentence_class``. With ``negative_fraction`` > 0 a
sample violates exactly one type constraint with that probability. :meth:`PCSGWorld.check` judges any
token sequence (e.g. a model's generation): grammaticality by Earley recognition of its symbols and
type-consistency as above.

Task metrics (``evaluate``): ``grammar_acc`` (argmax next token is syntactically valid),
``type_acc`` (at positions whose next token fills a typed slot that some filler would violate, the
argmax among that slot's tokens is type-consistent), ``ce``. Acceptance: ``type_acc`` ≥ 0.95 (this module's choice).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch

from assay.config import ConfigError
from assay.worlds.base import Batch
from assay.worlds.pcfg import Grammar, earley, recognise, sample_tree
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
)

__all__ = ["syntax", "SYNTAX", "SYMBOLS", "TYPED", "PCSGConfig", "PCSGWorld", "SentenceCheck", "Percolation"]



def syntax(np_conj: float = 0.2, vp: tuple[float, float, float] = (0.4, 0.4, 0.2)) -> Grammar:
    """The paper's syntax over preterminal symbols with the NP → NP Conj NP probability ``np_conj`` and the
    VP → descriptive | relative | VP Conj VP probabilities ``vp`` (lexical rules: :data:`LEXICON`)."""
    return Grammar("S", {
        "S": ((("Ph", "NP", "VP", "EndOfSeq"), 1.0),),
        "NP": ((("subjectID",), 1.0 - np_conj), (("NP", "Conj", "NP"), np_conj)),
        "VP": ((("descPreP", "descV"), vp[0]), (("relV", "relPreP", "relNP"), vp[1]), (("VP", "Conj", "VP"), vp[2])),
        "relNP": ((("objectID",), 0.7), (("objectID", "Conj", "relNP"), 0.3)),
    })


SYNTAX = syntax()
"""The paper's syntax with its rule probabilities; every :class:`PCSGWorld` recognises sentences with it
(a rule of probability 0 is still grammatical)."""
SYMBOLS = ("Ph", "subjectID", "descPreP", "descV", "relV", "relPreP", "objectID", "Conj", "EndOfSeq")
"""Preterminal symbols; the ``symbol`` label indexes this tuple."""
TYPED = ("subjectID", "descV", "relV", "objectID")
"""Symbols whose filler is constrained by types."""
LEXICON: dict[str, tuple[tuple[str, float], ...]] = {
    "Ph": (("[P]", 1.0),), "descPreP": (("is", 0.5), ("has", 0.5)),
    "relPreP": (("on", 0.4), ("in", 0.3), ("to", 0.3)), "Conj": (("and", 0.5), ("or", 0.5)),
}
"""Function-word symbol → its words with probabilities (EndOfSeq is ``<eos>``)."""
_SYM = {s: i for i, s in enumerate(SYMBOLS)}
_VP_START = ("is", "has")


@dataclass(frozen=True, kw_only=True)
class PCSGConfig:
    """The typed grammar and its concept classes."""

    n_entities: int = 32
    """Entities (subjectID / objectID fillers), split evenly over the classes."""
    n_classes: int = 4
    """Concept classes."""
    n_properties: int = 16
    """Descriptive properties (descV fillers), split evenly over the classes."""
    n_relations: int = 4
    """Relative properties (relV fillers), split evenly over the classes."""
    object_density: float = 0.5
    """Probability that a relation allows each object class (at least one is always allowed)."""
    pair_density: float = 0.5
    """Probability that an allowed (entity, property) pair is a training pair (the bond probability q)."""
    split: Literal["train", "heldout", "all"] = "train"
    """Which (entity, property) pairs fill descV slots: training, held-out, or all allowed pairs."""
    np_conj: float = 0.2
    """Probability of NP → NP Conj NP (the paper's 0.2)."""
    vp_probs: tuple[float, float, float] = (0.4, 0.4, 0.2)
    """Probabilities of VP → descPreP descV | relV relPreP relNP | VP Conj VP (the paper's 0.4, 0.4, 0.2)."""
    negative_fraction: float = 0.0
    """Fraction of samples that violate exactly one type constraint."""
    max_len: int = 24
    """Sentences of more symbols are redrawn."""
    seed: int = 0
    """Seed of the classes, the relations' object classes and the training pairs."""

    def __post_init__(self) -> None:
        if self.n_classes < 1:
            raise ConfigError(f"n_classes must be >= 1, got {self.n_classes}")
        for name, what in (("entities", "entity"), ("properties", "property"), ("relations", "relation")):
            if getattr(self, f"n_{name}") < self.n_classes:
                raise ConfigError(
                    f"n_{name}={getattr(self, f'n_{name}')} < n_classes={self.n_classes}: some class would have "
                    f"no {what}, so its sentences cannot be filled; raise n_{name} or lower n_classes")
        if not 0.0 < self.object_density <= 1.0:
            raise ConfigError(f"object_density must be in (0, 1], got {self.object_density}")
        if not 0.0 <= self.pair_density <= 1.0:
            raise ConfigError(f"pair_density must be in [0, 1], got {self.pair_density}")
        if not 0.0 <= self.negative_fraction <= 1.0:
            raise ConfigError(f"negative_fraction must be in [0, 1], got {self.negative_fraction}")
        if self.negative_fraction > 0 and self.n_classes < 2:
            raise ConfigError("negative samples need n_classes >= 2 (with one class no filler can violate a type)")
        if not 0.0 <= self.np_conj < 0.5:
            raise ConfigError(f"np_conj must be in [0, 0.5) (at 0.5 noun phrases grow without bound), got {self.np_conj}")
        vp = self.vp_probs
        if len(vp) != 3 or min(vp) < 0 or abs(sum(vp) - 1) > 1e-9 or not vp[2] < 0.5:
            raise ConfigError(f"vp_probs must be 3 non-negative numbers summing to 1 with the VP Conj VP share "
                              f"< 0.5 (else verb phrases grow without bound), got {vp}")
        if self.max_len < 4:
            raise ConfigError(f"max_len must be >= 4 (the shortest sentence has 4 symbols), got {self.max_len}")


class SentenceCheck(NamedTuple):
    """What :meth:`PCSGWorld.check` finds in one sentence."""

    grammatical: bool
    """The symbol sequence is a sentence of :data:`SYNTAX`."""
    type_ok: bool
    """Grammatical and every typed slot is type-consistent."""
    slot_ok: tuple[int, ...]
    """Per word: 1/0 at typed slots (type-consistent or not), −1 elsewhere."""


class Percolation(NamedTuple):
    """The training-pair graph of a world (entities and properties as nodes, training pairs as edges)."""

    bond_parameter: float
    """q·√(n₁n₂) with n₁, n₂ the entities and properties per class: the giant component appears near 1."""
    giant_fraction: float
    """Mean over classes of the largest component's share of the class's entities and properties."""
    connected_heldout: float
    """Fraction of held-out allowed pairs whose entity and property are connected by training pairs
    (what a learner that infers types from co-occurrence alone can get right; NaN if none is held out)."""


def _split_evenly(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Class of each of ``n`` items: a random permutation dealt round-robin over ``k`` classes."""
    out = np.empty(n, dtype=np.int64)
    out[rng.permutation(n)] = np.arange(n) % k
    return out


@functools.cache
def _expected(symbols: tuple[str, ...]) -> tuple[tuple[frozenset[str], ...], tuple[bool, ...]]:
    exp, complete = earley(SYNTAX, list(symbols))
    return tuple(frozenset(e) for e in exp), tuple(complete)


class PCSGWorld(DocWorld):
    """Sentences of the percolation PCSG with their syntax and type ground truth."""

    label_kinds: ClassVar[dict[str, str]] = {
        "symbol": "int", "next_symbol": "int", "entity": "int", "class": "int", "property": "int",
        "relation": "int", "type_ok": "int", "valid_next": "set", "typed_next": "set",
    }
    acceptance: tuple[str, float] = ("type_acc", 0.95)
    """Metric and threshold the reference model must reach (higher is better)."""

    def __init__(self, config: PCSGConfig | None = None) -> None:
        self.config = cfg = config or PCSGConfig()
        rng = np.random.default_rng(cfg.seed)
        self.entity_class = torch.from_numpy(_split_evenly(cfg.n_entities, cfg.n_classes, rng))
        """Class of each entity ``[n_entities]``."""
        self.property_class = torch.from_numpy(_split_evenly(cfg.n_properties, cfg.n_classes, rng))
        """Class of each descriptive property ``[n_properties]``."""
        self.relation_class = torch.from_numpy(_split_evenly(cfg.n_relations, cfg.n_classes, rng))
        """Subject class of each relation ``[n_relations]``."""
        objects = rng.random((cfg.n_relations, cfg.n_classes)) < cfg.object_density
        objects[np.arange(cfg.n_relations), rng.integers(cfg.n_classes, size=cfg.n_relations)] = True
        self.relation_objects = torch.from_numpy(objects)
        """Object classes each relation allows, bool ``[n_relations, n_classes]``."""
        self.allowed = self.entity_class[:, None] == self.property_class[None, :]
        """Allowed (entity, property) pairs, bool ``[n_entities, n_properties]``."""
        self.train_pairs = self.allowed & torch.from_numpy(rng.random(tuple(self.allowed.shape)) < cfg.pair_density)
        """Training pairs, bool ``[n_entities, n_properties]`` (a subset of ``allowed``)."""
        pairs = {"train": self.train_pairs, "heldout": self.allowed & ~self.train_pairs, "all": self.allowed}
        self.fill_pairs = pairs[cfg.split]
        """The pairs that fill descV slots in this world's split."""
        if not self.fill_pairs.any():
            raise ConfigError(f"split={cfg.split!r} with pair_density={cfg.pair_density} leaves no (entity, property) "
                              "pair to fill descV slots; pick another split or pair_density")
        words = [w for s in ("Ph", "descPreP", "relPreP", "Conj") for w, _ in LEXICON[s]]
        self.vocab = make_vocab(words + [f"e{i}" for i in range(cfg.n_entities)]
                                + [f"p{i}" for i in range(cfg.n_properties)] + [f"r{i}" for i in range(cfg.n_relations)])
        self.entity_ids = 4 + len(words)
        """Token id of entity 0 (entities are consecutive; properties and relations follow)."""
        self.property_ids = self.entity_ids + cfg.n_entities
        """Token id of property 0."""
        self.relation_ids = self.property_ids + cfg.n_properties
        """Token id of relation 0."""
        self.grammar = syntax(cfg.np_conj, tuple(cfg.vp_probs))
        """The syntax this world samples from."""
        V = len(self.vocab)
        cat = torch.zeros(len(SYMBOLS), V, dtype=torch.bool)
        for s, lex in LEXICON.items():
            cat[_SYM[s], [self.token_id(w) for w, _ in lex]] = True
        cat[_SYM["EndOfSeq"], EOS] = True
        for s, (a, n) in {"subjectID": (self.entity_ids, cfg.n_entities), "objectID": (self.entity_ids, cfg.n_entities),
                          "descV": (self.property_ids, cfg.n_properties),
                          "relV": (self.relation_ids, cfg.n_relations)}.items():
            cat[_SYM[s], a:a + n] = True
        self.category = cat
        """Tokens that can fill each symbol, bool ``[len(SYMBOLS), V]``."""
        self._ec, self._pc, self._rc = (x.numpy() for x in (self.entity_class, self.property_class, self.relation_class))
        self._ro, self._fill_np = self.relation_objects.numpy(), self.fill_pairs.numpy()
        self._fill_entities = np.nonzero(self._fill_np)[0]
        self._next_cache: dict[tuple[frozenset[str], int, int], tuple[int, ...]] = {}

    def reference_model(self) -> dict[str, Any]:
        """Tiny-transformer settings (spec §8 CPU default, the context cut to ``max_len`` rounded up to 8)."""
        return {"n_layers": 2, "n_heads": 2, "d_model": 64, "context": 8 * math.ceil(self.config.max_len / 8),
                "steps": 2000, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.1, "betas": (0.9, 0.95), "pack": False}

    @property
    def percolation_threshold(self) -> float:
        """The pair density q at which q·√(n₁n₂) = 1 (n₁, n₂: entities and properties per class)."""
        c = self.config
        return 1.0 / math.sqrt(c.n_entities / c.n_classes * c.n_properties / c.n_classes)

    def percolation(self) -> Percolation:
        """Connectivity of the training-pair graph (see :class:`Percolation`)."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        cfg = self.config
        nE, nP = cfg.n_entities, cfg.n_properties
        e, p = torch.nonzero(self.train_pairs, as_tuple=True)
        adj = coo_matrix((np.ones(len(e)), (e.numpy(), nE + p.numpy())), shape=(nE + nP, nE + nP))
        _, comp = connected_components(adj, directed=False)
        giant = []
        for c in range(cfg.n_classes):
            members = np.concatenate([comp[:nE][self.entity_class.numpy() == c], comp[nE:][self.property_class.numpy() == c]])
            giant.append(np.bincount(members).max() / len(members))
        he, hp = torch.nonzero(self.allowed & ~self.train_pairs, as_tuple=True)
        connected = float(np.mean(comp[he.numpy()] == comp[nE + hp.numpy()])) if len(he) else math.nan
        return Percolation(cfg.pair_density * self.percolation_threshold ** -1, float(np.mean(giant)), connected)

    def property_prompts(self) -> torch.Tensor:
        """``<bos> [P] e is`` for every entity e, ``[n_entities, 4]``: the next token is a descV."""
        head = torch.tensor([BOS, self.token_id("[P]"), 0, self.token_id("is")])
        out = head.repeat(self.config.n_entities, 1)
        out[:, 2] = self.entity_ids + torch.arange(self.config.n_entities)
        return out

    def heldout_type_auroc(self, property_logits: torch.Tensor) -> float:
        """How well scores ``[n_entities, n_properties]`` (e.g. next-token logits of the properties after
        :meth:`property_prompts`) rank each entity's held-out allowed properties above its disallowed ones:
        the AUROC per entity (training pairs left out), averaged over entities with a held-out pair. 0.5 is
        chance; a learner that only connects co-occurring entities and properties scores about
        ½ + ½·``percolation().connected_heldout``."""
        from assay.stats import auroc

        if tuple(property_logits.shape) != tuple(self.allowed.shape):
            raise ValueError(f"property_logits must be [n_entities, n_properties] = {tuple(self.allowed.shape)}, "
                             f"got {tuple(property_logits.shape)}")
        held, scores = self.allowed & ~self.train_pairs, []
        for e in range(held.shape[0]):
            keep = held[e] | ~self.allowed[e]
            if held[e].any() and (~self.allowed[e]).any():
                scores.append(auroc(property_logits[e][keep], held[e][keep]))
        return float(np.mean(scores)) if scores else math.nan

    # ------------------------------------------------------------------ sampling

    def _fill(self, symbols: list[str], rng: np.random.Generator) -> list[int] | None:
        """Type-consistent fillers (entity / property / relation index, −1 for function words), or None
        when the drawn subjects share no pair for a descV slot."""
        cfg, ec = self.config, self._ec
        n_subj = symbols.count("subjectID")
        if "descV" in symbols:
            first = int(self._fill_entities[rng.integers(len(self._fill_entities))])
        else:
            first = int(rng.integers(cfg.n_entities))
        c = ec[first]
        members = np.flatnonzero(ec == c)
        subjects = [first] + [int(x) for x in rng.choice(members, n_subj - 1)]
        props = np.flatnonzero(self._fill_np[subjects].all(0))
        if "descV" in symbols and not len(props):
            return None
        rels = np.flatnonzero(self._rc == c)
        out, it, rel = [], iter(subjects), -1
        for s in symbols:
            if s == "subjectID":
                out.append(next(it))
            elif s == "descV":
                out.append(int(rng.choice(props)))
            elif s == "relV":
                rel = int(rng.choice(rels))
                out.append(rel)
            elif s == "objectID":
                ok = np.flatnonzero(self._ro[rel][ec])
                out.append(int(rng.choice(ok)))
            else:
                out.append(-1)
        return out

    def _violate(self, symbols: list[str], fill: list[int], rng: np.random.Generator) -> list[int]:
        """``fill`` with one typed slot (not the first subject) replaced by a type-violating filler."""
        ec = self._ec
        c = int(ec[fill[symbols.index("subjectID")]])
        options: list[tuple[int, np.ndarray]] = []
        rel, seen_subject = -1, False
        for i, s in enumerate(symbols):
            if s == "subjectID":
                bad = np.flatnonzero(ec != c) if seen_subject else np.array([], dtype=np.int64)
                seen_subject = True
            elif s == "descV":
                bad = np.flatnonzero(self._pc != c)
            elif s == "relV":  # a wrong relation that still allows its objects: one violation, not several
                rel = fill[i]
                objs = [ec[fill[j]] for j in range(i + 1, len(symbols)) if symbols[j] == "objectID"
                        and "relV" not in symbols[i + 1:j]]
                bad = np.flatnonzero((self._rc != c) & self._ro[:, objs].all(1))
            elif s == "objectID":
                bad = np.flatnonzero(~self._ro[rel][ec])
            else:
                continue
            if len(bad):
                options.append((i, bad))
        i, bad = options[rng.integers(len(options))]  # a non-empty VP always offers a descV, relV or object slot
        out = list(fill)
        out[i] = int(rng.choice(bad))
        return out

    def _word(self, s: str, f: int, rng: np.random.Generator) -> int:
        if s == "EndOfSeq":
            return EOS
        if s in ("subjectID", "objectID"):
            return self.entity_ids + f
        if s == "descV":
            return self.property_ids + f
        if s == "relV":
            return self.relation_ids + f
        words, probs = zip(*LEXICON[s])
        return self.token_id(words[min(int(np.searchsorted(np.cumsum(probs), rng.random(), side="right")), len(words) - 1)])

    def _doc(self, rng: np.random.Generator) -> Doc:
        for _ in range(1000):
            symbols, _ = sample_tree(self.grammar, rng, self.config.max_len)
            fill = self._fill(symbols, rng)
            if fill is not None:
                break
        else:  # pragma: no cover - the config checks make a fill always reachable
            raise RuntimeError("no type-consistent filling found in 1000 draws; the pair set is too sparse")
        if rng.random() < self.config.negative_fraction:
            fill = self._violate(symbols, fill, rng)
        return self.doc_from_parse(symbols, fill, [self._word(s, f, rng) for s, f in zip(symbols, fill)])

    def doc_from_parse(self, symbols: list[str], fill: list[int], tokens: list[int]) -> Doc:
        """The document and labels of a sentence given its symbols, fillers and token ids (``<eos>`` last)."""
        ec = self._ec
        c = int(ec[fill[symbols.index("subjectID")]])
        n = len(symbols)
        lab: dict[str, list[Any]] = {k: [-1] * (n + 1) for k in ("entity", "class", "property", "relation", "type_ok")}
        lab["symbol"] = [-1] + [_SYM[s] for s in symbols]
        lab["next_symbol"] = lab["symbol"][1:] + [_SYM["Ph"]]
        rel = -1
        for t, (s, f) in enumerate(zip(symbols, fill), start=1):
            if s in ("subjectID", "objectID"):
                lab["entity"][t], lab["class"][t] = f, int(ec[f])
                ok = int(ec[f]) == c if s == "subjectID" else bool(self._ro[rel, ec[f]])
            elif s == "descV":
                lab["property"][t] = f
                ok = int(self._pc[f]) == c
            elif s == "relV":
                lab["relation"][t], rel = f, f
                ok = int(self._rc[f]) == c
            else:
                continue
            lab["type_ok"][t] = int(ok)
        expected, _ = _expected(tuple(symbols))
        valid, typed, rel = [], [], -1
        for t in range(n + 1):  # the state after t words
            if t and symbols[t - 1] == "relV":
                rel = fill[t - 1]
            valid.append(self._next_tokens(expected[t], -1, -1))
            typed.append(self._next_tokens(expected[t], c if t >= 2 else -1, rel))  # class known after a subject
        valid[-1] = typed[-1] = (self.token_id("[P]"),)
        lab["valid_next"], lab["typed_next"] = valid, typed
        ok = all(x != 0 for x in lab["type_ok"])
        return Doc([BOS] + tokens, lab, [True] * (n + 1), {"sentence_ok": int(ok), "sentence_class": c})

    def _next_tokens(self, expected: frozenset[str], c: int, rel: int) -> tuple[int, ...]:
        """Token ids that can fill the ``expected`` symbols; with ``c`` >= 0 only those that keep a sentence of
        class ``c`` (current relation ``rel``) type-consistent. Cached."""
        key = (expected, c, rel)
        if key not in self._next_cache:
            m = self.category[[_SYM[s] for s in expected]].any(0) if expected else torch.zeros(len(self.vocab), dtype=torch.bool)
            if c >= 0:
                ents = slice(self.entity_ids, self.entity_ids + self.config.n_entities)
                if "subjectID" in expected:
                    m[ents] &= self.entity_class == c
                if "objectID" in expected:
                    m[ents] &= self.relation_objects[rel][self.entity_class]
                m[self.property_ids:self.relation_ids] &= self.property_class == c
                m[self.relation_ids:] &= self.relation_class == c
            self._next_cache[key] = tuple(torch.nonzero(m).flatten().tolist())
        return self._next_cache[key]

    # ------------------------------------------------------------------ judging sentences

    def check(self, ids: list[int] | torch.Tensor) -> SentenceCheck:
        """Grammaticality and type-consistency of a sentence given as token ids, with or without ``<bos>``
        (ending at its first ``<eos>``; no ``<eos>`` is ungrammatical). An entity is read as a subject
        before the first is/has/relV token and as an object after it."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        ids = [i for i in ids if i != self.pad_id]
        if ids and ids[0] == BOS:
            ids = ids[1:]
        if EOS in ids:
            ids = ids[: ids.index(EOS) + 1]
        ec = self.entity_class
        symbols, in_vp = [], False
        for i in ids:
            w = self.vocab[i]
            if i == EOS:
                symbols.append("EndOfSeq")
            elif self.entity_ids <= i < self.property_ids:
                symbols.append("objectID" if in_vp else "subjectID")
            elif self.property_ids <= i < self.relation_ids:
                symbols.append("descV")
            elif i >= self.relation_ids:
                symbols.append("relV")
            else:
                symbols.append(next((s for s, lex in LEXICON.items() if w in dict(lex)), "?"))
            in_vp |= w in _VP_START or i >= self.relation_ids
        grammatical = "?" not in symbols and recognise(SYNTAX, symbols)
        slot, c, rel = [], None, -1
        for s, i in zip(symbols, ids):
            if s == "subjectID":
                e = i - self.entity_ids
                c = int(ec[e]) if c is None else c
                slot.append(int(int(ec[e]) == c))
            elif s == "descV":
                slot.append(int(c is not None and int(self.property_class[i - self.property_ids]) == c))
            elif s == "relV":
                rel = i - self.relation_ids
                slot.append(int(c is not None and int(self.relation_class[rel]) == c))
            elif s == "objectID":
                e = i - self.entity_ids
                slot.append(int(rel >= 0 and bool(self.relation_objects[rel, ec[e]])))
            else:
                slot.append(-1)
        return SentenceCheck(bool(grammatical), bool(grammatical and 0 not in slot), tuple(slot))

    def evaluate(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Grammar and type accuracy of next-token ``logits`` [n, T, V] on ``batch`` (module docstring)."""
        check_logits(logits, batch)
        scored = batch.targets != IGNORE
        nxt = batch.labels["next_symbol"]
        typed_slot = torch.zeros(len(SYMBOLS) + 1, dtype=torch.bool)
        typed_slot[[_SYM[s] for s in TYPED]] = True
        cat = self.category[nxt.clamp_min(0)]
        binding = (cat & ~batch.labels["typed_next"]).any(-1)  # not the first subject, not an any-class object
        at_typed = scored & typed_slot[nxt] & binding  # index −1 (no next symbol) is False
        within = logits.masked_fill(~cat, float("-inf"))
        return {
            "grammar_acc": argmax_in_set(logits, batch.labels["valid_next"], scored),
            "type_acc": argmax_in_set(within, batch.labels["typed_next"], at_typed),
            "ce": masked_mean(masked_cross_entropy(logits, batch.targets), scored),
        }
