"""Real model (SmolLM2-135M), kept small: probe sweep, steering run, logit lens; CLI registration."""

import json

import pytest
import torch
from typer.testing import CliRunner

from assay.cli import app
from assay.cli.lenses import LensConfig, ProbeConfig, SteerConfig, run_lens, run_probe, run_steer


def test_cli_commands_registered():
    runner = CliRunner()
    for name, flag in (("probe", "--pooling"), ("steer", "--strengths"), ("lens", "--prompt")):
        res = runner.invoke(app, [name, "--help"])
        assert res.exit_code == 0 and flag in res.output


def test_probe_sweep_smollm2(smollm2, tmp_path):
    cfg = ProbeConfig(n_sentences=24, layers=(2, 20), folds=3, batch_size=24, out_dir=tmp_path)
    r = run_probe(cfg, smollm2)
    assert [row["site"] for row in r["layers"]] == ["model.layers.2", "model.layers.20"]
    for row in r["layers"]:
        assert 0.0 <= row["auroc_low"] <= row["auroc"] <= row["auroc_high"] <= 1.0
    assert json.loads((tmp_path / "results.json").read_text())["best"] == r["best"]
    assert (tmp_path / "probe_auroc.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="do not exist"):
        run_probe(ProbeConfig(n_sentences=8, layers=(99,), out_dir=tmp_path), smollm2)


def test_steer_and_lens_smollm2(smollm2, tmp_path):
    r = run_steer(SteerConfig(layer=10, n_train=8, n_eval=3, strengths=(0.0, 2.0), max_new_tokens=2,
                              n_heldout=2, heldout_tokens=16,
                              out_dir=tmp_path / "steer"), smollm2)
    zero, two = r["rows"]
    assert zero["pres_pos"] == (0.0, 0.0, 0.0) and zero["pres_neg"] == (0.0, 0.0, 0.0)  # α = 0: no effect
    assert two["heldout_ppl"] != zero["heldout_ppl"]
    assert (tmp_path / "steer" / "steer_tradeoff.png").exists()
    lens = run_lens(LensConfig(layers=(3, 29), out_dir=tmp_path / "lens"), smollm2)
    assert lens["layers"][-1]["kl_to_final"] == pytest.approx(0.0, abs=1e-4)  # last layer = the model
    assert lens["layers"][-1]["top"][0] == lens["final_top"]
    assert torch.isfinite(torch.tensor(lens["layers"][0]["kl_to_final"]))
