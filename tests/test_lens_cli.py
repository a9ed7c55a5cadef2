"""Real model (SmolLM2-135M), kept small: probe sweep, steering run, logit lens (the experiments of
assay/bench/lenses/ behind ``assay probe / steer / lens``); CLI registration; each command's report section read
back with ``read_section``; the probe and steering-vector artifacts they write load back with their provenance."""

import json

import pytest
import torch
from typer.testing import CliRunner

from assay.bench.lenses.logit_lens import LensConfig, run_lens, token_label
from assay.bench.lenses.probe_sweep import ProbeConfig, run_probe
from assay.bench.lenses.sentiment_steering import SteerConfig, run_steer
from assay.cli import app
from assay.lenses.artifacts import load_probe, load_sequence_probe, load_steering_vectors
from assay.report import read_section

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_commands_registered():
    runner = CliRunner()
    for name, flag in (("probe", "--pooling"), ("steer", "--strengths"), ("steer", "--readout-layer"),
                       ("lens", "--positions"), ("probe", "--out-dir"), ("steer", "--out-dir"), ("lens", "--out-dir")):
        res = runner.invoke(app, [name, "--help"])
        assert res.exit_code == 0 and flag in res.output


def test_config_bad_input():
    with pytest.raises(ValueError, match="at least one strength"):
        SteerConfig(strengths=())
    with pytest.raises(ValueError, match="finite"):
        SteerConfig(strengths=(float("nan"),))
    with pytest.raises(ValueError, match="readout_layer"):
        SteerConfig(layer=10, readout_layer=3)
    with pytest.raises(ValueError, match="n_sentences"):
        ProbeConfig(n_sentences=2)
    with pytest.raises(ValueError, match="directions must be one of 'caa', 'pca', 'probe'; got 'pcaa'"):
        SteerConfig(directions=("caa", "pcaa"))
    with pytest.raises(ValueError, match="at least one direction"):
        SteerConfig(directions=())
    with pytest.raises(ValueError, match="must not repeat"):
        SteerConfig(directions=("pca", "pca"))
    res = CliRunner().invoke(app, ["steer", "--directions", "caa", "--directions", "ridge"])
    assert res.exit_code != 0 and "ridge" in res.output and "'probe'" in res.output


def test_attention_probe_sweep_with_cascade_smollm2(smollm2, tmp_path):
    """The attention probe from the command's config, the cascade monitor's call count, and the sequence-probe
    artifact's provenance."""
    cfg = ProbeConfig(n_sentences=24, layers=(6,), folds=3, batch_size=24, probe="attention", epochs=5,
                      cascade_fraction=0.25, out_dir=tmp_path)
    r = run_probe(cfg, smollm2)
    c = r["cascade"]
    assert c["calls"] == 6 and [row["calls"] for row in c["curve"]] == [0, 2, 3, 5, 6, 12, 24]
    assert c["curve"][0]["auroc"] == c["probe_auroc"] == pytest.approx(r["layers"][0]["auroc"], abs=1e-12)
    assert 0.0 <= c["judge_auroc"] <= 1.0
    saved = load_sequence_probe(r["probe"])
    assert saved.config.probe.kind == "attention" and saved.config.provenance.policy == "off"
    assert saved.config.provenance.pooling == "attention over tokens (BOS excluded)"
    sec = read_section(tmp_path)
    assert len(sec.tables) == 2 and sec.tables[1].columns == ["share escalated", "judge calls", "AUROC", "accuracy"]


def test_probe_sweep_smollm2(smollm2, tmp_path):
    cfg = ProbeConfig(n_sentences=24, layers=(2, 20), folds=3, batch_size=24, out_dir=tmp_path)
    r = run_probe(cfg, smollm2)
    assert [row["site"] for row in r["layers"]] == ["model.layers.2", "model.layers.20"]
    for row in r["layers"]:
        assert 0.0 <= row["auroc_low"] <= row["auroc"] <= row["auroc_high"] <= 1.0
        assert 0.0 <= row["accuracy_low"] <= row["accuracy"] <= row["accuracy_high"] <= 1.0
    assert json.loads((tmp_path / "results.json").read_text())["best"] == r["best"]
    sec = read_section(tmp_path)
    assert "Probe sweep" in sec.title
    (table,) = sec.tables
    assert table.columns[:3] == ["layer", "site", "AUROC"] and "accuracy" in table.columns
    assert [row[0] for row in table.rows] == [2, 20]
    assert [row[2] for row in table.rows] == pytest.approx([row["auroc"] for row in r["layers"]], abs=1e-4)
    (plot,) = sec.plots
    assert plot.path.is_relative_to(tmp_path.resolve()) and plot.path.stat().st_size > 1000
    assert (tmp_path / "report.html").stat().st_size > plot.path.stat().st_size  # plot inlined
    # the best layer's probe, refitted on all sentences, saved with off-policy provenance
    saved = load_probe(r["probe"])
    assert saved.config.provenance.site == r["best"] and saved.config.provenance.policy == "off"
    assert saved.config.provenance.model == smollm2.name and saved.config.provenance.n_examples == 24
    assert saved.config.d_model == 576 and saved.probe.method == "logistic"
    best = next(row for row in r["layers"] if row["site"] == r["best"])
    assert saved.meta["cv_auroc"] == best["auroc"]
    with pytest.raises(ValueError, match="do not exist"):
        run_probe(ProbeConfig(n_sentences=8, layers=(99,), out_dir=tmp_path), smollm2)


def test_steer_smollm2(smollm2, tmp_path):
    # strengths not starting at 0: the baseline is the unsteered model, not the first strength
    r = run_steer(SteerConfig(layer=10, readout_layer=20, n_train=8, n_eval=3, strengths=(2.0, 0.0),
                              max_new_tokens=2, n_heldout=2, heldout_tokens=16, batch_size=8,
                              out_dir=tmp_path / "steer"), smollm2)
    dirs = ("caa", "pca", "probe")
    assert tuple(r["directions"]) == dirs
    assert [(x["direction"], x["strength"]) for x in r["rows"]] == [(d, a) for d in dirs for a in (2.0, 0.0)]
    for d in dirs:
        two, zero = r["directions"][d]["rows"]
        assert zero["pres_pos"] == (0.0, 0.0, 0.0) and zero["pres_neg"] == (0.0, 0.0, 0.0)  # α = 0: no effect
        assert zero["effect"] == zero["probe_shift"] == zero["heldout_kl"] == 0.0
        assert zero["effect_low"] == zero["effect_high"] == 0.0
        assert two["heldout_ppl"] != zero["heldout_ppl"] and two["heldout_kl"] > 0
        assert two["effect_low"] <= two["effect"] <= two["effect_high"]
        # each positive-minus-negative direction reads as more positive downstream
        assert two["probe_shift"] > 0, d
    assert r["directions"]["caa"]["cosine_to_caa"] == pytest.approx(1.0)
    assert r["directions"]["pca"]["raw_norm"] == pytest.approx(1.0, abs=1e-4)  # unit PC before rescaling
    for d in ("pca", "probe"):
        assert 0 < r["directions"][d]["cosine_to_caa"] < 1  # sign-fixed, and a different direction
    # same size of edit: at equal α the directions differ, so their costs differ
    kls = {r["directions"][d]["rows"][0]["heldout_kl"] for d in dirs}
    assert len(kls) == 3
    saved = json.loads((tmp_path / "steer" / "results.json").read_text())
    assert list(saved["directions"]) == list(dirs)
    assert [x["heldout_kl"] for x in saved["rows"]] == [x["heldout_kl"] for x in r["rows"]]

    # the vectors used (each at the CAA norm) and the read-out probe, as artifacts
    vecs = load_steering_vectors(r["vectors"])
    assert list(vecs.vectors) == list(dirs) and vecs.site == r["site"] == "model.layers.10"
    assert vecs.config.provenance.policy == "off" and vecs.config.provenance.n_examples == 8
    for d in dirs:
        assert float(vecs.vectors[d].double().norm()) == pytest.approx(r["vector_norm"], rel=1e-5)
    ro = load_probe(r["readout_probe"])
    assert ro.config.provenance.site == r["readout_site"] == "model.layers.20"
    assert ro.meta["class_gap"] == pytest.approx(r["probe_class_gap"])

    sec = read_section(tmp_path / "steer")
    assert all(n in sec.title for n in ("CAA", "PCA", "probe"))
    (table,) = sec.tables
    assert table.columns[:2] == ["direction", "α"]
    assert "KL held-out" in table.columns and "probe shift (× class gap)" in table.columns
    assert [row[:2] for row in table.rows] == [[d, a] for d in dirs for a in (2.0, 0.0)]
    kl, eff = table.columns.index("KL held-out"), table.columns.index("effect (Δ LL gap)")
    for row, x in zip(table.rows, r["rows"]):
        assert row[kl] == pytest.approx(x["heldout_kl"], abs=1e-4) and row[eff] == pytest.approx(x["effect"], abs=1e-4)
        if x["strength"] == 0.0:
            assert row[kl] == row[eff] == 0.0
    (plot,) = sec.plots
    assert plot.path.parent == (tmp_path / "steer" / "plots").resolve() and plot.path.stat().st_size > 1000

    # one direction only (PCA, still at the CAA norm): one row, one curve
    one = run_steer(SteerConfig(layer=10, readout_layer=20, n_train=8, n_eval=3, strengths=(1.0,), directions=("pca",),
                                max_new_tokens=1, n_heldout=2, heldout_tokens=16, batch_size=8,
                                out_dir=tmp_path / "one"), smollm2)
    assert list(one["directions"]) == ["pca"] and len(one["rows"]) == 1


def test_lens_smollm2(smollm2, tmp_path):
    lens = run_lens(LensConfig(layers=(3, 29), out_dir=tmp_path / "lens"), smollm2)
    assert lens["layers"][-1]["kl_to_final"] == pytest.approx(0.0, abs=1e-4)  # last layer = the model
    assert lens["layers"][-1]["top"][0] == lens["final_top"]
    assert lens["layers"][-1]["top_at"] == lens["final_top_at"]
    assert torch.isfinite(torch.tensor(lens["layers"][0]["kl_to_final"]))
    sec = read_section(tmp_path / "lens")
    (table,) = sec.tables
    T = len(lens["positions"])
    assert lens["positions"] == list(range(T)) and len(table.columns) == T + 2
    assert [row[0] for row in table.rows] == [3, 29, "model"]
    assert table.rows[1][1:T + 1] == [token_label(t, None) for t in lens["final_top_at"]]  # whitespace made visible
    (plot,) = sec.plots
    assert plot.path.stat().st_size > 1000

    # chosen positions (negative from the end); token text with markup is escaped by the report
    sel = run_lens(LensConfig(prompt="a <b>bold</b> $x$ claim", layers=(29,), positions=(0, -1),
                              out_dir=tmp_path / "sel"), smollm2)
    assert len(sel["positions"]) == 2 and sel["positions"][0] == 0 and sel["tokens"][-1] == " claim"
    html = (tmp_path / "sel" / "report.html").read_text()
    assert "<b>bold" not in html and "&lt;b&gt;" in html
    with pytest.raises(ValueError, match="do not exist"):
        run_lens(LensConfig(positions=(50,), layers=(1,), out_dir=tmp_path / "bad"), smollm2)
