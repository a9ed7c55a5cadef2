"""Bench family ``circuits`` (attribution graphs against compiled programs): the run cache (a re-run computes
nothing, a deleted run is recomputed with the same metrics), the section, the command line, spec validation,
and the scientific check against the compiled circuits.

Measured with n_inputs 128, n_prompts 4, seed 0 (``assay bench --family circuits``):

    world           method          precision  recall  chance  replacement  influential_recall
    previous_token  exact           1          1       0.5     1            1
    previous_token  random_basis    0.33       1       0.30    0.40         0.24
    previous_token  random_weights  0.50       1       0.5     0.66         0.29
    histogram       exact           1          1       0.36    1            0.50
    histogram       random_basis    0.11       0.5     0.12    0.25         0.23
    histogram       random_weights  0.36       1       0.36    0.35         0.15

and for ``exact`` on all five programs: accuracy 1, min_margin 10, off_circuit_change 0, constrained_error
≤ 6e-14, free_success 1, decoy_edge_mass 0.
"""

import csv
import dataclasses
import shutil

import pytest
import torch
from typer.testing import CliRunner

from assay.bench.circuits import FAMILY, WORLD_NAMES, CircuitSettings, draw_prompts
from assay.bench.runner import run_family
from assay.circuits.compile import LOGITS, edge_recovery, exact_bases
from assay.circuits.graph import GraphConfig, attribute
from assay.cli import app
from assay.config import ConfigError
from assay.report import read_section
from assay.worlds.base import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")

WORLDS = ("previous_token", "histogram")
METHODS = ("exact", "random_basis", "random_weights")
SETTINGS = CircuitSettings(n_inputs=48, n_prompts=3)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-circuits")
    return run_family(FAMILY, worlds=WORLDS, methods=METHODS, seeds=(0,), settings=SETTINGS, out_dir=out), out


def _metrics(res):
    return {(r["world"], r["method"]): r["metrics"] for r in res.runs}


def test_rerun_is_cached_and_resume_recomputes_exactly_the_deleted_run(bench, tmp_path):
    res, out = bench
    assert res.computed == len(res.runs) == 6
    again = run_family(FAMILY, worlds=WORLDS, methods=METHODS, seeds=(0,), settings=SETTINGS, out_dir=out, report=False)
    assert again.computed == 0 and _metrics(again) == _metrics(res)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = next(r for r in res.runs if r["method"] == "random_basis")
    (copy / "cache" / f"{victim['key']}.json").unlink()
    redo = run_family(FAMILY, worlds=WORLDS, methods=METHODS, seeds=(0,), settings=SETTINGS, out_dir=copy, report=False)
    assert redo.computed == 1
    assert next(r for r in redo.runs if r["key"] == victim["key"])["metrics"] == pytest.approx(victim["metrics"],
                                                                                               nan_ok=True)


def test_section_reads_back(bench):
    res, out = bench
    sec = read_section(out)
    assert sec.title == FAMILY.title and len(sec.tables[0].rows) == 6
    assert sec.tables[0].columns[3:] == list(FAMILY.metrics)
    assert [g["metadata"]["slug"] for g in sec.graphs] == [f"{w}: exact-feature graph" for w in WORLDS]
    assert all(g["links"] and g["metadata"]["prompt_tokens"][0] == "<bos>" for g in sec.graphs)


def test_exact_graphs_pass_the_acceptance_checks_and_the_controls_do_not(bench):
    """The scientific check (numbers in the module docstring): on the compiled programs the exact-feature graphs
    meet A1, A2, A3 (unpruned), A5 and A7 exactly; the random-basis control loses precision and replacement;
    the random-weights model is wrong and its graphs' precision sits near the causal chance level."""
    m = _metrics(bench[0])
    assert m[("histogram", "exact")]["influential_recall"] < 0.9  # measured 0.5: count's neurons split the node share
    for world in WORLDS:
        ex = m[(world, "exact")]
        assert ex["accuracy"] == 1.0 and ex["min_margin"] >= 5 and ex["max_error"] < 1e-4
        assert ex["off_circuit_change"] <= 1e-5 and ex["min_share_moved"] >= 0.1
        assert ex["precision"] == 1.0 and ex["recall"] == 1.0 and ex["pruned_precision"] == 1.0
        assert abs(ex["replacement"] - 1) <= 1e-6 and abs(ex["completeness"] - 1) <= 1e-6
        assert ex["constrained_error"] <= 1e-9 and ex["free_success"] >= 0.95
        assert ex["decoy_edge_mass"] == 0.0 and ex["decoy_influence"] == 0.0
        assert ex["aggregated_recall"] == 1.0  # A3's pruned clause on (variable, position) nodes
        rb = m[(world, "random_basis")]
        assert rb["precision"] < 0.5 and rb["replacement"] < 0.7 and rb["decoy_edge_mass"] > 0
        assert rb["constrained_error"] <= 1e-9  # the graph is still exact about its own (useless) features
        rw = m[(world, "random_weights")]
        assert rw["accuracy"] < 0.5 and rw["off_circuit_change"] > 1
        assert rw["precision"] < 0.6 and rw["precision"] == pytest.approx(rw["chance"])  # every possible edge drawn
        assert "free_success" not in rw


def test_specs_are_validated_and_the_cli_runs(tmp_path):
    with pytest.raises(ConfigError, match="unknown parameter"):
        FAMILY.expand("exact:k=3")
    with pytest.raises(ConfigError, match="unknown method"):
        FAMILY.expand("sae")
    with pytest.raises(ConfigError, match="window must be 'all'"):
        FAMILY.expand("clt:window=-1")
    with pytest.raises(ConfigError, match="init must be one of random, data"):
        FAMILY.expand("transcoder:init=kmeans")
    assert [r.params for r in FAMILY.expand("clt:window=0|all")] == [{"window": 0}, {"window": "all"}]
    with pytest.raises(ConfigError, match="unknown parameter.*width"):
        FAMILY.prepare("histogram:width=3", 0, SETTINGS)
    with pytest.raises(ConfigError, match="n_prompts must be >= 1"):
        CircuitSettings(n_prompts=0)
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["bench", "--family", "circuits", "--seeds", "0", "--worlds",
                                   "previous_token:n_symbols=2,max_seq_len=5", "--methods", "exact", "--options",
                                   "n_inputs=8", "--options", "n_prompts=1", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    assert {r["metric"] for r in rows} >= {"precision", "recall", "cpr", "cmd"} and (out / "section.json").exists()


def test_learned_transcoder_rows_match_the_compiled_values_only_with_a_zero_decoder_bias_and_miss_the_hop(tmp_path):
    """A4/A6 with learned per-layer transcoders (random init, unit-norm atoms: init=random; and a CLT, asserted below)
    on two_hop (seed 0, 48 inputs, 2 prompts, 300 steps). Measured:
    zero_bias=true — replacement 0.99996, matched_share 1, node_precision 1, node_recall 0.5 (hop2 kept, hop1's
    features pruned: little influence reaches them), hop_share 0.13;
    zero_bias=false — replacement 0.9998, fvu < 1e-6, matched_share 0, node_precision 0, hop_share 0.23; exact
    hop_share 1. With the usual b_dec every decoder row is a hop value minus the bias (|cos| < 0.9,
    tests/test_circuits_learned.py); either way layer 1's transcoder reads the token directions directly, so the
    logit influence bypasses layer 0's features (the shortcut A6 flags). Programs without an MLP get no values."""
    settings = CircuitSettings(n_inputs=48, n_prompts=2, transcoder_steps=300, html=False)
    res = run_family(FAMILY, worlds=("two_hop", "previous_token"),
                     methods=("exact", "transcoder:zero_bias=true|false,init=random", "clt"), seeds=(0,), settings=settings,
                     out_dir=tmp_path)
    m = {(r["world"], r["method"], r["level"]): r["metrics"] for r in res.runs}
    zero, median = m[("two_hop", "transcoder,init=random", "zero_bias=True")], m[("two_hop", "transcoder,init=random", "zero_bias=False")]
    for tc in (zero, median):
        assert tc["replacement"] > 0.99 and tc["fvu"] < 1e-3 and tc["hop_share"] < 0.5
    assert zero["matched_share"] == zero["node_precision"] == 1.0 and zero["node_recall"] == 0.5
    assert median["matched_share"] == 0.0 and median["node_precision"] == 0.0
    assert m[("two_hop", "exact", "default")]["hop_share"] == pytest.approx(1.0)
    assert m[("two_hop", "exact", "default")]["chain_share"] == pytest.approx(1.0)
    assert m[("previous_token", "transcoder,init=random", "zero_bias=True")] == {}
    assert zero["chain_share"] <= zero["hop_share"] + 1e-12  # the chain share counts fewer paths
    # the CLT (same budget, zero bias) is exact and its graph exact about itself, but rewrites A → B → C as a direct
    # edge: its layer-0 features write hop2 into MLP 1's output (measured: replacement 0.998, fvu < 1e-6,
    # constrained_error 0, hop_share 0.74 — layer 0 is on most paths — chain_share 0.012)
    clt = m[("two_hop", "clt", "default")]
    assert clt["replacement"] > 0.99 and clt["fvu"] < 1e-3 and clt["constrained_error"] < 1e-9
    assert clt["chain_share"] < 0.1 < 0.5 < clt["hop_share"]
    assert m[("previous_token", "clt", "default")] == {}


def test_the_rasp_written_program_meets_a4_with_the_gradient_recipe_not_the_data_initialisation(tmp_path):
    """repeated_token (written in RASP) through the bench: every exact check holds, and A4 holds for transcoders
    trained from a random init (measured, seeds 0–9: replacement 0.945–1, matched share and node precision / recall
    1) but not from the data initialisation (replacement 0.004–0.57): its MLP reads the pair (token, prev), and
    the equality of two categorical variables is no cluster of input rows, which is what that init places features
    on. Seed 0 with these settings (64 inputs, 4 prompts): replacement 1 (random init) against 0.765."""
    settings = CircuitSettings(n_inputs=64, n_prompts=4, html=False)
    res = run_family(FAMILY, worlds=("repeated_token",), methods=("exact", "transcoder:init=random|data"), seeds=(0,),
                     settings=settings, out_dir=tmp_path)
    m = {(r["method"], r["level"]): r["metrics"] for r in res.runs}
    exact = m[("exact", "default")]
    assert exact["accuracy"] == exact["precision"] == exact["recall"] == exact["free_success"] == 1.0
    assert exact["replacement"] == pytest.approx(1.0) and exact["constrained_error"] < 1e-9
    gradient, data = m[("transcoder", "init=random")], m[("transcoder", "init=data")]
    assert gradient["replacement"] >= 0.8 and gradient["matched_share"] >= 0.9
    assert gradient["node_precision"] >= 0.8 and gradient["node_recall"] >= 0.8
    assert data["replacement"] < 0.8


def _exact_graphs(prepared, prompts):
    bases = exact_bases(prepared.compiled)
    return bases, [attribute(prepared.compiled.model, p, bases, GraphConfig()) for p in prompts]


def test_dyck1_graph_prompts_exercise_every_circuit_edge():
    """A3's unpruned recall must not depend on the prompts a seed draws. Seed 3's unstratified draw (until
    2026-12-02) ended no prompt above depth 0, so close_ok → logits was in no graph and recall was 0.875. The
    prompts are now stratified by the sign of the final depth; the ones ending at or below 0 alone still miss it."""
    prepared = FAMILY.prepare("dyck1", 3, CircuitSettings())  # the bench's draw (the inputs are drawn first)
    bases, graphs = _exact_graphs(prepared, prepared.prompts)
    rec = edge_recovery(graphs, bases, prepared.compiled)
    assert rec.precision == rec.recall == 1.0, rec.expected - rec.found
    state = prepared.program.prompt_strata.state
    assert [state(p.tolist()) for p in prepared.prompts] == [-1, 0, 1, -1, 0, 1, -1, 0]
    not_above = edge_recovery([g for g, p in zip(graphs, prepared.prompts, strict=True) if state(p.tolist()) <= 0],
                              bases, prepared.compiled)
    assert ("close_ok", LOGITS) in not_above.expected - not_above.found and not_above.recall < 1
    with pytest.raises(ConfigError, match=r"stratified by 3 states.*n_prompts=2 < 3"):
        FAMILY.prepare("dyck1", 0, CircuitSettings(n_inputs=1, n_prompts=2))
    with pytest.raises(ConfigError, match="no prompt of state 0 in 10000 draws"):  # [BOS, o] or [BOS, c] only
        FAMILY.prepare("dyck1:max_seq_len=2", 0, CircuitSettings(n_inputs=1))


@pytest.mark.parametrize("world", WORLD_NAMES)
def test_one_prompt_per_state_exercises_every_circuit_edge(world):
    """The claim behind ``prompt_strata``: on any draw, one prompt of each state (one prompt where a program has no
    strata) shows every circuit edge in the exact graphs (checked on 5 draws)."""
    prepared = FAMILY.prepare(world, 0, CircuitSettings(n_inputs=1))
    strata = prepared.program.prompt_strata
    for seed in range(5):
        prompts = draw_prompts(prepared.program, 1 if strata is None else len(strata.values), make_generator(seed))
        bases, graphs = _exact_graphs(prepared, prompts)
        rec = edge_recovery(graphs, bases, prepared.compiled)
        assert rec.precision == rec.recall == 1.0, (seed, rec.expected - rec.found)


@pytest.mark.parametrize("edge", [("close_ok", LOGITS), ("depth_frac", "eos_ok")])
def test_recall_catches_a_circuit_edge_missing_from_every_graph(edge):
    """The check can fail: with one circuit edge zeroed in every graph (all positions) recall drops to 7/8 and the
    edge is named as missing."""
    prepared = FAMILY.prepare("dyck1", 0, CircuitSettings(n_inputs=1))
    bases, graphs = _exact_graphs(prepared, prepared.prompts)
    source, target = edge
    cut = []
    for g in graphs:
        labels = [bases[j].labels[i] for j, _, i in g.features.tolist()]
        n = g.adjacency.shape[0]
        src = torch.tensor([lab == source for lab in labels] + [False] * (n - g.n_features))
        tgt = torch.zeros(n, dtype=torch.bool)
        if target == LOGITS:
            tgt[g.slices()[3]] = True
        else:
            tgt[:g.n_features] = torch.tensor([lab == target for lab in labels])
        a = g.adjacency.clone()
        a[tgt[:, None] & src[None, :]] = 0.0
        cut.append(dataclasses.replace(g, adjacency=a))
    assert edge_recovery(graphs, bases, prepared.compiled).recall == 1.0
    rec = edge_recovery(cut, bases, prepared.compiled)
    assert rec.recall == 7 / 8 and rec.expected - rec.found == {edge} and rec.precision == 1.0
