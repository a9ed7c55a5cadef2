"""Named residual subspaces: the basis-direction allocator of the craft layer.

The residual stream of a compiled transformer is a direct sum of named subspaces, as in tracr
(Lindner et al. 2023, "Tracr: Compiled Transformers as a Laboratory for Interpretability", §3,
whose variables are RASP's sequence operations, Weiss, Goldberg, Yahav 2021, "Thinking Like
Transformers"). A *categorical* variable with values v₁..v_k owns k orthonormal basis directions and
holds value v as the one-hot vector e_v; a *numerical* variable owns one direction and holds a real
number x as x·e. Each variable is written by exactly one component (embedding, head or MLP), so a
direction always means one thing.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Variable", "Layout", "ONE"]

ONE = "one"
"""Name of the constant variable (value 1 at every position, written by the token embedding)."""


@dataclass(frozen=True, kw_only=True)
class Variable:
    """A named residual subspace and the values it can hold."""

    name: str
    """Unique name (also the circuit node that holds it)."""
    kind: Literal["categorical", "numerical"]
    """Categorical: one direction per value (one-hot); numerical: one direction scaled by the value."""
    values: tuple[Hashable, ...]
    """The values of a categorical variable, in direction order; empty for a numerical one."""
    dims: tuple[int, ...]
    """The residual-stream directions the variable owns (one per value; one for a numerical variable)."""

    def dim(self, value: Hashable | None = None) -> int:
        """The direction of ``value`` (categorical) or the single direction (numerical, ``value=None``)."""
        if self.kind == "numerical":
            if value is not None:
                raise ValueError(f"numerical variable {self.name!r} has one direction; call dim() without a value")
            return self.dims[0]
        try:
            return self.dims[self.values.index(value)]
        except ValueError:
            raise ValueError(f"{value!r} is not a value of variable {self.name!r}; values: {self.values}") from None


class Layout:
    """Allocates orthonormal residual directions to named variables, in order of declaration."""

    def __init__(self) -> None:
        self._variables: dict[str, Variable] = {}
        self._n = 0

    def _add(self, name: str, kind: Literal["categorical", "numerical"], values: tuple, width: int) -> Variable:
        if name in self._variables:
            raise ValueError(f"variable {name!r} is already allocated; every variable needs a unique name")
        var = Variable(name=name, kind=kind, values=values, dims=tuple(range(self._n, self._n + width)))
        self._variables[name] = var
        self._n += width
        return var

    def categorical(self, name: str, values: Iterable[Hashable]) -> Variable:
        """A new categorical variable with one direction per value."""
        vals = tuple(values)
        if not vals or len(set(vals)) != len(vals):
            raise ValueError(f"categorical variable {name!r} needs distinct values, got {vals}")
        return self._add(name, "categorical", vals, len(vals))

    def numerical(self, name: str) -> Variable:
        """A new numerical variable with one direction."""
        return self._add(name, "numerical", (), 1)

    @property
    def variables(self) -> tuple[Variable, ...]:
        """All variables, in allocation order."""
        return tuple(self._variables.values())

    @property
    def width(self) -> int:
        """Number of directions allocated so far."""
        return self._n

    def __getitem__(self, name: str) -> Variable:
        return self._variables[name]
