"""Compile a craft program into assay's tiny transformer: layer allocation, then weights.

A :class:`Program` is a set of named residual variables (:mod:`~assay.circuits.compile.space`) and
components (:mod:`~assay.circuits.compile.blocks`) that read and write them. Layer allocation is
tracr's longest path (Lindner et al. 2023, "Tracr: Compiled Transformers as a Laboratory for
Interpretability", §3.3): sublayer 2l is layer l's attention, 2l + 1 its MLP; a head sits at the
first attention sublayer after everything it reads is written, an MLP at the first MLP sublayer.
The weights go into a :class:`~assay.models.transformer.Transformer` with ``norm="none"``,
``act="relu"`` and eager attention. A head's QK form ``x_q W x_kᵀ`` is factored through the key
directions it reads (W_K selects them, W_Q = W[:, keys]·√d_head) and its OV map through the value
directions (W_V selects them, W_O = OV[values, :]), so d_head = the most directions any head reads
on one side. The circuit data (:class:`~assay.circuits.compile.circuit.Circuit`) is read off the
same sparse entries the weights are written from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from assay.circuits.compile.blocks import Head, MLPBlock
from assay.circuits.compile.circuit import LOGITS, Circuit, CircuitComponent, CircuitEdge, CircuitNode
from assay.circuits.compile.compiled import CompiledModel
from assay.circuits.compile.space import Layout, Variable
from assay.models.transformer import Transformer, TransformerConfig

__all__ = ["Program", "PromptStrata", "Intervenable", "CompileError", "allocate_layers", "compile_program"]


class CompileError(ValueError):
    """A program that cannot be compiled as asked (too few layers, a variable nobody writes, ...)."""


class PromptStrata(NamedTuple):
    """The states of a program after a prompt's last token that decide which of its circuit edges the prompt's
    attribution graph can show (an edge into the logits needs its source active at the last position): prompts
    drawn one per state exercise every circuit edge together."""

    state: Callable[[Sequence[int]], Hashable]
    """The state of a token-id sequence (BOS first), by the program's definition."""
    values: tuple[Hashable, ...]
    """Every state."""


class Intervenable(NamedTuple):
    """A categorical variable that free interventions may overwrite, and what the program then outputs."""

    variable: str
    """The variable's name."""
    outputs: Callable[[Sequence[int], int, Hashable], list[list[float]]]
    """For a token-id sequence (BOS first), a position p and a value v: the program's outputs (reference units, a
    row per position) with ``variable`` := v at p and everything after it recomputed; positions ≥ p are scored."""


@dataclass(frozen=True, kw_only=True, eq=False)
class Program:
    """A craft program: variables, components and the readout."""

    name: str
    """Program name (recorded in the circuit)."""
    layout: Layout
    """The residual variables."""
    token: Variable
    """The token variable, written by the embedding; its values must be the token ids 0..vocab−1."""
    one: Variable
    """The constant variable (1 at every position), written by the embedding."""
    position: Variable | None
    """The position variable (values 0..max_seq_len−1), written by the position embedding, or None."""
    heads: tuple[Head, ...]
    """Attention heads."""
    mlps: tuple[MLPBlock, ...]
    """MLP blocks."""
    readout: tuple[tuple[int, int, float], ...]
    """(residual direction, output index, weight) entries of the unembedding."""
    output_values: tuple
    """What each output index (logit) means."""
    max_seq_len: int
    """Context length (BOS included)."""
    reference: Callable[[Sequence[int]], list[list[float]]]
    """The program's meaning in pure Python: for a token-id sequence (BOS first), the intended logits per
    position divided by the readout scale (one row of len(output_values) per position)."""
    prompt_strata: PromptStrata | None = None
    """How graph prompts must be drawn to exercise every circuit edge; None: any one prompt (BOS + at least one
    symbol) exercises every edge."""
    intervenable: Intervenable | None = None
    """The variable free interventions overwrite and the outputs they must cause (a RASP program's, from its
    meaning); None: :data:`~assay.circuits.compile.interventions.INTERVENED` names it for the hand-written programs."""


def _embedded(program: Program) -> dict[str, str]:
    out = {program.token.name: "embed", program.one.name: "embed"}
    if program.position is not None:
        out[program.position.name] = "pos_embed"
    return out


def allocate_layers(program: Program) -> dict[str, int]:
    """Sublayer of every component (2l: attention of layer l, 2l + 1: its MLP), by longest path."""
    embedded = _embedded(program)
    comps: dict[str, Head | MLPBlock] = {c.name: c for c in (*program.heads, *program.mlps)}
    if len(comps) != len(program.heads) + len(program.mlps):
        raise CompileError(f"program {program.name!r}: component names must be unique")
    writer: dict[str, str] = {}
    for c in comps.values():
        for v in (c.writes,) if isinstance(c, Head) else c.writes:
            if v in writer or v in embedded:
                raise CompileError(f"program {program.name!r}: variable {v!r} is written twice "
                                   f"({writer.get(v, embedded.get(v))} and {c.name}); give each output its own variable")
            writer[v] = c.name
    sub: dict[str, int] = {}

    def place(name: str, stack: tuple[str, ...]) -> int:
        if name in sub:
            return sub[name]
        if name in stack:
            raise CompileError(f"program {program.name!r}: components form a cycle: {' → '.join((*stack, name))}")
        c = comps[name]
        reads = (*c.reads_qk, *c.reads_ov) if isinstance(c, Head) else c.reads
        latest = -1
        for v in reads:
            if v in embedded:
                continue
            if v not in writer:
                raise CompileError(f"program {program.name!r}: {name} reads {v!r}, which no component writes")
            latest = max(latest, place(writer[v], (*stack, name)))
        s = latest + 1
        if (s % 2 == 1) == isinstance(c, Head):  # heads on even sublayers, MLPs on odd ones
            s += 1
        sub[name] = s
        return s

    for name in comps:
        place(name, ())
    return sub


def compile_program(program: Program, *, n_layers: int | None = None) -> CompiledModel:
    """Compile ``program`` into a transformer with ``n_layers`` blocks (None: as few as it needs)."""
    sub = allocate_layers(program)
    needed = max((s // 2 + 1 for s in sub.values()), default=1)
    if n_layers is None:
        n_layers = needed
    if n_layers < needed:
        chain = sorted(sub, key=sub.get)  # type: ignore[arg-type]
        raise CompileError(
            f"program {program.name!r} needs {needed} layers but n_layers={n_layers} was given "
            f"(components by sublayer: {', '.join(f'{c}@{sub[c]}' for c in chain)}); pass n_layers >= {needed}"
        )
    heads_at: dict[int, list[Head]] = {layer: [] for layer in range(n_layers)}
    mlps_at: dict[int, list[MLPBlock]] = {layer: [] for layer in range(n_layers)}
    for h in program.heads:
        heads_at[sub[h.name] // 2].append(h)
    for m in program.mlps:
        mlps_at[sub[m.name] // 2].append(m)
    n_heads = max([1, *(len(v) for v in heads_at.values())])
    need_dh = max([1] + [max(len({k for _, k, _ in h.qk}), len({v for v, _, _ in h.ov})) for h in program.heads])
    d_model = n_heads * math.ceil(max(program.layout.width, n_heads * need_dh) / n_heads)
    d_mlp = max([1, *(sum(len(m.neurons) for m in v) for v in mlps_at.values())])
    vocab = max(len(program.token.values), len(program.output_values))
    if program.token.values != tuple(range(len(program.token.values))):
        raise CompileError(f"program {program.name!r}: the token variable's values must be the ids 0..n−1")
    cfg = TransformerConfig(vocab_size=vocab, n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_mlp=d_mlp,
                            context=program.max_seq_len, norm="none", act="relu", attn_impl="eager")
    model = Transformer(cfg)
    components = _write_weights(model, program, heads_at, mlps_at)
    circuit = Circuit(program=program.name, n_layers=n_layers, nodes=_nodes(program, sub, n_layers),
                      edges=_edges(program), components=tuple(components))
    return CompiledModel(model=model.eval(), circuit=circuit, output_values=tuple(program.output_values),
                         reference=program.reference)


@torch.no_grad()
def _write_weights(model: Transformer, program: Program, heads_at: dict, mlps_at: dict) -> list[CircuitComponent]:
    for p in model.parameters():
        p.zero_()
    cfg = model.config
    for tok in program.token.values:
        model.embed.weight[tok, program.token.dim(tok)] = 1.0
        model.embed.weight[tok, program.one.dim()] = 1.0
    if program.position is not None:
        for pos in program.position.values:
            model.pos_embed.weight[pos, program.position.dim(pos)] = 1.0
    for d, o, w in program.readout:
        model.unembed.weight[o, d] += w
    components = []
    dh, big = cfg.d_head, cfg.d_model
    for layer in range(cfg.n_layers):
        attn, mlp = model.blocks[layer].attn, model.blocks[layer].mlp
        for h, head in enumerate(heads_at[layer]):
            keys = sorted({k for _, k, _ in head.qk})
            vals = sorted({v for v, _, _ in head.ov})
            base = h * dh
            for j, d in enumerate(keys):
                attn.qkv.weight[big + base + j, d] = 1.0
            for q, k, s in head.qk:
                attn.qkv.weight[base + keys.index(k), q] += s * math.sqrt(dh)
            for j, d in enumerate(vals):
                attn.qkv.weight[2 * big + base + j, d] = 1.0
            for v, o, w in head.ov:
                attn.out.weight[o, base + vals.index(v)] += w
            components.append(CircuitComponent(name=head.name, kind="head", layer=layer, head=h, neurons=None))
        start = 0
        for block in mlps_at[layer]:
            for i, n in enumerate(block.neurons, start):
                for d, w in n.w_in:
                    mlp.fc_in.weight[i, d] += w
                mlp.fc_in.bias[i] = n.bias
                for d, w in n.w_out:
                    mlp.fc_out.weight[d, i] += w
            components.append(CircuitComponent(name=block.name, kind="mlp", layer=layer, head=None,
                                               neurons=(start, start + len(block.neurons))))
            start += len(block.neurons)
    return components


def _nodes(program: Program, sub: dict[str, int], n_layers: int) -> tuple[CircuitNode, ...]:
    embedded = _embedded(program)
    writer = {h.writes: (h.name, "attn", sub[h.name]) for h in program.heads}
    writer |= {v: (m.name, "mlp", sub[m.name]) for m in program.mlps for v in m.writes}
    nodes = []
    for var in program.layout.variables:
        if var.name in embedded:
            comp, site, layer = embedded[var.name], embedded[var.name], -1
        elif var.name in writer:
            comp, kind, s = writer[var.name]
            layer = s // 2
            site = f"blocks.{layer}.{kind}"
        else:
            raise CompileError(f"program {program.name!r}: variable {var.name!r} is allocated but never written")
        nodes.append(CircuitNode(variable=var.name, kind=var.kind, values=var.values, dims=var.dims,
                                 component=comp, site=site, layer=layer))
    nodes.append(CircuitNode(variable=LOGITS, kind="logits", values=tuple(program.output_values), dims=(),
                             component="unembed", site="unembed", layer=n_layers))
    return tuple(nodes)


def _edges(program: Program) -> tuple[CircuitEdge, ...]:
    owner = {d: v.name for v in program.layout.variables for d in v.dims}
    edges: dict[tuple, None] = {}
    for h in program.heads:
        for q, k, _ in h.qk:
            edges[(owner[q], h.writes, h.name, "qk")] = None
            edges[(owner[k], h.writes, h.name, "qk")] = None
        for v, _, _ in h.ov:
            edges[(owner[v], h.writes, h.name, "ov")] = None
    for m in program.mlps:
        for n in m.neurons:
            for d, w in n.w_in:
                if w != 0.0:
                    edges[(owner[d], n.writes, m.name, "mlp")] = None
    for d, _, w in program.readout:
        if w != 0.0:
            edges[(owner[d], LOGITS, "unembed", "readout")] = None
    return tuple(CircuitEdge(source=s, target=t, component=c, kind=k) for s, t, c, k in edges)
