"""Probabilistic context-free grammars: a sampler with per-token ancestry, an Earley recogniser, and
the "Expr" and English-like worlds.

Menon, Shrivastava, Krueger, Lubana 2025, "Analyzing (In)Abilities of SAEs via Formal Languages"
(NAACL 2025, arXiv 2410.11767) [code: Abhinav271828/pcfg-sae-final]. Sampling is top-down: each
nonterminal is rewritten with rule r with probability p(r) (a fresh uniform per choice); samples
longer than ``max_len`` tokens are redrawn. Recognition uses Earley's algorithm (Earley 1970, "An
efficient context-free parsing algorithm"), independent of the sampler; its chart after a prefix
gives the set of grammatical next tokens.

Expr (prefix notation)::

    S → Expr;  Expr → OpExpr [p_op] | Digit [1 − p_op]
    OpExpr → UnOp Expr [0.33] | BinOp Expr Expr [0.33] | TernOp Expr Expr Expr [0.34]
    Digit → dig0 … dig9 (uniform); UnOp → un0 … un2; BinOp → bin0 … bin2; TernOp → tern0 … tern2

Expr labels per token (after reading it): ``arity`` (0 digit, 1, 2, 3); ``need`` (operands still
required: starts at 1, need += arity − 1); ``depth`` (operators with an operand slot not yet begun);
``parent_arity`` / ``slot`` (the operator whose operand this token begins, −1 at the root);
``value`` (value of the outermost sub-expression completed at this token, −1 if none, with
un_j(a) = a + j + 1, bin_j(a, b) = a + b + j, tern_j(a, b, c) = a·b + c + j, all mod n_digits).
Check values: ``bin0 un1 dig3 tern2 dig1 dig2 dig0`` → need 2,2,1,3,2,1,0; depth 1,2,1,1,1,1,0;
parent_arity −1,2,1,2,3,3,3; mean length 1/(1 − 0.4·2.01) = 5.10.

English-like grammar (Menon et al.; rule probabilities other than p_conj are this module's choice)::

    S → NP VP;  NP → Pro | N | Adj N | NP Conj NP [p_conj];  VP → V NP | V | VP Adv [p_adv] | VP Conj VP [p_conj]

Both worlds label every token with ``preterminal`` and ``parent`` (the nonterminal above it) as
nonterminal ids, ``parse_depth`` (number of nonterminal ancestors), ``ancestors`` (bool
[n, T, n_nonterminals]) and ``valid_next`` (bool [n, T, V]; ``<eos>`` valid iff the prefix is a
sentence).

Task metric: ``valid_next_acc`` — fraction of scored positions whose argmax next token is a
grammatical continuation; acceptance ≥ 0.95 (issue 3). Also ``valid_mass`` and ``ce``.
"""

from __future__ import annotations

import bisect
import functools
import itertools
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

__all__ = [
    "Grammar", "sample_tree", "earley", "recognise",
    "ExprConfig", "ExprWorld", "expr_labels", "EnglishConfig", "EnglishWorld", "ENGLISH_WORDS",
]

Rule = tuple[tuple[str, ...], float]


@dataclass(frozen=True)
class Grammar:
    """A PCFG: ``rules[A]`` lists ``(rhs, probability)``; symbols without rules are terminals."""

    start: str
    """Start symbol."""
    rules: dict[str, tuple[Rule, ...]]
    """Nonterminal → its productions with probabilities (each nonterminal's sum to 1)."""

    def __post_init__(self) -> None:
        if self.start not in self.rules:
            raise ValueError(f"start symbol {self.start!r} has no rules")
        for lhs, prods in self.rules.items():
            if not prods:
                raise ValueError(f"nonterminal {lhs!r} has no productions")
            if any(len(rhs) == 0 for rhs, _ in prods):
                raise ValueError(f"empty production for {lhs!r} (epsilon rules are not supported)")
            if any(p < 0 for _, p in prods) or abs(sum(p for _, p in prods) - 1.0) > 1e-9:
                raise ValueError(f"probabilities of {lhs!r} must be >= 0 and sum to 1, got {[p for _, p in prods]}")
        cum = {a: (list(itertools.accumulate(p for _, p in prods)), [rhs for rhs, _ in prods])
               for a, prods in self.rules.items()}
        object.__setattr__(self, "_cum", cum)  # cumulative rule probabilities for the sampler

    @property
    def nonterminals(self) -> tuple[str, ...]:
        """Nonterminals in rule order."""
        return tuple(self.rules)

    @property
    def terminals(self) -> tuple[str, ...]:
        """Terminals in order of first appearance."""
        seen: dict[str, None] = {}
        for prods in self.rules.values():
            for rhs, _ in prods:
                for s in rhs:
                    if s not in self.rules:
                        seen.setdefault(s)
        return tuple(seen)


def sample_tree(grammar: Grammar, rng: np.random.Generator, max_len: int) -> tuple[list[str], list[tuple[str, ...]]]:
    """One sentence by top-down expansion: terminals and, per terminal, its ancestry (root → preterminal).

    Sentences longer than ``max_len`` are abandoned and redrawn.
    """
    cum = grammar._cum  # type: ignore[attr-defined]
    while True:
        out: list[str] = []
        anc: list[tuple[str, ...]] = []
        stack: list[tuple[str, tuple[str, ...]]] = [(grammar.start, ())]
        while stack and len(out) <= max_len:
            sym, path = stack.pop()
            if sym not in cum:
                out.append(sym)
                anc.append(path)
                continue
            c, rhss = cum[sym]
            rhs = rhss[min(bisect.bisect_right(c, rng.random()), len(rhss) - 1)]
            path = path + (sym,)
            stack.extend((s, path) for s in reversed(rhs))
        if not stack and len(out) <= max_len:
            return out, anc


def earley(grammar: Grammar, tokens: list[str]) -> tuple[list[set[str]], list[bool]]:
    """Earley recognition of every prefix of ``tokens``.

    Returns, for each prefix length i = 0..len(tokens), the set of terminals that can come next and
    whether the prefix is a complete sentence. Both are empty/False from the first ungrammatical
    token on.
    """
    rules = grammar.rules
    top = ("<top>", (grammar.start,))
    charts: list[dict[tuple, None]] = [dict.fromkeys([(top[0], top[1], 0, 0)])]
    expected: list[set[str]] = []
    complete: list[bool] = []
    for i in range(len(tokens) + 1):
        chart = charts[i]
        agenda = list(chart)
        nxt: dict[tuple, None] = {}
        exp: set[str] = set()
        j = 0
        while j < len(agenda):
            lhs, rhs, dot, org = agenda[j]
            j += 1
            new: list[tuple] = []
            if dot < len(rhs):
                sym = rhs[dot]
                if sym in rules:
                    new = [(sym, r, 0, i) for r, _ in rules[sym]]
                else:
                    exp.add(sym)
                    if i < len(tokens) and tokens[i] == sym:
                        nxt[(lhs, rhs, dot + 1, org)] = None
            else:
                new = [(l2, r2, d2 + 1, o2) for (l2, r2, d2, o2) in charts[org] if d2 < len(r2) and r2[d2] == lhs]
            for item in new:
                if item not in chart:
                    chart[item] = None
                    agenda.append(item)
        expected.append(exp)
        complete.append((top[0], top[1], 1, 0) in chart)
        charts.append(nxt)
    return expected, complete


def recognise(grammar: Grammar, tokens: list[str]) -> bool:
    """Whether ``tokens`` is a sentence of ``grammar`` (Earley)."""
    return earley(grammar, tokens)[1][-1]


class _PCFGWorld(DocWorld):
    """Shared machinery: vocabulary from the grammar's terminals, ancestry labels, metrics."""

    base_labels: ClassVar[dict[str, str]] = {
        "preterminal": "int", "parent": "int", "parse_depth": "int", "ancestors": "set", "valid_next": "set",
    }
    acceptance: tuple[str, float] = ("valid_next_acc", 0.95)
    """Metric and threshold the reference model must reach (higher is better)."""
    grammar: Grammar
    max_len: int

    def _setup(self, grammar: Grammar, max_len: int) -> None:
        self.grammar = grammar
        """The grammar (static ground truth)."""
        self.max_len = max_len
        self.vocab = make_vocab(grammar.terminals)
        self.nonterminals = grammar.nonterminals
        """Nonterminal names; ``parent``/``preterminal``/``ancestors`` index into this tuple."""
        self._nt = {a: i for i, a in enumerate(self.nonterminals)}

    def _set_sizes(self) -> dict[str, int]:
        return {"ancestors": len(self.nonterminals), "valid_next": len(self.vocab)}

    def reference_model(self) -> dict[str, Any]:
        """Tiny-transformer settings (spec §2, CPU default); train on ``pack(batch, context)``."""
        return {"n_layers": 2, "n_heads": 2, "d_model": 64, "context": 64, "steps": 1500, "batch_size": 64,
                "lr": 1e-3, "weight_decay": 1e-4, "betas": (0.9, 0.95), "pack": True}

    def _valid_next(self, words: list[str]) -> list[tuple[int, ...]]:
        expected, complete = earley(self.grammar, words)
        return [tuple(sorted(self.token_id(s) for s in e)) + ((EOS,) if c else ()) for e, c in zip(expected, complete)]

    def doc_from_tree(self, words: list[str], ancestry: list[tuple[str, ...]]) -> Doc:
        """Document and labels of a sampled sentence with its ancestry."""
        return self._base_doc(words, ancestry, self._valid_next(words))

    def _base_doc(self, words: list[str], ancestry: list[tuple[str, ...]], valid: list[tuple[int, ...]]) -> Doc:
        nt = self._nt
        n = len(words)
        labels: dict[str, list[Any]] = {
            "preterminal": [-1] + [nt[a[-1]] for a in ancestry] + [-1],
            "parent": [-1] + [nt[a[-2]] if len(a) > 1 else -1 for a in ancestry] + [-1],
            "parse_depth": [0] + [len(a) for a in ancestry] + [0],
            "ancestors": [()] + [tuple(sorted({nt[s] for s in a})) for a in ancestry] + [()],
            "valid_next": valid + [valid[0]],
        }
        return Doc([BOS] + self.encode(words) + [EOS], labels, [True] * (n + 2))

    def _doc(self, rng: np.random.Generator) -> Doc:
        return self.doc_from_tree(*sample_tree(self.grammar, rng, self.max_len))

    def evaluate(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """Grammaticality of next-token ``logits`` [n, T, V] on ``batch`` (see module docstring)."""
        check_logits(logits, batch)
        scored = batch.targets != IGNORE
        valid = batch.labels["valid_next"]
        return {
            "valid_next_acc": argmax_in_set(logits, valid, scored),
            "valid_mass": valid_mass(logits, valid, scored),
            "ce": masked_mean(masked_cross_entropy(logits, batch.targets), scored),
        }


# ----------------------------------------------------------------------------- Expr


@dataclass(frozen=True, kw_only=True)
class ExprConfig:
    """The Expr grammar of Menon et al. (prefix arithmetic expressions)."""

    n_digits: int = 10
    """Number of digit tokens dig0 … dig{n−1} (also the modulus of the semantics)."""
    n_ops: int = 3
    """Operators per arity (un/bin/tern 0 … n_ops − 1)."""
    p_op: float = 0.4
    """Probability of Expr → OpExpr."""
    arity_probs: tuple[float, float, float] = (0.33, 0.33, 0.34)
    """Probabilities of OpExpr → UnOp / BinOp / TernOp expansions."""
    max_len: int = 128
    """Longer samples are rejected and redrawn."""

    def __post_init__(self) -> None:
        if self.n_digits < 1 or self.n_ops < 1:
            raise ConfigError(f"n_digits and n_ops must be >= 1, got {self.n_digits}, {self.n_ops}")
        if not 0.0 <= self.p_op < 1.0:
            raise ConfigError(f"p_op must be in [0, 1), got {self.p_op}")
        if len(self.arity_probs) != 3 or min(self.arity_probs) < 0 or abs(sum(self.arity_probs) - 1) > 1e-9:
            raise ConfigError(f"arity_probs must be 3 non-negative numbers summing to 1, got {self.arity_probs}")
        growth = self.p_op * (self.arity_probs[0] + 2 * self.arity_probs[1] + 3 * self.arity_probs[2])
        if growth >= 1.0:
            raise ConfigError(f"p_op·E[arity] = {growth:.3f} >= 1: expressions grow without bound; lower p_op")
        if self.max_len < 1:
            raise ConfigError(f"max_len must be >= 1, got {self.max_len}")


def expr_grammar(cfg: ExprConfig) -> Grammar:
    """The Expr PCFG for ``cfg``."""
    pu, pb, pt = cfg.arity_probs

    def lex(prefix: str, n: int) -> tuple[Rule, ...]:
        return tuple(((f"{prefix}{i}",), 1.0 / n) for i in range(n))

    return Grammar("S", {
        "S": ((("Expr",), 1.0),),
        "Expr": ((("OpExpr",), cfg.p_op), (("Digit",), 1.0 - cfg.p_op)),
        "OpExpr": ((("UnOp", "Expr"), pu), (("BinOp", "Expr", "Expr"), pb), (("TernOp", "Expr", "Expr", "Expr"), pt)),
        "Digit": lex("dig", cfg.n_digits),
        "UnOp": lex("un", cfg.n_ops),
        "BinOp": lex("bin", cfg.n_ops),
        "TernOp": lex("tern", cfg.n_ops),
    })


_ARITY = {"dig": 0, "un": 1, "bin": 2, "tern": 3}


@functools.cache
def _split(token: str) -> tuple[int, int]:
    head = token.rstrip("0123456789")
    return _ARITY[head], int(token[len(head):])


def expr_labels(tokens: list[str], n_digits: int = 10) -> dict[str, list[int]]:
    """Expr labels (module docstring) of a prefix expression given as token strings.

    Works on prefixes too (``value`` only for completed sub-expressions).
    """
    parsed = [_split(t) for t in tokens]
    out: dict[str, list[int]] = {k: [] for k in ("arity", "need", "depth", "parent_arity", "slot")}
    stack: list[list[int]] = []  # [arity, operand slots begun]
    need = 1
    for arity, _ in parsed:
        if stack:
            op = stack[-1]
            out["parent_arity"].append(op[0])
            out["slot"].append(op[1])
            op[1] += 1
            if op[1] == op[0]:
                stack.pop()
        else:
            out["parent_arity"].append(-1)
            out["slot"].append(-1)
        if arity:
            stack.append([arity, 0])
        need += arity - 1
        out["arity"].append(arity)
        out["need"].append(need)
        out["depth"].append(len(stack))
    value = [-1] * len(tokens)

    def ev(i: int) -> tuple[int, int] | None:  # value of the sub-expression starting at i, and its end
        if i >= len(parsed):
            return None
        arity, j = parsed[i]
        args, end = [], i
        for _ in range(arity):
            r = ev(end + 1)
            if r is None:
                return None
            args.append(r[0])
            end = r[1]
        v = j if arity == 0 else (args[0] + j + 1 if arity == 1 else args[0] + args[1] + j if arity == 2
                                  else args[0] * args[1] + args[2] + j)
        value[end] = v % n_digits
        return v % n_digits, end

    i = 0
    while i < len(parsed):  # a prefix may hold several complete expressions only if packed; evaluate each
        r = ev(i)
        if r is None:
            break
        i = r[1] + 1
    out["value"] = value
    return out


class ExprWorld(_PCFGWorld):
    """Prefix arithmetic expressions from the Expr PCFG, with parse-state and value labels."""

    label_kinds: ClassVar[dict[str, str]] = {
        **_PCFGWorld.base_labels,
        "arity": "int", "need": "int", "depth": "int", "parent_arity": "int", "slot": "int", "value": "int",
    }

    def __init__(self, config: ExprConfig | None = None) -> None:
        self.config = config or ExprConfig()
        self._setup(expr_grammar(self.config), self.config.max_len)
        self._all_terminals = tuple(range(4, len(self.vocab)))

    def doc_from_tree(self, words: list[str], ancestry: list[tuple[str, ...]]) -> Doc:
        lab = expr_labels(words, self.config.n_digits)
        # valid_next in closed form (tests check it against Earley): any terminal while operands are
        # still needed, else only <eos>
        valid = [self._all_terminals if k > 0 else (EOS,) for k in [1] + lab["need"]]
        doc = self._base_doc(words, ancestry, valid)
        start = {"arity": -1, "need": 1, "depth": 0, "parent_arity": -1, "slot": -1, "value": -1}
        for k, v in lab.items():
            doc.labels[k] = [start[k]] + v + [start[k]]
        return doc


# ----------------------------------------------------------------------------- English-like

ENGLISH_WORDS: dict[str, tuple[str, ...]] = {
    "Pro": ("i", "you", "he", "she", "it", "we", "they", "someone", "everyone", "nobody"),
    "N": ("dog", "cat", "bird", "fish", "horse", "child", "teacher", "farmer", "doctor", "artist"),
    "Adj": ("big", "small", "red", "old", "young", "happy", "quiet", "bright", "dark", "green"),
    "V": ("sees", "likes", "finds", "helps", "knows", "follows", "calls", "meets", "watches", "chases"),
    "Adv": ("quickly", "slowly", "often", "rarely", "today", "here", "there", "again", "soon", "loudly"),
    "Conj": ("and", "or", "but", "yet", "so", "then", "also", "plus", "while", "whereas"),
}
"""The words of each lexical category (the first ``words_per_category`` are used)."""


@dataclass(frozen=True, kw_only=True)
class EnglishConfig:
    """A small English-like PCFG (Menon et al.'s English grammar with this module's rule weights)."""

    words_per_category: int = 10
    """Words per lexical category (1–10)."""
    p_conj: float = 0.15
    """Probability of NP → NP Conj NP and of VP → VP Conj VP."""
    p_adv: float = 0.15
    """Probability of VP → VP Adv."""
    max_len: int = 64
    """Longer samples are rejected and redrawn."""

    def __post_init__(self) -> None:
        if not 1 <= self.words_per_category <= 10:
            raise ConfigError(f"words_per_category must be in 1..10, got {self.words_per_category}")
        if not 0.0 <= self.p_conj < 0.5:
            raise ConfigError(f"p_conj must be in [0, 0.5) (else sentences grow without bound), got {self.p_conj}")
        if not 0.0 <= self.p_adv or self.p_adv + self.p_conj >= 1.0 or 2 * self.p_conj + self.p_adv >= 1.0:
            raise ConfigError(f"need p_adv >= 0 and 2 p_conj + p_adv < 1, got p_adv={self.p_adv}")
        if self.max_len < 2:
            raise ConfigError(f"max_len must be >= 2 (the shortest sentence is NP V), got {self.max_len}")


def english_grammar(cfg: EnglishConfig) -> Grammar:
    """The English-like PCFG for ``cfg``."""
    q = 1.0 - cfg.p_conj
    r = 1.0 - cfg.p_conj - cfg.p_adv
    rules: dict[str, tuple[Rule, ...]] = {
        "S": ((("NP", "VP"), 1.0),),
        "NP": ((("Pro",), 0.35 * q), (("N",), 0.35 * q), (("Adj", "N"), 0.3 * q), (("NP", "Conj", "NP"), cfg.p_conj)),
        "VP": ((("V", "NP"), 0.6 * r), (("V",), 0.4 * r), (("VP", "Adv"), cfg.p_adv), (("VP", "Conj", "VP"), cfg.p_conj)),
    }
    m = cfg.words_per_category
    for cat, words in ENGLISH_WORDS.items():
        rules[cat] = tuple(((w,), 1.0 / m) for w in words[:m])
    return Grammar("S", rules)


class EnglishWorld(_PCFGWorld):
    """Sentences of a small English-like PCFG, with ancestry labels and Earley valid-next sets."""

    label_kinds: ClassVar[dict[str, str]] = dict(_PCFGWorld.base_labels)

    def __init__(self, config: EnglishConfig | None = None) -> None:
        self.config = config or EnglishConfig()
        self._setup(english_grammar(self.config), self.config.max_len)
