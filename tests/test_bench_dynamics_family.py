"""The ``dynamics`` bench family (assay.bench.phenomena): cache, resume, section, CLI, the phenomena's
measurements against hand-computed truth, and their quick paths."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from assay.bench.phenomena import graph_trace, matrix_completion, random_binary
from assay.bench.phenomena.family import FAMILY, DynamicsSettings, load_curves
from assay.bench.phenomena.registry import PHENOMENA, load_phenomenon
from assay.bench.runner import run_family
from assay.cli import app
from assay.config import ConfigError
from assay.report import read_section
from assay.worlds.base import make_generator

QUICK = DynamicsSettings(quick=True)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("dynamics")
    return run_family(FAMILY, worlds=("toy_superposition",), seeds=(0, 1), settings=QUICK, out_dir=out), out


def test_superposition_shows_at_the_quick_budget(bench):
    """Elhage et al. at 300 Adam steps of 256 samples, n = 20, m = 5. Measured: S = 0 → 5 features represented
    (seeds 0 and 1), S = 0.99 → 12 (seed 0)."""
    res, _ = bench
    for r in res.runs:
        assert r["metrics"]["represented_dense"] == 5  # exactly the hidden width when dense
        assert r["metrics"]["represented_sparse"] >= 10  # well beyond it when sparse: superposition
        assert r["metrics"]["excess_over_width"] == r["metrics"]["represented_sparse"] - 5


def test_rerun_is_cached_and_a_deleted_run_is_recomputed_alone(bench):
    res, out = bench
    again = run_family(FAMILY, worlds=("toy_superposition",), seeds=(0, 1), settings=QUICK, out_dir=out)
    assert again.computed == 0 and [r["metrics"] for r in again.runs] == [r["metrics"] for r in res.runs]
    victim = res.runs[1]
    (out / "cache" / f"{victim['key']}.json").unlink()
    redone = run_family(FAMILY, worlds=("toy_superposition",), seeds=(0, 1), settings=QUICK, out_dir=out)
    assert redone.computed == 1 and redone.runs[1]["metrics"] == victim["metrics"]
    assert [r["cached"] for r in redone.runs] == [True, False]


def test_section_has_a_table_a_plot_and_the_claim(bench):
    res, out = bench
    sec = read_section(out)
    (table,) = sec.tables
    ph = load_phenomenon("toy_superposition")
    assert table.columns == ["world", "method", "level", *ph.metrics] and len(table.rows) == 1
    assert table.rows[0][3] == "5"  # two seeds, both 5: a zero-width interval shows the mean alone
    assert any(ph.claim in n for n in sec.notes)
    (plot,) = sec.plots
    assert plot.path.is_file() and plot.path.suffix == ".svg"
    # the curves are kept beside each cache entry: the sweep's counts, ending at the sparse count
    curves = load_curves(out / "cache" / res.runs[0]["key"] / "curves.json")
    assert curves[0].ys[0] == 5 and curves[0].ys[-1] == res.runs[0]["metrics"]["represented_sparse"]
    assert curves[0].log_x and curves[0].xs == pytest.approx((1.0, 100.0))


def test_cli_writes_summary_and_section(bench):
    _, out = bench
    (out / "summary.csv").unlink()
    (out / "section.json").unlink()
    r = CliRunner().invoke(app, ["bench", "--family", "dynamics", "--worlds", "toy_superposition", "--seeds", "0",
                                 "--seeds", "1", "--options", "quick=true", "--out-dir", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "summary.csv").is_file() and (out / "section.json").is_file()
    rows = json.loads((out / "summary.json").read_text())
    assert {x["metric"] for x in rows} == set(load_phenomenon("toy_superposition").metrics)


def test_bad_specs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown world"):
        run_family(FAMILY, worlds=("dyck",), seeds=(0,), settings=QUICK, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown parameter"):
        run_family(FAMILY, worlds=("cyclic",), methods=("default:steps=3",), seeds=(0,), settings=QUICK,
                   out_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown parameter.*valid: none \\(this world takes no parameters\\)"):
        run_family(FAMILY, worlds=("cyclic:steps=3",), seeds=(0,), settings=QUICK, out_dir=tmp_path / "params")
    assert not (tmp_path / "params").exists()  # refused before any work: the run folder was never made
    assert set(FAMILY.worlds) <= set(PHENOMENA)
    for name in PHENOMENA:  # every registered phenomenon satisfies the protocol
        ph = load_phenomenon(name)
        assert ph.name == name and ph.metrics and ph.claim and ph.title


def test_concept_following_against_exact_predictors():
    from assay.worlds.random_binary import RandomBinaryWorld

    world = RandomBinaryWorld()
    batch = world.sample(400, generator=make_generator(0))
    bayes = batch.labels["bayes_p1"].double()
    f = random_binary.concept_following(world, bayes, batch)
    assert torch.allclose(f.model, f.bayes)  # the Bayes predictor scored as the model is Bayes
    # Laplace's rule scored as the model has zero error on Bernoulli sequences (computed here by a loop)
    x = (batch.targets - 4).double()
    laplace = torch.tensor([[(x[i, :t].sum() + 1) / (t + 2) for t in range(x.shape[1])] for i in range(len(x))])
    assert float(random_binary.concept_following(world, laplace, batch).laplace_error.abs().max()) < 1e-12
    # Bayes follows the concept after a few flips: P(continue 5) from ≈ 2⁻⁵ to ≈ 1, crossing 0.5 at t = 5 (docs)
    assert f.bayes[0] < 0.1 and f.bayes[16] > 0.99 and random_binary.first_crossing(f.bayes) in (4, 5, 6)
    assert random_binary.first_crossing(torch.tensor([0.1, 0.5, 0.2])) == 1
    assert random_binary.first_crossing(torch.tensor([0.1, 0.4])) is None


def test_plateau_steps_hand_values():
    curve = [(10, 0.23), (20, 0.22), (30, 0.21), (40, 0.15), (50, 0.09), (60, 0.05)]
    # plateau 0.2222: > 0.2 up to step 30; first < 0.1111 at step 50
    assert matrix_completion.plateau_steps(curve, 2 / 9) == (30, 50)
    assert matrix_completion.plateau_steps(curve[:3], 2 / 9) == (30, None)


def test_line_attention_hand_values():
    """3×3 entries; query (0, 0) is masked. Its row and column are entries 1, 2, 3, 6. Head 0 attends uniformly
    (4 of 9 keys are on the lines: 4/9); head 1 puts 0.5 on itself and 0.5 on entry 6 (0.5); head 2 puts all
    on entry 4, off both lines (0)."""
    pattern = torch.zeros(1, 3, 9, 9)
    pattern[0, 0] = 1 / 9
    pattern[0, 1, :, 0] = pattern[0, 1, :, 6] = 0.5
    pattern[0, 2, :, 4] = 1.0
    mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    mask[0, 0, 0] = True
    got = matrix_completion.line_attention(pattern, mask)
    assert torch.allclose(got, torch.tensor([4 / 9, 0.5, 0.0]))
    with pytest.raises(ValueError, match="n² entries"):
        matrix_completion.line_attention(torch.zeros(1, 1, 8, 8), torch.zeros(1, 3, 3, dtype=torch.bool))


def test_energy_by_window_on_planted_representations():
    """Representations = the grid's true coordinates of each token's node: Ê = 0.6 in every window where all
    16 nodes occur (the 4×4 grid's value, tests/test_world_graph_trace.py); logits uniform over the valid next
    tokens put all their mass there."""
    from assay.worlds.graph_trace import GraphTraceConfig, GraphTraceWorld

    world = GraphTraceWorld(GraphTraceConfig(seq_len=96))
    batch = world.sample(32, generator=make_generator(0))
    node = batch.labels["node"]
    h = world.coords[node.clamp_min(0)].float()
    logits = torch.where(batch.labels["valid_next"], 0.0, -1e9)
    rows = graph_trace.energy_by_window(world, h, logits, batch, 48)
    assert [(r.start, r.stop) for r in rows] == [(0, 48), (48, 96)]
    for r in rows:
        assert r.n_walks > 0 and r.energy == pytest.approx(0.6) and r.valid_mass == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["random_binary", "matrix_completion", "graph_trace", "contamination", "cyclic"])
def test_quick_paths_return_their_metrics_and_curves(name, tmp_path):
    ph = load_phenomenon(name)
    m = ph.measure(0, quick=True, run_dir=tmp_path)
    assert set(m.metrics) == set(ph.metrics) and m.curves
    for c in m.curves:
        assert len(c.xs) == len(c.ys) > 0
    if name == "matrix_completion":  # predicting 0 on masked entries: E[M²] = r/9 = 0.111 (rank 1); SVT does better
        assert m.metrics["zero_mse"] == pytest.approx(1 / 9, abs=0.03)
        assert m.metrics["svt_masked_mse"] < 0.7 * m.metrics["zero_mse"]  # measured 0.041 vs 0.105 (seed 0, 64 matrices)
        assert 0 <= m.metrics["line_attn_final"] <= 1
    if name == "graph_trace":  # 8-ring: tr L/(N − 1) = 16/7
        assert m.metrics["random_level"] == pytest.approx(16 / 7)
        assert m.metrics["successor_level"] == pytest.approx(8 / 3)  # tests/test_world_graph_trace.py
        assert m.metrics["energy_drop"] == pytest.approx(m.metrics["energy_early"] - m.metrics["energy_late"])
    if name == "contamination":
        gaps = [m.metrics[k] for k in ph.metrics[:-1]]
        assert m.metrics["late_minus_early"] == pytest.approx(gaps[-1] - gaps[0])
        assert all(-1 <= g <= 1 for g in gaps)
    if name == "cyclic":
        assert m.metrics["answer_abrupt"] in (0.0, 1.0) and all(c.log_x for c in m.curves)
