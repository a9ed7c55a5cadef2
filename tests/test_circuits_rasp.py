"""The RASP front end: compiled models equal their RASP meaning on every input, programs written in RASP equal the
hand-written ones, their exact attribution graphs recover the compiled circuit, and bad programs are refused."""

from __future__ import annotations

import pytest
import torch

from assay.circuits.compile import (
    SCALE,
    CompileError,
    compile_program,
    edge_recovery,
    exact_bases,
    histogram,
    induction,
)
from assay.circuits.compile.rasp import (
    Aggregate,
    Map,
    Mix,
    RASPError,
    Select,
    SelectAll,
    SelectorWidth,
    SequenceMap,
    compile_rasp,
    evaluate,
    indices,
    tokens,
)
from assay.circuits.graph import GraphConfig, attribute, constrained_effects, graph_scores
from tests.test_circuits_compile import all_inputs, logits_of


def is_symbol(v) -> bool:
    return v >= 4


def rasp_histogram():
    return SelectorWidth(Select(tokens, tokens, lambda k, q: k == q and is_symbol(q)), name="count")


def rasp_induction():
    prev = Aggregate(Select(indices, indices, lambda k, q: k == q - 1 and k >= 1), tokens, name="prev")
    return Aggregate(Select(prev, tokens, lambda k, q: k == q and is_symbol(q)), tokens, name="induced")


def same_as_first():
    first = Aggregate(Select(indices, indices, lambda k, q: k == 1), tokens, name="first")
    return SequenceMap(lambda a, b: a == b, tokens, first, name="same")


def frac_a():
    is_a = Map(lambda t: 1 if t == 4 else 0, tokens, name="is_a")
    return Aggregate(SelectAll(), is_a, numerical=True, name="frac_a")


def test_evaluate_gives_the_meaning_by_hand():
    x = [1, 4, 5, 4, 4]
    assert evaluate(rasp_histogram(), x) == [0, 1, 1, 2, 3]
    assert evaluate(same_as_first(), x) == [True, True, False, True, True]
    assert evaluate(frac_a(), x) == pytest.approx([0, 1 / 2, 1 / 3, 2 / 4, 3 / 5])
    induced = evaluate(rasp_induction(), [1, 4, 5, 4, 6, 4])
    assert induced[:4] == [1, 1, 1, 5]  # nothing selected: the BOS position's token
    assert induced[5] == Mix(((5, 0.5), (6, 0.5)))  # two earlier 4s, followed by 5 and by 6
    with pytest.raises(RASPError, match="mix of values"):
        evaluate(Map(lambda v: v, Aggregate(SelectAll(), tokens)), [1, 4, 5])


@pytest.mark.parametrize(("build", "hand"), [(rasp_histogram, histogram), (rasp_induction, induction)])
def test_programs_written_in_rasp_compile_to_models_equal_to_the_hand_written_programs(build, hand):
    program = compile_rasp(build(), name="rasp", n_symbols=3, max_seq_len=8)
    reference = hand(n_symbols=3, max_seq_len=8)
    compiled = compile_program(program)
    assert compiled.model.config.n_layers == compile_program(reference).model.config.n_layers
    x = all_inputs(reference)
    ref = torch.tensor([reference.reference(row.tolist()) for row in x])
    assert torch.equal(torch.tensor([program.reference(row.tolist()) for row in x]), ref)
    torch.testing.assert_close(logits_of(compiled, x), SCALE * ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("build", [same_as_first, frac_a])
def test_new_rasp_programs_equal_their_meaning_on_every_input(build):
    program = compile_rasp(build(), name=build.__name__, n_symbols=3, max_seq_len=7)
    compiled = compile_program(program)
    x = all_inputs(program)
    ref = torch.tensor([program.reference(row.tolist()) for row in x])
    torch.testing.assert_close(logits_of(compiled, x), SCALE * ref, rtol=0, atol=1e-4)
    assert {n.variable for n in compiled.circuit.nodes} >= ({"first", "same"} if build is same_as_first
                                                           else {"is_a", "frac_a"})


def majority_a():
    return Map(lambda x: x > 0.5, frac_a(), name="majority")


def test_a_map_reads_a_number_back_into_categories_exactly_at_every_mean_it_can_take():
    """frac_a (the share of a-tokens so far, BOS counted) is a numerical Aggregate; Map(x > 0.5) on it compiles to a
    discretising MLP exact at every mean of up to max_seq_len values of {0, 1}, so the 2-layer model equals the
    meaning on every input (ties at exactly 1/2 included: False)."""
    program = compile_rasp(majority_a(), name="majority_a", n_symbols=3, max_seq_len=7)
    compiled = compile_program(program)
    assert compiled.model.config.n_layers == 2  # is_a (MLP 0) → frac_a (head 1) → majority (MLP 1)
    x = all_inputs(program)
    ref = torch.tensor([program.reference(row.tolist()) for row in x])
    assert ref[:, :, 0].sum() > 0 and ref[:, :, 1].sum() > 0  # both answers occur
    torch.testing.assert_close(logits_of(compiled, x), SCALE * ref, rtol=0, atol=1e-4)
    ties = [row for row in x.tolist() if any(v == 0.5 for v in evaluate(frac_a(), row))]
    assert ties  # the boundary itself is exercised


def test_exact_graphs_of_a_rasp_program_recover_its_compiled_circuit():
    """A3 and A5 (constrained) on a program written in RASP: precision = recall = 1 of the variable-level edges,
    replacement = completeness = 1, constrained interventions equal to the edges (fp64)."""
    program = compile_rasp(same_as_first(), name="same_as_first", n_symbols=3, max_seq_len=7)
    compiled = compile_program(program)
    compiled.model.double()
    bases = exact_bases(compiled)
    prompts = [torch.tensor(p) for p in ([1, 4, 4], [1, 5, 4, 6], [1, 6, 5, 6, 6, 4], [1, 4, 5])]
    graphs = [attribute(compiled.model, p, bases, GraphConfig(batch_size=16)) for p in prompts]
    rec = edge_recovery(graphs, bases, compiled)
    assert rec.precision == 1.0 and rec.recall == 1.0, rec.found ^ rec.expected
    assert {("first", "same"), ("same", "logits")} <= rec.expected
    for g in graphs:
        f, e, t, _ = g.slices()
        err, tok = torch.zeros(g.adjacency.shape[0], dtype=torch.bool), torch.zeros(g.adjacency.shape[0], dtype=torch.bool)
        err[e], tok[t] = True, True
        scores = graph_scores(g.adjacency, g.logit_weights(), err, tok)
        assert abs(scores.replacement - 1) <= 1e-6 and abs(scores.completeness - 1) <= 1e-6
        eff = constrained_effects(compiled.model, g, bases)
        torch.testing.assert_close(eff.measured, eff.predicted, rtol=0, atol=1e-9)


def test_bad_rasp_programs_are_clear_errors():
    with pytest.raises(CompileError, match="selects the BOS position"):
        compile_rasp(Aggregate(Select(indices, indices, lambda k, q: k == q - 1), tokens), name="p")
    with pytest.raises(CompileError, match="maps the numerical 'frac_a' to a number"):
        compile_rasp(Map(lambda x: 2 * x, frac_a(), numerical=True), name="p")
    ones = Aggregate(SelectAll(), Map(lambda t: 1, tokens), numerical=True, name="ones")
    with pytest.raises(CompileError, match=r"reads 'ones', which takes one value only \(\(1.0,\)\)"):
        compile_rasp(Map(lambda x: x > 0, ones), name="p")
    with pytest.raises(CompileError, match="reads 'frac_a', a numerical operation"):
        compile_rasp(SequenceMap(lambda a, b: a, tokens, frac_a()), name="p")
    with pytest.raises(CompileError, match="share a name"):
        compile_rasp(SequenceMap(lambda a, b: a, Map(lambda t: t, tokens, name="x"), Map(lambda t: -t, tokens, name="x")),
                     name="p")
    with pytest.raises(CompileError, match="needs a Select"):
        compile_rasp(SelectorWidth(SelectAll()), name="p")
    with pytest.raises(CompileError, match="needs 2 layers but n_layers=1"):
        compile_program(compile_rasp(rasp_induction(), name="p"), n_layers=1)
    with pytest.raises(CompileError, match=r"intervene='nope' must name.*named ones: \['first', 'same'\]"):
        compile_rasp(same_as_first(), name="p", intervene="nope")
    with pytest.raises(CompileError, match="intervene='frac_a' must name"):  # numerical: no one-hot to write
        compile_rasp(frac_a(), name="p", intervene="frac_a")
    with pytest.raises(ValueError, match="start with BOS"):
        compile_rasp(same_as_first(), name="p").reference([4, 5])


def test_the_docs_example_runs_as_written():
    """docs/circuits.md's RASP example: the model equals the meaning, and the exact graph recovers the circuit."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "circuits.md").read_text(encoding="utf-8")
    section = text.split("## A small RASP front end", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    ns: dict = {}
    exec(compile(block, "docs/circuits.md", "exec"), ns)
    assert ns["meaning"] == [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    torch.testing.assert_close(ns["logits"].detach(), SCALE * torch.tensor(ns["meaning"]), rtol=0, atol=1e-4)
    rec = ns["recovery"]
    assert rec.precision == rec.recall == 1.0 and ("back2", "same") in rec.found
