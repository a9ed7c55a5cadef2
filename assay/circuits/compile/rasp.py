"""A small RASP front end: sequence operations, their meaning, and their compilation to the craft layer.

RASP (Weiss, Goldberg, Yahav 2021, "Thinking Like Transformers") writes a transformer's algorithm as operations
on sequences; tracr (Lindner et al. 2023, "Tracr: Compiled Transformers as a Laboratory for Interpretability",
§3) compiles them. This is the causal subset that maps one-to-one onto :mod:`~assay.circuits.compile.blocks`:

- ``tokens``, ``indices``: the embedded inputs (categorical);
- ``Map(f, sop)``: ``f`` at every position — a lookup-table MLP (``numerical=True``: ``f`` returns numbers and
  the result is one numerical direction); on a numerical ``sop``, a discretising MLP exact at every value the
  operation can take (a numerical Aggregate: every mean of up to max_seq_len of its source's values);
- ``SequenceMap(f, a, b)``: ``f(a, b)`` at every position — an MLP with one ReLU per value pair,
  ``ReLU(x_a + y_b − 1)`` (exact on one-hot inputs);
- ``Select(keys, queries, predicate)``: position t selects the positions 1 ≤ s ≤ t with
  ``predicate(keys[s], queries[t])``; the BOS position is the default, read when nothing is selected;
- ``SelectAll()``: every position so far, BOS included (a uniform head);
- ``Aggregate(selector, sop)``: the mean of ``sop`` over the selected positions — a selection head (categorical:
  the one value they share, or a mix, which only the output may be; ``numerical=True``: a number);
- ``SelectorWidth(selector)``: how many positions are selected — a head that also attends BOS, then a
  discretising MLP (the histogram's construction).

:func:`evaluate` is the meaning (pure Python, causal, per position); :func:`compile_rasp` turns an output
sequence operation into a :class:`~assay.circuits.compile.assemble.Program` whose ``reference`` is that meaning,
one variable per operation (named by ``name=`` or by kind and order), so the compiled model's circuit
names the program's own operations. Layers are allocated by :func:`~assay.circuits.compile.assemble.compile_program`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from assay.circuits.compile.assemble import CompileError, Intervenable, Program, PromptStrata
from assay.circuits.compile.blocks import (
    Head,
    MLPBlock,
    Neuron,
    discretising_mlp,
    lookup_mlp,
    mean_head,
    neuron_mlp,
    select_head,
)
from assay.circuits.compile.program_parts import SCALE, base_layout, check_input, readout_entries
from assay.circuits.compile.space import Variable
from assay.worlds.vocab import BOS, SPECIALS

__all__ = ["SOp", "Tokens", "Indices", "Map", "SequenceMap", "Select", "SelectAll", "Aggregate", "SelectorWidth",
           "Mix", "RASPError", "tokens", "indices", "evaluate", "compile_rasp"]


class RASPError(ValueError):
    """A RASP program whose meaning is undefined on an input (e.g. a mix of values fed to another operation)."""


@dataclass(frozen=True, eq=False)
class SOp:
    """A sequence operation: one value per position. Compared by identity (each is one node of the program)."""

    name: str | None = field(default=None, kw_only=True)
    """The variable's name in the compiled model and its circuit (None: kind and order, e.g. ``map_1``)."""


@dataclass(frozen=True, eq=False)
class Tokens(SOp):
    """The input token ids."""


@dataclass(frozen=True, eq=False)
class Indices(SOp):
    """The positions 0, 1, …"""


@dataclass(frozen=True, eq=False)
class Map(SOp):
    """``f(sop[t])`` at every position t."""

    f: Callable[[Hashable], Any]
    sop: SOp
    numerical: bool = field(default=False, kw_only=True)
    """``f`` returns numbers, held as one numerical direction (a Map may read it back into categories; a numerical
    Map of a number does not compile)."""


@dataclass(frozen=True, eq=False)
class SequenceMap(SOp):
    """``f(first[t], second[t])`` at every position t."""

    f: Callable[[Hashable, Hashable], Hashable]
    first: SOp
    second: SOp


@dataclass(frozen=True, eq=False)
class Select:
    """Position t selects the positions 1 ≤ s ≤ t with ``predicate(keys[s], queries[t])``."""

    keys: SOp
    queries: SOp
    predicate: Callable[[Hashable, Hashable], bool]


@dataclass(frozen=True, eq=False)
class SelectAll:
    """Position t selects every position 0 ≤ s ≤ t, BOS included."""


@dataclass(frozen=True, eq=False)
class Aggregate(SOp):
    """The mean of ``sop`` over the positions ``selector`` selects (the BOS position's value if none is)."""

    selector: Select | SelectAll
    sop: SOp
    numerical: bool = field(default=False, kw_only=True)
    """The mean of ``sop``'s numbers as one numerical direction; else categorical (the shared value, or a mix)."""


@dataclass(frozen=True, eq=False)
class SelectorWidth(SOp):
    """How many positions ``selector`` selects (0 … max_seq_len − 1)."""

    selector: Select


tokens = Tokens(name="token")
"""The token sequence (the ``token`` variable)."""
indices = Indices(name="position")
"""The position sequence (the ``position`` variable)."""


@dataclass(frozen=True)
class Mix:
    """A categorical Aggregate over positions holding different values: each value's share."""

    shares: tuple[tuple[Hashable, float], ...]


def _children(sop: SOp) -> tuple[SOp, ...]:
    if isinstance(sop, Map):
        return (sop.sop,)
    if isinstance(sop, SequenceMap):
        return sop.first, sop.second
    if isinstance(sop, (Aggregate, SelectorWidth)):
        sel = sop.selector
        reads = () if isinstance(sel, SelectAll) else (sel.keys, sel.queries)
        return (*reads, sop.sop) if isinstance(sop, Aggregate) else reads
    return ()


def _order(output: SOp) -> list[SOp]:
    """Every operation ``output`` depends on, each after its inputs."""
    seen: dict[int, SOp] = {}

    def visit(s: SOp) -> None:
        if id(s) in seen:
            return
        for c in _children(s):
            visit(c)
        seen[id(s)] = s

    visit(output)
    return list(seen.values())


def _selected(sel: Select | SelectAll, t: int, values: dict[int, list]) -> list[int]:
    if isinstance(sel, SelectAll):
        return list(range(t + 1))
    keys, queries = values[id(sel.keys)], values[id(sel.queries)]
    return [s for s in range(1, t + 1) if sel.predicate(keys[s], queries[t])]


def evaluate(output: SOp, token_ids: Sequence[int], overrides: Mapping[str, Mapping[int, Hashable]] | None = None
             ) -> list:
    """The value of ``output`` at every position of ``token_ids`` (BOS first): its meaning, position by position
    (causal: position t sees positions 0..t). A categorical Aggregate over different values gives a :class:`Mix`;
    feeding a mix to another operation raises :class:`RASPError`. ``overrides`` maps an operation's name to
    {position: value}: that operation holds those values there, and everything reading it sees them (a free
    intervention)."""
    overrides = overrides or {}
    values: dict[int, list] = {}
    n = len(token_ids)
    for sop in _order(output):
        ins = [values[id(c)] for c in _children(sop)]
        for c, vals in zip(_children(sop), ins, strict=True):
            if any(isinstance(v, Mix) for v in vals):
                raise RASPError(f"{_label(c)} is a mix of values at some position of {list(token_ids)}; only the "
                                f"output may be one (select one value, or aggregate numerically)")
        if isinstance(sop, Tokens):
            out = list(token_ids)
        elif isinstance(sop, Indices):
            out = list(range(n))
        elif isinstance(sop, Map):
            out = [sop.f(v) for v in values[id(sop.sop)]]
        elif isinstance(sop, SequenceMap):
            out = [sop.f(a, b) for a, b in zip(values[id(sop.first)], values[id(sop.second)], strict=True)]
        elif isinstance(sop, SelectorWidth):
            out = [len(_selected(sop.selector, t, values)) for t in range(n)]
        elif isinstance(sop, Aggregate):
            src = values[id(sop.sop)]
            out = []
            for t in range(n):
                picked = [src[s] for s in _selected(sop.selector, t, values)] or [src[0]]
                if sop.numerical:
                    out.append(sum(float(v) for v in picked) / len(picked))
                else:
                    counts = Counter(picked)
                    out.append(picked[0] if len(counts) == 1 else
                               Mix(tuple((v, c / len(picked)) for v, c in counts.items())))
        else:
            raise TypeError(f"not a RASP operation: {sop!r}")
        for p, v in overrides.get(sop.name, {}).items() if sop.name is not None else ():
            out[p] = v
        values[id(sop)] = out
    return values[id(output)]


def _means(values: Sequence[float], max_seq_len: int) -> tuple[float, ...]:
    """Every mean of 1 … max_seq_len values drawn (with repeats) from ``values``: what a numerical Aggregate can
    hold, the points a discretising MLP reading it must be exact at (rounded to 12 digits to merge float ties)."""
    sums, means = {0.0}, set()
    for n in range(1, max_seq_len + 1):
        sums = {round(a + float(v), 12) for a in sums for v in values}
        means |= {round(a / n, 12) for a in sums}
    return tuple(sorted(means))


def _label(sop: SOp) -> str:
    return f"{type(sop).__name__}{'' if sop.name is None else f' {sop.name!r}'}"


def compile_rasp(output: SOp, *, name: str, n_symbols: int = 3, max_seq_len: int = 8,
                 prompt_strata: PromptStrata | None = None, intervene: str | None = None) -> Program:
    """The craft :class:`~assay.circuits.compile.assemble.Program` of ``output`` over the token ids 0 … 3 +
    ``n_symbols`` (the specials, then the symbols) and inputs of up to ``max_seq_len`` tokens, BOS first: one
    variable per operation, one component per Map, SequenceMap and Aggregate, two per SelectorWidth; the readout
    gives output value v logit SCALE (a numerical output: SCALE × its value). Its ``reference`` is
    :func:`evaluate`. ``intervene`` names a categorical operation that free interventions may overwrite (the
    program's :class:`~assay.circuits.compile.assemble.Intervenable`, its outputs from :func:`evaluate` with the
    override). Refused with :class:`~assay.circuits.compile.assemble.CompileError`: a numerical Map of a numerical
    operation, a Map of a one-valued number, a selector whose predicate would select the BOS position, two operations with one name, an
    ``intervene`` that is not a named computed categorical operation of the program."""
    n_tok = len(SPECIALS) + n_symbols
    order = _order(output)
    uses_indices = any(isinstance(s, Indices) for s in order)
    layout, token, one, position = base_layout(n_tok, max_seq_len, position=uses_indices)
    names: dict[int, str] = {}
    counters: Counter[str] = Counter()
    for sop in order:
        if isinstance(sop, Tokens):
            names[id(sop)] = token.name
        elif isinstance(sop, Indices):
            names[id(sop)] = position.name  # type: ignore[union-attr]
        else:
            kind = {"SelectorWidth": "selector_width", "SequenceMap": "sequence_map"}.get(type(sop).__name__,
                                                                                         type(sop).__name__.lower())
            counters[kind] += 1
            names[id(sop)] = sop.name or f"{kind}_{counters[kind]}"
    if len(set(names.values())) != len(names):
        raise CompileError(f"program {name!r}: two operations share a name: {sorted(names.values())}")
    var: dict[int, Variable] = {}
    value_sets: dict[int, tuple] = {}
    heads: list[Head] = []
    mlps: list[MLPBlock] = []

    def categorical(sop: SOp, what: str) -> Variable:
        v = var[id(sop)]
        if v.kind != "categorical":
            raise CompileError(f"program {name!r}: {what} reads {names[id(sop)]!r}, a numerical operation; a head or "
                               f"a SequenceMap reads categories: Map it to categories first")
        return v

    def selection(sel: Select, label: str) -> tuple[Variable, Variable, Callable]:
        keys, queries = categorical(sel.keys, label), categorical(sel.queries, label)
        at_bos = evaluate(sel.keys, [BOS])[0]
        chosen = [q for q in value_sets[id(sel.queries)] if sel.predicate(at_bos, q)]
        if chosen:
            raise CompileError(f"program {name!r}: {label}'s predicate selects the BOS position (key "
                               f"{at_bos!r} there) for queries {chosen}; exclude that key, the BOS is the default")
        return queries, keys, (lambda a, b, p=sel.predicate: p(b, a))  # select_head's predicate is (query, key)

    for sop in order:
        label = names[id(sop)]
        if isinstance(sop, Tokens):
            value_sets[id(sop)] = tuple(range(n_tok))
            var[id(sop)] = token
            continue
        if isinstance(sop, Indices):
            value_sets[id(sop)] = tuple(range(max_seq_len))
            var[id(sop)] = position  # type: ignore[assignment]
            continue
        if isinstance(sop, Map):
            values = tuple(dict.fromkeys(sop.f(v) for v in value_sets[id(sop.sop)]))
            value_sets[id(sop)] = values
            out = layout.numerical(label) if sop.numerical else layout.categorical(label, values)
            if var[id(sop.sop)].kind == "categorical":
                mlps.append(lookup_mlp(f"{label}_mlp", input=var[id(sop.sop)], output=out, table=sop.f))
            elif sop.numerical:
                raise CompileError(f"program {name!r}: {label} maps the numerical {names[id(sop.sop)]!r} to a number; "
                                   f"only numerical → categorical Maps compile (a discretising MLP)")
            elif len(value_sets[id(sop.sop)]) < 2:
                raise CompileError(f"program {name!r}: {label} reads {names[id(sop.sop)]!r}, which takes one value "
                                   f"only ({value_sets[id(sop.sop)]}); a constant needs no MLP")
            else:
                mlps.append(discretising_mlp(f"{label}_mlp", input=var[id(sop.sop)], points=value_sets[id(sop.sop)],
                                             output=out, f=sop.f))
        elif isinstance(sop, SequenceMap):
            a, b = categorical(sop.first, label), categorical(sop.second, label)
            if a is b:
                raise CompileError(f"program {name!r}: {label} reads {a.name!r} twice; use a Map")
            pairs = list(itertools.product(value_sets[id(sop.first)], value_sets[id(sop.second)]))
            values = tuple(dict.fromkeys(sop.f(x, y) for x, y in pairs))
            value_sets[id(sop)] = values
            out = layout.categorical(label, values)
            neurons = [Neuron(w_in=((a.dim(x), 1.0), (b.dim(y), 1.0)), bias=-1.0,
                              w_out=((out.dim(sop.f(x, y)), 1.0),), writes=label) for x, y in pairs]
            mlps.append(neuron_mlp(f"{label}_mlp", reads=(a, b), neurons=neurons))
        elif isinstance(sop, Aggregate):
            src = categorical(sop.sop, label)
            if sop.numerical:
                out = layout.numerical(label)
                value_map = float
                value_sets[id(sop)] = _means(value_sets[id(sop.sop)], max_seq_len)
            else:
                value_sets[id(sop)] = value_sets[id(sop.sop)]
                out = layout.categorical(label, value_sets[id(sop)])

                def value_map(v):
                    return v
            if isinstance(sop.selector, SelectAll):
                heads.append(mean_head(f"{label}_head", value=src, output=out, value_map=value_map))
            else:
                q, k, predicate = selection(sop.selector, label)
                heads.append(select_head(f"{label}_head", query=q, key=k, predicate=predicate, value=src, output=out,
                                         value_map=value_map, one=one, bos=(token, BOS)))
        elif isinstance(sop, SelectorWidth):
            if not isinstance(sop.selector, Select):
                raise CompileError(f"program {name!r}: {label}: SelectorWidth needs a Select (SelectAll's width is t + 1)")
            q, k, predicate = selection(sop.selector, label)
            frac = layout.numerical(f"{label}_bos_frac")
            heads.append(select_head(f"{label}_head", query=q, key=k, predicate=predicate, value=token, output=frac,
                                     value_map=lambda v: 1.0 if v == BOS else None, one=one, bos=(token, BOS),
                                     bos_score="equal"))
            value_sets[id(sop)] = tuple(range(max_seq_len))
            out = layout.categorical(label, value_sets[id(sop)])
            mlps.append(discretising_mlp(f"{label}_mlp", input=frac, points=[1.0 / (w + 1) for w in range(max_seq_len)],
                                         output=out, f=lambda x: round(1.0 / x) - 1))
        else:
            raise TypeError(f"not a RASP operation: {sop!r}")
        var[id(sop)] = out
    final = var[id(output)]
    if final.kind == "categorical":
        readout, output_values = readout_entries(final), final.values
    else:
        readout, output_values = ((final.dim(), 0, SCALE),), (final.name,)

    def rows(values: list) -> list[list[float]]:
        if final.kind == "numerical":
            return [[float(v)] for v in values]
        shares = [dict(v.shares) if isinstance(v, Mix) else {v: 1.0} for v in values]
        return [[share.get(u, 0.0) for u in output_values] for share in shares]

    def reference(token_ids: Sequence[int]) -> list[list[float]]:
        check_input(token_ids, n_tok)
        return rows(evaluate(output, token_ids))

    intervenable = None
    if intervene is not None:
        computed = {names[id(s)]: s for s in order if not isinstance(s, (Tokens, Indices))}
        if intervene not in computed or var[id(computed[intervene])].kind != "categorical" or \
                computed[intervene].name != intervene:
            raise CompileError(f"program {name!r}: intervene={intervene!r} must name (by its name=) a computed "
                               f"categorical operation; named ones: {sorted(s.name for s in computed.values() if s.name)}")

        def outputs(token_ids: Sequence[int], pos: int, value: Hashable) -> list[list[float]]:
            check_input(token_ids, n_tok)
            return rows(evaluate(output, token_ids, {intervene: {pos: value}}))

        intervenable = Intervenable(intervene, outputs)

    return Program(name=name, layout=layout, token=token, one=one, position=position, heads=tuple(heads),
                   mlps=tuple(mlps), readout=readout, output_values=tuple(output_values), max_seq_len=max_seq_len,
                   reference=reference, prompt_strata=prompt_strata, intervenable=intervenable)
