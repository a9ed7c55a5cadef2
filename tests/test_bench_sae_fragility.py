"""Bench family ``sae-fragility`` (Li, Srinivas, Bhalla & Lakkaraju's attacks on an SAE's code) on a tiny Dyck world
model and a TopK SAE trained on its ``blocks.0`` activations: the run cache (a re-run computes nothing, a deleted run
is recomputed with the same metrics), the section, both command lines, spec validation, an independent recomputation
of the suffix mode's greedy start, and the scientific check against the random controls.

Measured with SETTINGS below (2-layer d=32 model, 100 zoo steps; SAE 100 steps, FVU 0.021; 32 prompts of 12 tokens;
objective activate), seed 0 — latent_change is Δ of the target latent's pre-activation in units of its typical value:

    method          success  control_success  latent_change  control_latent_change
    pgd             0.250    0.000            1.350          0.102
    replace         0.188    0.031            1.109          0.077
    suffix greedy   1.000    0.312            2.352          0.645     (greedy start alone: 0.719, 1.629)
    suffix random   1.000    0.312            2.265          0.645     (random start alone: 0.375, 0.879)

Seeds 1 and 2: pgd 1.030 / 1.518 vs control 0.026 / −0.019; replace 0.747 / 0.986 vs 0.353 / 0.047; suffix greedy
2.186 / 2.110 vs random-init 1.952 / 1.818 (both reach success 1.0 on every seed).
"""

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from assay.bench.runner import RunContext, run_family
from assay.bench.sae_fragility import FAMILY, FragilitySettings, score_run, target_latents
from assay.bench.spec import SpecRun
from assay.cli import app
from assay.config import ConfigError
from assay.report import read_section

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ("pgd", "replace", "suffix:init=greedy|random")
SETTINGS = FragilitySettings(model_steps=100, sae_steps=100, n_sequences=64, n_prompts=32, context=24)
OPTIONS = ("model_steps=100", "sae_steps=100", "n_sequences=64", "n_prompts=8", "context=24")


@pytest.fixture(scope="module")
def bench(tmp_path_factory, assay_cache):
    out = tmp_path_factory.mktemp("bench-fragility")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_family(FAMILY, worlds=("dyck",), methods=METHODS, seeds=(0,), settings=SETTINGS, out_dir=out)
    finally:
        torch.set_num_threads(n)
    return res, out


def _metrics(res):
    return {(r["method"], r["level"]): r["metrics"] for r in res.runs}


def test_every_method_scored_and_rerun_is_cached(bench):
    res, out = bench
    m = _metrics(res)
    assert res.computed == len(res.runs) == 4
    assert set(m) == {("pgd", "default"), ("replace", "default"), ("suffix", "init=greedy"), ("suffix", "init=random")}
    for v in m.values():
        assert 0 <= v["success"] <= 1 and 0 <= v["control_success"] <= 1 and v["sae_fvu"] < 0.2
    again = run_family(FAMILY, worlds=("dyck",), methods=METHODS, seeds=(0,), settings=SETTINGS, out_dir=out,
                       report=False)
    assert again.computed == 0 and _metrics(again) == m


def test_resume_recomputes_exactly_the_deleted_run(bench, tmp_path):
    import shutil

    res, out = bench
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = next(r for r in res.runs if r["level"] == "init=greedy")
    (copy / "cache" / f"{victim['key']}.json").unlink()
    again = run_family(FAMILY, worlds=("dyck",), methods=METHODS, seeds=(0,), settings=SETTINGS, out_dir=copy,
                       report=False)
    assert again.computed == 1
    redone = next(r for r in again.runs if r["key"] == victim["key"])
    assert not redone["cached"] and redone["metrics"] == pytest.approx(victim["metrics"], abs=1e-6)


def test_attacks_move_the_target_latent_far_more_than_random_and_greedy_suffix_start_wins(bench):
    """The scientific check (numbers in the module docstring)."""
    m = _metrics(bench[0])
    for key in m:
        v = m[key]
        assert v["latent_change"] >= v["control_latent_change"] + 0.5, key  # measured gaps 1.0-1.7
        assert v["success"] >= v["control_success"], key
    pgd, rep = m[("pgd", "default")], m[("replace", "default")]
    assert pgd["latent_change"] >= 5 * max(pgd["control_latent_change"], 0.05)  # 1.35 vs 0.10
    assert rep["latent_change"] >= 5 * max(rep["control_latent_change"], 0.05)  # 1.11 vs 0.08
    assert pgd["kl"] < 0.1 and rep["kl"] < 0.1  # the output stayed close (κ = 0.01 and 0.05 for successes)
    greedy, rand = m[("suffix", "init=greedy")], m[("suffix", "init=random")]
    assert greedy["success"] >= rand["success"] and greedy["latent_change"] >= rand["latent_change"]  # 2.35 vs 2.27
    for k in ("control_success", "control_latent_change"):  # both levels face the same random suffixes
        assert greedy[k] == rand[k]
    assert greedy["latent_change"] >= greedy["init_latent_change"]  # the search never ends below its start


def test_suffix_greedy_start_matches_a_recomputation_by_hand(assay_cache, tmp_path):
    """init_success of the greedy suffix, recomputed from the model's token forward and the SAE's code."""
    from assay.hooks import capture

    settings = FragilitySettings(model_steps=100, sae_steps=100, n_sequences=64, n_prompts=16, context=24)
    w = FAMILY.prepare("dyck", 0, settings)
    run = SpecRun("suffix", {"length": 3, "iters": 1}, "suffix", "default")
    got = score_run(w, run, RunContext(0, settings, tmp_path))
    latent = target_latents(w, "activate")
    ids = w.prompts
    with torch.no_grad():
        for _ in range(3):
            nxt = w.model(ids)[:, -1].masked_fill(~w.allowed, float("-inf")).argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
        with capture(w.model, ["blocks.0"]) as cap:
            w.model(ids)
        fires = w.sae.encode(cap["blocks.0"][:, -1]).gather(1, latent[:, None]).squeeze(1) > 0
    assert 0 < fires.float().mean() < 1  # not a vacuous comparison
    assert got["init_success"] == pytest.approx(float(fires.float().mean()))


def test_section_and_tables(bench):
    res, out = bench
    sec = read_section(out)
    (table,) = sec.tables
    assert table.columns == ["world", "method", "level", *FAMILY.metrics]
    assert len(table.rows) == 4
    row = next(r for r in table.rows if r[1] == "pgd")
    assert float(row[3]) == pytest.approx(_metrics(res)[("pgd", "default")]["success"], abs=1e-3)
    (plot,) = sec.plots
    assert plot.path.name == "latent_change.svg" and plot.path.stat().st_size > 2000
    assert any("greedy continuation" in n for n in sec.notes)
    with (out / "summary.csv").open() as f:
        assert {r["metric"] for r in csv.DictReader(f)} >= {"success", "control_success", "latent_change"}


def test_cli_bench_and_fragility(assay_cache, tmp_path):
    out = tmp_path / "bench"
    res = CliRunner().invoke(app, ["bench", "--family", "sae-fragility", "--seeds", "0", "--methods", "suffix:length=2",
                                   *(a for o in OPTIONS for a in ("--options", o)), "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "summary.csv").is_file() and (out / "section.json").is_file()
    out = tmp_path / "fragility"
    res = CliRunner().invoke(app, ["fragility", "--modes", "suffix", "--inits", "greedy", "--suffix-length", "2",
                                   "--model-steps", "100", "--sae-steps", "100", "--n-prompts", "8", "--iters", "2",
                                   "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    assert "assay bench --family sae-fragility" in res.output and "1 runs (1 computed, 0 cached)" in res.output
    rows = json.loads((out / "summary.json").read_text())
    assert {(r["method"], r["metric"]) for r in rows} >= {("suffix", "success"), ("suffix", "control_latent_change")}
    assert (out / "section.json").is_file()


def test_bad_specs_fail_before_any_work(tmp_path):
    for spec, msg in (("suffix:init=beam", "init"), ("pgd:eps=-1", "eps"), ("replace:iters=0", "iters"),
                      ("suffix:kl_bound=0", "kl_bound"), ("pgd:objective=flip", "objective"),
                      ("suffix:foo=1", "unknown parameter"), ("gcg", "unknown method")):
        with pytest.raises(ConfigError, match=msg):
            run_family(FAMILY, worlds=("dyck",), methods=(spec,), seeds=(0,), out_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown world"):
        run_family(FAMILY, worlds=("cyclic",), methods=("pgd",), seeds=(0,), out_dir=tmp_path)
    assert not list((tmp_path / "cache").glob("*.json"))
    with pytest.raises(ConfigError, match="prompt_len"):
        FragilitySettings(prompt_len=40, context=32)
    with pytest.raises(ConfigError, match="unknown parameter.*layer"):
        FAMILY.prepare("dyck:layer=3", 0, SETTINGS)
    with pytest.raises(ConfigError, match="sae must be"):
        FAMILY.prepare("dyck:sae=pca", 0, SETTINGS)
