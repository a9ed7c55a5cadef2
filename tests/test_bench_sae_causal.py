"""Bench family ``sae-causal`` (Menon et al. 2025's causal test of SAE latents on a formal language): a tiny Dyck-2
world model with a TopK SAE at ``blocks.0``; the run cache, the section, the command line, spec validation, the
edit path against a hand-made hook, and the scientific check against the random-latent control.

Measured with SETTINGS below (2-layer d=32 model, 200 zoo steps, base validity mass 0.89; SAE 150 steps, FVU
0.014, L0 8; 48 edit documents), seed 0 — gained_ab: Δ next-token mass on the tokens the concept change makes
valid, under both edits; predicted: what a perfect edit would gain:

    method  concept  gained_ab  predicted  gained_a  gained_b  lost_ab  gap_rel
    latent  depth    0.180      0.495      0.047     0.071     -0.287   0.448
    latent  top      0.089      0.427      0.064     0.020     -0.123   0.169
    random  depth    0.013      0.495      0.001     0.013      0.000   0.438
    random  top      -0.012     0.427      -0.012    0.000     -0.103   0.000
    probe   depth    0.276      0.495      0.088     0.251     -0.596   0.385
    probe   top      0.383      0.427      0.210     0.194     -0.439   0.510
"""

import csv

import pytest
import torch
from typer.testing import CliRunner

from assay.bench.runner import run_family
from assay.bench.sae_causal import FAMILY, CausalSettings, concept_edits, edited_logits
from assay.cli import app
from assay.config import ConfigError
from assay.report import read_section

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ("latent:concept=depth|top", "random:concept=depth|top", "probe:concept=depth|top")
SETTINGS = CausalSettings(model_steps=200, sae_steps=150, n_sequences=96, n_edit=48, context=24)
OPTIONS = ("model_steps=200", "sae_steps=150", "n_sequences=96", "n_edit=16", "context=24")


@pytest.fixture(scope="module")
def bench(tmp_path_factory, assay_cache):
    out = tmp_path_factory.mktemp("bench-causal")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_family(FAMILY, worlds=("dyck",), methods=METHODS, seeds=(0,), settings=SETTINGS, out_dir=out)
    finally:
        torch.set_num_threads(n)
    return res, out


def _metrics(res):
    return {(r["method"], r["level"]): r["metrics"] for r in res.runs}


def test_every_method_scored_rerun_cached_and_resume(bench, tmp_path):
    import shutil

    res, out = bench
    m = _metrics(res)
    assert res.computed == len(res.runs) == 6
    for v in m.values():
        assert v["base_valid"] > 0.8 and v["sae_fvu"] < 0.1 and v["predicted"] > 0.3
    again = run_family(FAMILY, worlds=("dyck",), methods=METHODS, seeds=(0,), settings=SETTINGS, out_dir=out,
                       report=False)
    assert again.computed == 0 and _metrics(again) == m
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = next(r for r in res.runs if r["method"] == "latent" and r["level"] == "concept=top")
    (copy / "cache" / f"{victim['key']}.json").unlink()
    redo = run_family(FAMILY, worlds=("dyck",), methods=METHODS, seeds=(0,), settings=SETTINGS, out_dir=copy,
                      report=False)
    assert redo.computed == 1
    redone = next(r for r in redo.runs if r["key"] == victim["key"])
    assert redone["metrics"] == pytest.approx(victim["metrics"], abs=1e-6)


def test_matched_latent_moves_validity_mass_far_more_than_a_random_latent(bench):
    """The scientific check (numbers in the module docstring)."""
    m = _metrics(bench[0])
    for concept in ("depth", "top"):
        lat, rnd, probe = (m[(k, f"concept={concept}")] for k in ("latent", "random", "probe"))
        assert lat["gained_ab"] >= rnd["gained_ab"] + 0.05, concept  # measured 0.180 vs 0.013, 0.089 vs −0.012
        assert lat["lost_ab"] < -0.05, concept  # the old state's tokens lose mass: measured −0.287, −0.123
        assert probe["gained_ab"] >= lat["gained_ab"], concept  # the probe reference does better: 0.276, 0.383
        assert lat["gained_ab"] < lat["predicted"], concept  # and no edit reaches the grammar's full shift
        assert lat["auroc_a"] > 0.7 and lat["auroc_b"] > 0.9, concept  # the matched latents read the states


def test_edit_path_matches_a_hand_made_hook(assay_cache, tmp_path):
    """edited_logits through intervene equals adding the probe's vector at one position by a plain hook."""
    from assay.hooks import patch

    w = FAMILY.prepare("dyck", 0, SETTINGS)
    edits = concept_edits(w, "probe", "top", 1.0, 0)
    where = torch.zeros_like(w.edit.text)
    where[:3, 5] = True
    v = edits.both[1].amount

    def add_at_5(h):
        h = h.clone()
        h[:, 5] += v
        return h

    with torch.no_grad(), patch(w.model, {w.site: add_at_5}):
        want = w.model(w.edit.tokens[:3])[:, 5]
    assert torch.allclose(edited_logits(w.model, w.site, w.edit.tokens, where, edits.both), want, atol=1e-5)
    with torch.no_grad():
        plain = w.model(w.edit.tokens[:3])[:, 5]
    assert torch.equal(edited_logits(w.model, w.site, w.edit.tokens, where, None), plain)
    assert not torch.allclose(plain, want, atol=1e-3)  # the edit did something


def test_section_summary_and_cli(bench, tmp_path):
    res, out = bench
    sec = read_section(out)
    (table,) = sec.tables
    assert table.columns == ["world", "method", "level", *FAMILY.metrics] and len(table.rows) == 6
    assert any("gap_rel" in n for n in sec.notes)
    with (out / "summary.csv").open() as f:
        assert {r["metric"] for r in csv.DictReader(f)} >= {"gained_ab", "predicted", "gap_rel"}
    cli_out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["bench", "--family", "sae-causal", "--seeds", "0", "--methods", "latent:concept=top",
                                 *(a for o in OPTIONS for a in ("--options", o)), "--out-dir", str(cli_out)])
    assert r.exit_code == 0, r.output
    assert (cli_out / "summary.csv").is_file() and (cli_out / "section.json").is_file()


def test_bad_specs_fail_before_any_work(tmp_path):
    for spec, msg in (("latent:concept=parity", "concept"), ("probe:scale=0", "scale"), ("random:foo=1", "unknown"),
                      ("sae", "unknown method")):
        with pytest.raises(ConfigError, match=msg):
            run_family(FAMILY, worlds=("dyck",), methods=(spec,), seeds=(0,), out_dir=tmp_path)
    assert not list((tmp_path / "cache").glob("*.json"))
    with pytest.raises(ConfigError, match="unknown parameter.*layer"):
        FAMILY.prepare("dyck:layer=3", 0, SETTINGS)
    with pytest.raises(ConfigError, match="sae must be"):
        FAMILY.prepare("dyck:sae=pca", 0, SETTINGS)
    with pytest.raises(ConfigError, match="n_sequences"):
        CausalSettings(n_sequences=0)
