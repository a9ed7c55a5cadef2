"""Programs compiled into transformers: previous-token copy, Dyck-1 balance, induction, histogram, two-hop by
hand at the craft level; a duplicate-token detector written in RASP.

Each builder returns a :class:`~assay.circuits.compile.assemble.Program` whose ``reference`` is the
program's meaning in pure Python; tests check the compiled model against it exhaustively. The
constructions are tracr's (Lindner et al. 2023, "Tracr: Compiled Transformers as a Laboratory for
Interpretability": ``make_hist``, ``shuffle_dyck``) written at the craft level, with RASP semantics
(Weiss, Goldberg, Yahav 2021, "Thinking Like Transformers"): a selection that selects nothing reads
BOS. Token ids follow :mod:`assay.worlds.vocab` (PAD 0, BOS 1, EOS 2, SEP 3, symbols from 4); every
input starts with BOS and holds no other BOS.

- ``previous_token``: out[t] = token[t−1] (out[0] = BOS). One head, positional QK. 1 layer.
- ``dyck1``: the valid next tokens of Dyck-1 given the depth d_t = #o − #c (the labels of
  :class:`~assay.worlds.dyck.DyckWorld` with k = 1): ``o`` always, ``c`` iff d_t > 0, EOS iff d_t ≤ 0
  and token t is a bracket; logit +S if valid, −S if not. A uniform head writes d_t/(t+1); an MLP
  thresholds it (slope 2·max_seq_len, exact because |d_t/(t+1)| ≥ 1/max_seq_len when d_t ≠ 0). The
  ``eos_ok`` neurons AND the depth with "token t is a bracket" (a special token vetoes them); how their
  constant is split between the token's weights and the bias (``bracket_weight``) does not change the
  function but decides what their attribution-graph edges show (docs/circuits.md, A3). Its graph prompts
  are stratified by the sign of the final depth (``prompt_strata``): only a prompt ending above 0 shows
  ``close_ok`` → logits, only one ending below 0 ``eos_ok``'s edges from the depth. 1 layer.
- ``induction``: layer 0 copies token[t−1] into ``prev``; layer 1 attends to the positions s with
  prev[s] = token[t] and copies token[s] (the mean one-hot if several match; BOS if none). 2 layers.
- ``histogram``: out[t] = #{1 ≤ s ≤ t : token[s] = token[t]} (0 at non-symbols). A head over the
  matches plus BOS writes 1/(w+1) (selector width); a discretising MLP inverts it. 1 layer.
- ``repeated_token``: out[t] = [token[t] = token[t−1]] (False at position 1, whose previous token is BOS), written
  in RASP and compiled by :func:`~assay.circuits.compile.rasp.compile_rasp` (one head, one MLP over (token, prev)
  pairs). 1 layer.
- ``two_hop``: out[t] = g(f(token[t])) for symbols (no output at specials), f(a) = a + 1 and
  g(b) = n − 1 − b on symbol indices mod n: two lookup-table MLPs in a row, A → B → C (the multi-hop
  circuit of spec circuits.md §4.3 A6). 2 layers.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence

from assay.circuits.compile.assemble import Program, PromptStrata
from assay.circuits.compile.blocks import (
    Neuron,
    discretising_mlp,
    lookup_mlp,
    mean_head,
    neuron_mlp,
    select_head,
)
from assay.circuits.compile.program_parts import N_SPECIAL, SCALE, base_layout, check_input, readout_entries
from assay.circuits.compile.rasp import Aggregate, Select, SequenceMap, compile_rasp, indices, tokens
from assay.circuits.compile.space import Variable
from assay.worlds.vocab import BOS, EOS

__all__ = ["SCALE", "previous_token", "dyck1", "eos_bracket_weight", "induction", "histogram", "two_hop", "repeated_token", "with_decoy", "DECOY", "PROGRAMS"]


def _one_hot(i: int, n: int) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(n)]


def _is_symbol(v) -> bool:
    return v >= N_SPECIAL


def _prev_head(token: Variable, one: Variable, pos: Variable, prev: Variable):
    return select_head("prev_token_head", query=pos, key=pos, predicate=lambda a, b: b == a - 1 and b >= 1,
                       value=token, output=prev, value_map=lambda v: v, one=one, bos=(token, BOS))


def previous_token(*, n_symbols: int = 3, max_seq_len: int = 8) -> Program:
    """Copy the previous token: out[t] = token[t − 1]."""
    n = N_SPECIAL + n_symbols
    layout, token, one, pos = base_layout(n, max_seq_len, position=True)
    prev = layout.categorical("prev", range(n))

    def reference(tokens: Sequence[int]) -> list[list[float]]:
        check_input(tokens, n)
        return [_one_hot(tokens[max(t - 1, 0)], n) for t in range(len(tokens))]

    return Program(name="previous_token", layout=layout, token=token, one=one, position=pos,
                   heads=(_prev_head(token, one, pos, prev),), mlps=(), readout=readout_entries(prev),
                   output_values=tuple(range(n)), max_seq_len=max_seq_len, reference=reference)


def eos_bracket_weight(max_seq_len: int) -> float:
    """The default ``bracket_weight`` of :func:`dyck1`: √(lo·hi), the geometric middle of the weights w for which
    circuit-tracer's pruning keeps A3's influential edges of dyck1's exact graphs, K = max_seq_len (derived from
    the pruning's shares and measured in docs/circuits.md, A3). lo = K/8: below it the 0.98 edge step drops the
    token → ``eos_ok`` edge of short prompts ending below depth 0 (the depth's edge, 2K·|d|/(t+1) per neuron, is
    large there); hi = min(4, K/3): above it the last token and ``eos_ok`` cover the 0.8 node share alone and the
    depth head is pruned ([BOS, c]: w < K/3; a length-K prompt ending at depth −1: w < 4). The window is empty
    beyond K ≈ 32."""
    k = float(max_seq_len)
    return math.sqrt(k / 8 * min(4.0, k / 3))


def dyck1(*, max_seq_len: int = 16, bracket_weight: float | None = None) -> Program:
    """Dyck-1 next-token validity from the running depth (matches DyckWorld(k=1) ``valid_next``).

    ``bracket_weight`` (w) splits the ``eos_ok`` neurons' constant between the token and the bias: their
    pre-activation is w·[bracket] − (gate − w)·[special] + (offset − w) − 2K·x, the same function for every w
    (the token one-hot sums to 1). It sets how much of the neurons' input the token's edge carries in an
    attribution graph: w = gate is the plain gate (the token edge outweighs the depth's and the depth head is
    pruned), w = 0 the complement gate (no token edge at brackets, so the edge the circuit lists is never
    measured and, where d_t = 0, ``eos_ok`` has no input at all). The default (None) is
    :func:`eos_bracket_weight`."""
    n = N_SPECIAL + 2
    o, c = N_SPECIAL, N_SPECIAL + 1
    layout, token, one, _ = base_layout(n, max_seq_len, position=False)
    depth = layout.numerical("depth_frac")
    close_ok = layout.numerical("close_ok")
    eos_ok = layout.numerical("eos_ok")
    head = mean_head("depth_head", value=token, output=depth, value_map=lambda v: {o: 1.0, c: -1.0}.get(v))
    k2, gate = 2.0 * max_seq_len, 2.0 * max_seq_len + 2.0
    w = eos_bracket_weight(max_seq_len) if bracket_weight is None else bracket_weight
    x = depth.dim()
    tok = ((token.dim(o), w), (token.dim(c), w), *((token.dim(v), w - gate) for v in range(N_SPECIAL)))
    neurons = (  # close_ok = clip(2K·x − ½, 0, 1); eos_ok = clip(1½ − 2K·x − gate·[special], 0, 1)
        Neuron(w_in=((x, k2),), bias=-0.5, w_out=((close_ok.dim(), 1.0),), writes="close_ok"),
        Neuron(w_in=((x, k2),), bias=-1.5, w_out=((close_ok.dim(), -1.0),), writes="close_ok"),
        Neuron(w_in=((x, -k2), *tok), bias=1.5 - w, w_out=((eos_ok.dim(), 1.0),), writes="eos_ok"),
        Neuron(w_in=((x, -k2), *tok), bias=0.5 - w, w_out=((eos_ok.dim(), -1.0),), writes="eos_ok"),
    )
    mlp = neuron_mlp("balance_mlp", reads=(depth, token), neurons=neurons)
    readout = [(one.dim(), v, SCALE if v == o else -SCALE) for v in range(n)]
    readout += [(close_ok.dim(), c, 2 * SCALE), (eos_ok.dim(), EOS, 2 * SCALE)]

    def depths(tokens: Sequence[int]) -> list[int]:
        return list(itertools.accumulate({o: 1, c: -1}.get(t, 0) for t in tokens))

    def reference(tokens: Sequence[int]) -> list[list[float]]:
        check_input(tokens, n)
        out = []
        for t, d in zip(tokens, depths(tokens), strict=True):
            valid = {o} | ({c} if d > 0 else set()) | ({EOS} if d <= 0 and t in (o, c) else set())
            out.append([1.0 if v in valid else -1.0 for v in range(n)])
        return out

    def final_depth_sign(tokens: Sequence[int]) -> int:
        d = depths(tokens)[-1]
        return (d > 0) - (d < 0)

    # > 0: close_ok (read from depth_frac) feeds the logits; < 0: eos_ok, read from depth_frac and the token,
    # feeds them; 0: eos_ok from the token alone (depth_frac = 0)
    strata = PromptStrata(state=final_depth_sign, values=(-1, 0, 1))
    return Program(name="dyck1", layout=layout, token=token, one=one, position=None, heads=(head,), mlps=(mlp,),
                   readout=tuple(readout), output_values=tuple(range(n)), max_seq_len=max_seq_len,
                   reference=reference, prompt_strata=strata)


def induction(*, n_symbols: int = 3, max_seq_len: int = 8) -> Program:
    """Induction: predict the token that followed the last earlier occurrence(s) of the current token."""
    n = N_SPECIAL + n_symbols
    layout, token, one, pos = base_layout(n, max_seq_len, position=True)
    prev = layout.categorical("prev", range(n))
    ind = layout.categorical("induced", range(n))
    head = select_head("induction_head", query=token, key=prev, predicate=lambda a, b: a == b and _is_symbol(a),
                       value=token, output=ind, value_map=lambda v: v, one=one, bos=(token, BOS))

    def reference(tokens: Sequence[int]) -> list[list[float]]:
        check_input(tokens, n)
        prev_of = [tokens[max(s - 1, 0)] for s in range(len(tokens))]
        out = []
        for t, q in enumerate(tokens):
            sel = [s for s in range(t + 1) if _is_symbol(q) and prev_of[s] == q]
            if not sel:
                out.append(_one_hot(BOS, n))
                continue
            out.append([sum(tokens[s] == v for s in sel) / len(sel) for v in range(n)])
        return out

    return Program(name="induction", layout=layout, token=token, one=one, position=pos,
                   heads=(_prev_head(token, one, pos, prev), head), mlps=(), readout=readout_entries(ind),
                   output_values=tuple(range(n)), max_seq_len=max_seq_len, reference=reference)


def histogram(*, n_symbols: int = 3, max_seq_len: int = 8) -> Program:
    """Histogram: how often the current symbol has occurred so far (itself included)."""
    n = N_SPECIAL + n_symbols
    layout, token, one, _ = base_layout(n, max_seq_len, position=False)
    frac = layout.numerical("bos_frac")
    hist = layout.categorical("count", range(max_seq_len))
    head = select_head("count_head", query=token, key=token, predicate=lambda a, b: a == b and _is_symbol(a),
                       value=token, output=frac, value_map=lambda v: 1.0 if v == BOS else None, one=one,
                       bos=(token, BOS), bos_score="equal")
    mlp = discretising_mlp("invert_mlp", input=frac, points=[1.0 / (w + 1) for w in range(max_seq_len)],
                           output=hist, f=lambda x: round(1.0 / x) - 1)

    def reference(tokens: Sequence[int]) -> list[list[float]]:
        check_input(tokens, n)
        return [_one_hot(sum(tokens[s] == q for s in range(1, t + 1)) if _is_symbol(q) else 0, max_seq_len)
                for t, q in enumerate(tokens)]

    return Program(name="histogram", layout=layout, token=token, one=one, position=None, heads=(head,),
                   mlps=(mlp,), readout=readout_entries(hist), output_values=tuple(range(max_seq_len)),
                   max_seq_len=max_seq_len, reference=reference)


def two_hop(*, n_symbols: int = 3, max_seq_len: int = 8) -> Program:
    """Two chained lookups at every position: A (the token) → B = f(A) → C = g(B)."""
    n = N_SPECIAL + n_symbols
    layout, token, one, _ = base_layout(n, max_seq_len, position=False)
    hop1 = layout.categorical("hop1", range(n_symbols))
    hop2 = layout.categorical("hop2", range(n_symbols))

    def f(v):
        return (v - N_SPECIAL + 1) % n_symbols if _is_symbol(v) else None

    def g(b):
        return n_symbols - 1 - b

    first = lookup_mlp("hop1_mlp", input=token, output=hop1, table=f)
    second = lookup_mlp("hop2_mlp", input=hop1, output=hop2, table=g)
    readout = tuple((hop2.dim(c), N_SPECIAL + c, SCALE) for c in hop2.values)

    def reference(tokens: Sequence[int]) -> list[list[float]]:
        check_input(tokens, n)
        return [_one_hot(N_SPECIAL + g(f(t)), n) if _is_symbol(t) else [0.0] * n for t in tokens]

    return Program(name="two_hop", layout=layout, token=token, one=one, position=None, heads=(),
                   mlps=(first, second), readout=readout, output_values=tuple(range(n)), max_seq_len=max_seq_len,
                   reference=reference)


def repeated_token(*, n_symbols: int = 3, max_seq_len: int = 8) -> Program:
    """Whether the current token repeats the previous one (a duplicate-token detector), written in RASP
    (:mod:`~assay.circuits.compile.rasp`): a head copies the previous token into ``prev`` (the BOS by default at
    position 1), an MLP with one ReLU per (token, prev) pair writes ``same``. Free interventions overwrite
    ``prev``; the program's meaning gives what they must cause."""
    prev = Aggregate(Select(indices, indices, lambda k, q: k == q - 1 and k >= 1), tokens, name="prev")
    same = SequenceMap(lambda a, b: a == b, tokens, prev, name="same")
    return compile_rasp(same, name="repeated_token", n_symbols=n_symbols, max_seq_len=max_seq_len, intervene="prev")


DECOY = "decoy"
"""The variable :func:`with_decoy`'s head writes."""


def with_decoy(program: Program) -> Program:
    """The program plus an off-circuit decoy head: it copies the token into a new variable :data:`DECOY` that
    nothing reads (the negative control of spec circuits.md §4.3 A2/A7). The program's layout is copied,
    so ``program`` itself is unchanged."""
    layout = copy.deepcopy(program.layout)
    token, one = layout[program.token.name], layout[program.one.name]
    decoy = layout.categorical(DECOY, token.values)
    key = layout[program.position.name] if program.position is not None else token
    head = select_head("decoy_head", query=key, key=key, predicate=lambda a, b: a == b and b != 0 and b != BOS,
                       value=token, output=decoy, value_map=lambda v: v, one=one, bos=(token, BOS))
    return dataclasses.replace(program, layout=layout, heads=(*program.heads, head))


PROGRAMS: dict[str, Callable[..., Program]] = {
    "previous_token": previous_token, "dyck1": dyck1, "induction": induction, "histogram": histogram,
    "two_hop": two_hop, "repeated_token": repeated_token,
}
"""Program builders by name."""
