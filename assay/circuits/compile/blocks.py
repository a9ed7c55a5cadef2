"""Craft-layer components: attention heads and ReLU MLPs built from named residual subspaces.

The construction follows tracr's craft level (Lindner et al. 2023, "Tracr: Compiled Transformers as
a Laboratory for Interpretability", §3.2; RASP's Select/Aggregate and Map, Weiss, Goldberg, Yahav
2021, "Thinking Like Transformers"):

- a *selection head* scores query value a against key value b with the bilinear form
  ``score = coldness · [predicate(a, b)]`` and always gives the BOS position ``coldness/2`` (so BOS
  is attended only when nothing else is selected: the default) or ``coldness`` (BOS counted among the
  selected: a selector-width head); its OV circuit maps each value direction to an output direction;
- a *mean head* has a zero QK circuit: a uniform causal average of its values;
- a *lookup-table MLP* turns a one-hot categorical input into a one-hot output with one ReLU per
  input value, ``out = Σ_a ReLU(x_a) e_{f(a)}``, exact for one-hot inputs;
- a *discretising MLP* maps a numerical variable that takes finitely many values x₀ < … < x_n to a
  categorical one with steps ``s_i = ReLU(L(x − b_i) + ½) − ReLU(L(x − b_i) − ½)`` at the midpoints
  b_i and a constant neuron, exact at the x_i when L·min gap ≥ 1.

Weights are kept sparse, as ``(direction, direction, weight)`` entries, so a component does not
depend on the final width of the residual stream; :mod:`assay.circuits.compile.assemble` writes
them into a :class:`~assay.models.transformer.Transformer`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

from assay.circuits.compile.space import Variable

__all__ = ["Head", "Neuron", "MLPBlock", "select_head", "mean_head", "lookup_mlp", "discretising_mlp",
           "neuron_mlp"]

Entry = tuple[int, int, float]


@dataclass(frozen=True, kw_only=True)
class Head:
    """One attention head, as sparse QK and OV circuits over residual directions."""

    name: str
    """Component name (unique in the program)."""
    reads_qk: tuple[str, ...]
    """Variables the QK circuit reads (query side, then key side)."""
    reads_ov: tuple[str, ...]
    """Variables the OV circuit reads."""
    writes: str
    """The variable the head writes."""
    qk: tuple[Entry, ...]
    """(query direction, key direction, score) entries of the bilinear form; empty for a uniform head."""
    ov: tuple[Entry, ...]
    """(value direction, output direction, weight) entries."""


@dataclass(frozen=True, kw_only=True)
class Neuron:
    """One ReLU neuron: ``ReLU(Σ w_in·x + bias)`` written along ``w_out``."""

    w_in: tuple[tuple[int, float], ...]
    """(direction, weight) read from the residual stream."""
    bias: float
    """Pre-activation bias."""
    w_out: tuple[tuple[int, float], ...]
    """(direction, weight) written to the residual stream."""
    writes: str
    """The variable this neuron writes."""


@dataclass(frozen=True, kw_only=True)
class MLPBlock:
    """A set of ReLU neurons in one MLP layer."""

    name: str
    """Component name (unique in the program)."""
    reads: tuple[str, ...]
    """Variables the neurons read."""
    writes: tuple[str, ...]
    """Variables the neurons write."""
    neurons: tuple[Neuron, ...]
    """The hidden neurons."""


def _out_entry(output: Variable, value: Hashable | float) -> tuple[int, float]:
    if output.kind == "numerical":
        return output.dim(), float(value)  # type: ignore[arg-type]
    return output.dim(value), 1.0


def select_head(
    name: str, *, query: Variable, key: Variable, predicate: Callable[[Hashable, Hashable], bool],
    value: Variable, output: Variable, value_map: Callable[[Hashable], Hashable | float | None],
    one: Variable, bos: tuple[Variable, Hashable], bos_score: Literal["half", "equal"] = "half",
    coldness: float = 100.0,
) -> Head:
    """A head that attends (uniformly) to the keys whose value satisfies ``predicate(query, key)``.

    ``bos`` = (token variable, BOS value) marks the BOS position; ``one`` is the constant variable the
    BOS score is read through. The predicate must not select the BOS position itself (its key value
    is whatever the key variable holds at position 0). ``value_map(v)`` is the output value (categorical
    output) or number (numerical output) written for value ``v``; None writes nothing.
    """
    qk = [(query.dim(a), key.dim(b), coldness) for a in query.values for b in key.values if predicate(a, b)]
    token, bos_value = bos
    qk.append((one.dim(), token.dim(bos_value), coldness / 2 if bos_score == "half" else coldness))
    return Head(name=name, reads_qk=(query.name, key.name, one.name, token.name), reads_ov=(value.name,),
                writes=output.name, qk=tuple(qk), ov=_ov(value, output, value_map))


def mean_head(
    name: str, *, value: Variable, output: Variable, value_map: Callable[[Hashable], Hashable | float | None],
) -> Head:
    """A head with a zero QK circuit: the uniform causal mean of ``value_map(value)``."""
    return Head(name=name, reads_qk=(), reads_ov=(value.name,), writes=output.name, qk=(),
                ov=_ov(value, output, value_map))


def _ov(value: Variable, output: Variable, value_map: Callable) -> tuple[Entry, ...]:
    if value.kind != "categorical":
        raise ValueError(f"head value {value.name!r} must be categorical (one direction per value)")
    entries = []
    for v in value.values:
        mapped = value_map(v)
        if mapped is not None:
            d_out, w = _out_entry(output, mapped)
            if w != 0.0:
                entries.append((value.dim(v), d_out, w))
    return tuple(entries)


def lookup_mlp(
    name: str, *, input: Variable, output: Variable, table: Callable[[Hashable], Hashable | float | None],
) -> MLPBlock:
    """Lookup-table MLP: one ReLU per input value ``a`` writing ``table(a)`` (None: nothing)."""
    if input.kind != "categorical":
        raise ValueError(f"lookup_mlp input {input.name!r} must be categorical")
    neurons = []
    for a in input.values:
        mapped = table(a)
        if mapped is not None:
            neurons.append(Neuron(w_in=((input.dim(a), 1.0),), bias=0.0, w_out=(_out_entry(output, mapped),),
                                  writes=output.name))
    return MLPBlock(name=name, reads=(input.name,), writes=(output.name,), neurons=tuple(neurons))


def discretising_mlp(
    name: str, *, input: Variable, points: Sequence[float], output: Variable,
    f: Callable[[float], Hashable],
) -> MLPBlock:
    """Numerical → categorical MLP, exact at ``points`` (the finitely many values ``input`` takes)."""
    if input.kind != "numerical" or output.kind != "categorical":
        raise ValueError(f"discretising_mlp maps a numerical variable to a categorical one, got "
                         f"{input.name!r} ({input.kind}) → {output.name!r} ({output.kind})")
    xs = sorted(set(float(p) for p in points))
    if len(xs) < 2:
        raise ValueError(f"discretising_mlp {name!r} needs at least two distinct points, got {xs}")
    slope = 1.0 / min(b - a for a, b in zip(xs, xs[1:], strict=False)) * 2.0
    d_in = input.dim()
    neurons = [Neuron(w_in=(), bias=1.0, w_out=((output.dim(f(xs[0])), 1.0),), writes=output.name)]
    for lo, hi in zip(xs, xs[1:], strict=False):
        b = (lo + hi) / 2
        up, down = output.dim(f(hi)), output.dim(f(lo))
        for offset, sign in ((0.5, 1.0), (-0.5, -1.0)):  # s = ReLU(L(x−b)+½) − ReLU(L(x−b)−½)
            neurons.append(Neuron(w_in=((d_in, slope),), bias=-slope * b + offset,
                                  w_out=((up, sign), (down, -sign)), writes=output.name))
    return MLPBlock(name=name, reads=(input.name,), writes=(output.name,), neurons=tuple(neurons))


def neuron_mlp(name: str, *, reads: Sequence[Variable], neurons: Sequence[Neuron]) -> MLPBlock:
    """An MLP from hand-written neurons (each names the variable it writes)."""
    writes = tuple(dict.fromkeys(n.writes for n in neurons))
    return MLPBlock(name=name, reads=tuple(v.name for v in reads), writes=writes, neurons=tuple(neurons))
