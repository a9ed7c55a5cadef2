"""Free interventions on a compiled variable, with the outputs the program says they must cause.

Spec circuits.md §4.3 A5 (second half), after tracr (Lindner et al. 2023, "Tracr: Compiled Transformers as a
Laboratory for Interpretability"): overwrite one variable of the residual stream at one position with
another of its values, let the model run on (attention recomputed), and compare the outputs at that position
with the program's outputs for that value. A RASP program names its variable and gets its outputs from its own
meaning (:class:`~assay.circuits.compile.assemble.Intervenable`); the hand-written ones have one each:

- ``dyck1``: the depth ``d/(t+1)`` := d'/(t+1), d' ∈ [−2, 3] → the valid next tokens for depth d';
- ``histogram``: the selector width ``1/(w+1)`` := 1/(w'+1) → count w';
- ``two_hop``: ``hop1`` := b → the second hop's answer g(b) = n − 1 − b;
- ``previous_token``: ``prev`` := v → answer v;
- ``induction``: ``prev`` at position s := v (s drawn, read at every later position) → every later query of
  token v copies token s, as the program computes with prev[s] = v.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from assay import hooks
from assay.circuits.compile.assemble import Program
from assay.circuits.compile.compiled import CompiledModel
from assay.worlds.vocab import BOS, EOS, SPECIALS

__all__ = ["FreeIntervention", "free_interventions", "INTERVENED"]

N_SPECIAL = len(SPECIALS)

INTERVENED = {"dyck1": "depth_frac", "histogram": "bos_frac", "two_hop": "hop1", "previous_token": "prev",
              "induction": "prev"}
"""Program name → the variable its free interventions overwrite."""


class FreeIntervention(NamedTuple):
    """Outputs after the interventions and what the program says they must be."""

    logits: torch.Tensor
    """The model's logits after intervening, [n, T, n_outputs]."""
    expected: torch.Tensor
    """The program's outputs with the intervened value (reference units), [n, T, n_outputs]."""
    scored: torch.Tensor
    """Positions the intervention determines, bool [n, T]."""


def _same_position(program: Program, row: list[int], p: int, v) -> list[float]:
    n_out = len(program.output_values)
    if program.name == "dyck1":
        o, c = N_SPECIAL, N_SPECIAL + 1
        valid = {o} | ({c} if v > 0 else set()) | ({EOS} if v <= 0 and row[p] in (o, c) else set())
        return [1.0 if k in valid else -1.0 for k in range(n_out)]
    n_symbols = len(program.token.values) - N_SPECIAL
    answer = N_SPECIAL + n_symbols - 1 - v if program.name == "two_hop" else v  # histogram, previous_token: v
    return [1.0 if k == answer else 0.0 for k in range(n_out)]


def _induction(row: list[int], s: int, v: int, n_out: int) -> list[list[float]]:
    prev_of = [row[max(k - 1, 0)] for k in range(len(row))]
    prev_of[s] = v
    out = []
    for t, q in enumerate(row):
        sel = [k for k in range(t + 1) if q >= N_SPECIAL and prev_of[k] == q]
        out.append([float(u == BOS) for u in range(n_out)] if not sel
                   else [sum(row[k] == u for k in sel) / len(sel) for u in range(n_out)])
    return out


def _overwritten(compiled: CompiledModel, node, inputs: torch.Tensor, pos: torch.Tensor, n_out: int, *,
                 picks: list[int] | None = None, written: torch.Tensor | None = None) -> torch.Tensor:
    """The model's logits [n, T, n_out] with ``node`` overwritten at ``pos[r]`` of each row r: by its value
    ``node.values[picks[r]]`` (categorical: that one-hot) or by the number ``written[r]`` (numerical)."""
    rows = torch.arange(inputs.shape[0])

    def overwrite(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        if written is not None:
            h[rows, pos, node.dims[0]] = written.to(h.dtype)
        else:
            block = h[rows, pos]
            block[:, list(node.dims)] = 0.0
            block[rows, torch.tensor([node.dims[k] for k in picks])] = 1.0
            h[rows, pos] = block
        return h

    with torch.no_grad(), hooks.patch(compiled.model, {node.site: overwrite}):
        return compiled.model(inputs)[..., :n_out]


def _from_meaning(program: Program, compiled: CompiledModel, inputs: torch.Tensor,
                  generator: torch.Generator) -> FreeIntervention:
    """A program's :class:`~assay.circuits.compile.assemble.Intervenable`: its categorical variable set to a drawn
    value at a drawn position; the program's outputs from its own meaning with that value, scored from there on."""
    variable, outputs = program.intervenable  # type: ignore[misc]
    node = compiled.circuit.node(variable)
    n, t_len = inputs.shape
    pos = torch.randint(1, t_len, (n,), generator=generator)
    picks = torch.randint(0, len(node.values), (n,), generator=generator).tolist()
    logits = _overwritten(compiled, node, inputs, pos, len(program.output_values), picks=picks)
    expected = torch.tensor([outputs(row, p, node.values[k]) for row, p, k in
                             zip(inputs.tolist(), pos.tolist(), picks, strict=True)], dtype=torch.float64)
    scored = torch.arange(t_len)[None, :] >= pos[:, None]
    return FreeIntervention(logits, expected, scored)


def free_interventions(program: Program, compiled: CompiledModel, inputs: torch.Tensor, *,
                       generator: torch.Generator) -> FreeIntervention:
    """One free intervention per input row [n, T] (BOS + symbols) at a drawn position and value: on the program's
    :attr:`~assay.circuits.compile.assemble.Program.intervenable` variable if it has one (RASP programs), else on
    :data:`INTERVENED`'s."""
    if program.intervenable is not None:
        return _from_meaning(program, compiled, inputs, generator)
    if program.name not in INTERVENED:
        raise ValueError(f"no free intervention is defined for program {program.name!r}; defined: {sorted(INTERVENED)}")
    node = compiled.circuit.node(INTERVENED[program.name])
    n, t_len = inputs.shape
    n_out = len(program.output_values)
    pos = torch.randint(1, t_len, (n,), generator=generator)
    if program.name == "dyck1":
        values = torch.randint(-2, 4, (n,), generator=generator)
        written = values.double() / (pos + 1).double()
    elif program.name == "histogram":
        values = torch.randint(0, program.max_seq_len, (n,), generator=generator)
        written = 1.0 / (values + 1).double()
    else:
        choices = torch.tensor(list(node.values))
        values = choices[torch.randint(0, len(choices), (n,), generator=generator)]
        written = None
    picks = None if written is not None else [node.values.index(int(v)) for v in values]
    logits = _overwritten(compiled, node, inputs, pos, n_out, picks=picks, written=written)
    expected = torch.zeros(n, t_len, n_out, dtype=torch.float64)
    scored = torch.zeros(n, t_len, dtype=torch.bool)
    for r, (row, p, v) in enumerate(zip(inputs.tolist(), pos.tolist(), values.tolist(), strict=True)):
        if program.name == "induction":
            expected[r] = torch.tensor(_induction(row, p, v, n_out))
            scored[r, p:] = True
        else:
            expected[r] = torch.tensor(program.reference(row), dtype=torch.float64)
            expected[r, p] = torch.tensor(_same_position(program, row, p, v))
            scored[r, p] = True
    return FreeIntervention(logits, expected, scored)
