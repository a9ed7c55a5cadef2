"""A compiled model's circuit as data: which variable each subspace holds, and who reads what.

The ground truth of a compiled transformer (tracr: Lindner et al. 2023, "Tracr: Compiled Transformers
as a Laboratory for Interpretability"; programs in the spirit of RASP, Weiss, Goldberg, Yahav 2021):
nodes are the variables (named residual subspaces) with the component that writes them, plus the
``logits`` node; an edge says that a component reads a source variable to write a target variable,
through its QK circuit (``qk``), its OV circuit (``ov``), an MLP (``mlp``) or the unembedding
(``readout``). The circuit round-trips through plain JSON (:meth:`Circuit.to_dict` / ``from_dict``).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["CircuitNode", "CircuitEdge", "CircuitComponent", "Circuit", "LOGITS"]

LOGITS = "logits"
"""Name of the output node (the unembedding's output)."""


@dataclass(frozen=True, kw_only=True)
class CircuitNode:
    """One variable of the residual stream (or the logits)."""

    variable: str
    """Variable name (unique)."""
    kind: Literal["categorical", "numerical", "logits"]
    """How the subspace holds its value."""
    values: tuple[Hashable, ...]
    """Categorical values in direction order (logits: the output values); empty when numerical."""
    dims: tuple[int, ...]
    """Residual directions the variable owns (logits: empty)."""
    component: str
    """The component that writes it: ``embed``, ``pos_embed``, a head or MLP name, or ``unembed``."""
    site: str
    """The hook site whose output carries it (``embed``, ``blocks.0.attn``, ``blocks.1.mlp``, ``unembed``)."""
    layer: int
    """Layer of the writer (−1 for embeddings, n_layers for the logits)."""


@dataclass(frozen=True, kw_only=True)
class CircuitEdge:
    """``component`` reads ``source`` to write ``target``."""

    source: str
    """Variable read."""
    target: str
    """Variable written."""
    component: str
    """The reading component."""
    kind: Literal["qk", "ov", "mlp", "readout"]
    """Through which path the source is read."""


@dataclass(frozen=True, kw_only=True)
class CircuitComponent:
    """Where a component's weights live in the transformer."""

    name: str
    """Component name."""
    kind: Literal["head", "mlp"]
    """Attention head or MLP neurons."""
    layer: int
    """Block index."""
    head: int | None
    """Head index within the block (heads only)."""
    neurons: tuple[int, int] | None
    """Half-open range of hidden-neuron indices within the block's MLP (MLPs only)."""


@dataclass(frozen=True, kw_only=True)
class Circuit:
    """The circuit a compiled transformer implements, exact by construction."""

    program: str
    """Name of the compiled program."""
    n_layers: int
    """Number of transformer blocks."""
    nodes: tuple[CircuitNode, ...]
    """Every variable (and the logits)."""
    edges: tuple[CircuitEdge, ...]
    """Every read of a variable by a component."""
    components: tuple[CircuitComponent, ...]
    """Every head and MLP block and where its weights are."""

    def node(self, variable: str) -> CircuitNode:
        """The node of ``variable``."""
        for n in self.nodes:
            if n.variable == variable:
                return n
        raise KeyError(f"circuit {self.program!r} has no variable {variable!r}; "
                       f"variables: {[n.variable for n in self.nodes]}")

    def component(self, name: str) -> CircuitComponent:
        """The component called ``name``."""
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(f"circuit {self.program!r} has no component {name!r}; "
                       f"components: {[c.name for c in self.components]}")

    def ancestors(self, variable: str = LOGITS, *, kinds: tuple[str, ...] = ("qk", "ov", "mlp", "readout")) -> set[str]:
        """Variables from which ``variable`` is reachable along edges of the given kinds."""
        seen: set[str] = set()
        frontier = [variable]
        while frontier:
            v = frontier.pop()
            for e in self.edges:
                if e.target == v and e.kind in kinds and e.source not in seen:
                    seen.add(e.source)
                    frontier.append(e.source)
        return seen

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Circuit:
        """Rebuild from :meth:`to_dict` output (lists back to tuples)."""
        try:
            nodes = tuple(CircuitNode(**{**n, "values": tuple(n["values"]), "dims": tuple(n["dims"])})
                          for n in data["nodes"])
            edges = tuple(CircuitEdge(**e) for e in data["edges"])
            comps = tuple(CircuitComponent(**{**c, "neurons": None if c["neurons"] is None else tuple(c["neurons"])})
                          for c in data["components"])
            return cls(program=data["program"], n_layers=data["n_layers"], nodes=nodes, edges=edges,
                       components=comps)
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a saved circuit (bad or missing field: {e}); save it with Circuit.to_dict") from None
