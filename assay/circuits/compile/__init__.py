"""Compiled transformers with known circuits: a craft layer (named residual subspaces, heads and MLPs
built from them), layer allocation, programs, and each model's circuit as data.

After tracr (Lindner et al. 2023, "Tracr: Compiled Transformers as a Laboratory for Interpretability")
and RASP (Weiss, Goldberg, Yahav 2021, "Thinking Like Transformers"), at tracr's craft level, with a small RASP
front end (:mod:`~assay.circuits.compile.rasp`).
"""

from assay.circuits.compile.assemble import (
    CompileError,
    Program,
    PromptStrata,
    allocate_layers,
    compile_program,
)
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
from assay.circuits.compile.circuit import LOGITS, Circuit, CircuitComponent, CircuitEdge, CircuitNode
from assay.circuits.compile.compiled import CompiledModel, load_compiled, save_compiled, without_component
from assay.circuits.compile.features import EMBED, EdgeRecovery, edge_recovery, exact_bases
from assay.circuits.compile.programs import (
    DECOY,
    PROGRAMS,
    SCALE,
    dyck1,
    histogram,
    induction,
    previous_token,
    repeated_token,
    two_hop,
    with_decoy,
)
from assay.circuits.compile.rasp import compile_rasp, evaluate
from assay.circuits.compile.space import ONE, Layout, Variable

__all__ = [
    "CompileError", "Program", "PromptStrata", "allocate_layers", "compile_program", "Head", "MLPBlock", "Neuron",
    "discretising_mlp", "lookup_mlp", "mean_head", "neuron_mlp", "select_head", "LOGITS", "Circuit",
    "CircuitComponent", "CircuitEdge", "CircuitNode", "CompiledModel", "load_compiled", "save_compiled",
    "without_component", "EMBED", "EdgeRecovery", "edge_recovery", "exact_bases",
    "DECOY", "PROGRAMS", "SCALE", "dyck1", "histogram", "induction", "previous_token", "repeated_token", "two_hop", "with_decoy", "ONE", "Layout", "Variable",
    "compile_rasp", "evaluate",
]
