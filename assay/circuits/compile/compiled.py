"""A compiled transformer together with its circuit, saved as one artifact.

The model is assay's tiny :class:`~assay.models.transformer.Transformer` with hand-set weights
(tracr's craft level: Lindner et al. 2023, "Tracr: Compiled Transformers as a Laboratory for
Interpretability"); the circuit (:class:`~assay.circuits.compile.circuit.Circuit`) is its ground
truth. The artifact holds the model config, the weights and the circuit (as JSON metadata).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from assay.artifact import ArtifactError, load_artifact, save_artifact
from assay.circuits.compile.circuit import Circuit
from assay.models.transformer import Transformer, TransformerConfig

__all__ = ["CompiledModel", "save_compiled", "load_compiled", "without_component", "KIND"]

KIND = "circuits.compiled"
"""Artifact kind of a saved compiled model."""


@dataclass(frozen=True, kw_only=True, eq=False)
class CompiledModel:
    """A compiled transformer and the circuit it implements."""

    model: Transformer
    """The transformer (``norm="none"``, ``act="relu"``, eager attention), in eval mode."""
    circuit: Circuit
    """Its circuit: variables, components, edges."""
    output_values: tuple
    """What each logit index means (the program's output values); logits past them are always 0."""
    reference: Callable[[Sequence[int]], list[list[float]]] | None = None
    """The program's pure-Python meaning (see ``Program.reference``); None after loading from disk."""


def save_compiled(path: str | Path, compiled: CompiledModel) -> Path:
    """Save model weights, config and circuit as an artifact folder."""
    return save_artifact(path, kind=KIND, config=compiled.model.config, tensors=compiled.model.state_dict(),
                         meta={"circuit": compiled.circuit.to_dict(), "output_values": list(compiled.output_values)})


def load_compiled(path: str | Path) -> CompiledModel:
    """Load what :func:`save_compiled` wrote."""
    art = load_artifact(path, kind=KIND, config_cls=TransformerConfig)
    if "circuit" not in art.meta:
        raise ArtifactError(f"{path}: a compiled model must carry its circuit; this artifact has none")
    model = Transformer(art.config)
    model.load_state_dict(art.tensors["weights"])
    return CompiledModel(model=model.eval(), circuit=Circuit.from_dict(art.meta["circuit"]),
                         output_values=tuple(art.meta.get("output_values", ())))


def without_component(compiled: CompiledModel, name: str) -> Transformer:
    """A copy of the model with component ``name`` zeroed: a head's output columns, or an MLP block's
    output weights (its neurons then write nothing)."""
    comp = compiled.circuit.component(name)
    model = copy.deepcopy(compiled.model)
    block = model.blocks[comp.layer]
    with torch.no_grad():
        if comp.kind == "head":
            dh = model.config.d_head
            block.attn.out.weight[:, comp.head * dh:(comp.head + 1) * dh] = 0.0
        else:
            lo, hi = comp.neurons
            block.mlp.fc_out.weight[:, lo:hi] = 0.0
    return model
