"""Bench family ``lenses`` (the encoder–decoder comparison of Bhalla et al. 2024) on the trained cyclic-weekday
world model: every method scored, the run cache (re-run computes nothing, a deleted run is recomputed with the
same metrics), the section, the CLI, spec validation, and the scientific check against the world's answers.

Measured on the default world model (``cyclic``: site ``blocks.1``, 300 zoo steps, seed 0; each fold's methods
fitted on the other half of each answer's prompts), strength 2 unless said:

    method       readout_auroc   success   kl
    diff_means   0.997           0.960     2.90
    probe        0.999           0.925     2.18
    pca          0.997           0.944     2.92
    random       0.431           0.032     0.93      (the control; chance of a given answer ≈ 1/7)
    sae          0.969           0.377     1.29
    logit_lens   0.993           0.980     1.08      (= tuned_lens at the last block)
    prompting    –               0.063     2.89      (strength 1: one target token before the prompt)

Seeds 1 and 2: diff_means 0.996 / 0.937 vs random 0.044 / 0.056.
"""

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from assay.bench.lenses.family import FAMILY, LensesSettings
from assay.bench.runner import run_family
from assay.cli import app
from assay.config import ConfigError
from assay.report import read_section

METHODS = ("diff_means:strength=1|2", "probe:strength=2", "pca:strength=2", "random:strength=2", "sae:strength=2",
           "logit_lens:strength=2", "tuned_lens:strength=2", "prompting:strength=1")
SETTINGS = LensesSettings(sae_steps=60, tuned_steps=10)


def _one_thread(fn):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def bench(tmp_path_factory, assay_cache):
    """The family on the default cyclic world (seed 0), written to a module-scoped folder."""
    out = tmp_path_factory.mktemp("bench-lenses")
    res = _one_thread(lambda: run_family(FAMILY, worlds=("cyclic",), methods=METHODS, seeds=(0,), settings=SETTINGS,
                                         out_dir=out))
    return res, out


def _metrics(res):
    return {(r["method"], r["level"]): r["metrics"] for r in res.runs}


def test_every_method_scored_and_rerun_is_cached(bench):
    res, out = bench
    m = _metrics(res)
    assert res.computed == len(res.runs) == 9
    assert {k[0] for k in m} == {s.split(":")[0] for s in METHODS}
    for (name, _), v in m.items():
        assert 0.0 <= v["success"] <= 1.0 and v["kl"] > 0 and v["model_acc"] >= 0.95
        assert ("readout_auroc" in v) == (name != "prompting")  # prompting reads nothing out
    again = _one_thread(lambda: run_family(FAMILY, worlds=("cyclic",), methods=METHODS, seeds=(0,), settings=SETTINGS,
                                           out_dir=out, report=False))
    assert again.computed == 0 and _metrics(again) == m


def test_resume_recomputes_exactly_the_deleted_run(bench, tmp_path):
    res, out = bench
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = next(r for r in res.runs if r["method"] == "sae")
    (copy / "cache" / f"{victim['key']}.json").unlink()
    again = _one_thread(lambda: run_family(FAMILY, worlds=("cyclic",), methods=METHODS, seeds=(0,), settings=SETTINGS,
                                           out_dir=copy, report=False))
    assert again.computed == 1
    redone = next(r for r in again.runs if r["key"] == victim["key"])
    assert not redone["cached"] and redone["metrics"] == pytest.approx(victim["metrics"], abs=1e-9)


def test_directions_steer_to_the_worlds_answer_far_above_random(bench):
    """The scientific check (module docstring): fitted directions read the answer out and move it to the target;
    a random direction of the same norm does neither."""
    m = _metrics(bench[0])
    dm, rnd = m[("diff_means", "strength=2")], m[("random", "strength=2")]
    assert dm["success"] >= 0.85 and rnd["success"] <= 0.15 and dm["success"] - rnd["success"] >= 0.7
    assert dm["readout_auroc"] >= 0.95 and abs(rnd["readout_auroc"] - 0.5) <= 0.15
    assert m[("probe", "strength=2")]["success"] >= 0.8 and m[("pca", "strength=2")]["success"] >= 0.8
    assert m[("diff_means", "strength=1")]["success"] < dm["success"]  # stronger edit, more success
    assert m[("diff_means", "strength=1")]["kl"] < dm["kl"]  # … at a higher coherence cost
    # closed form: at the last block the final norm + unembedding are the model's output, so the tuned lens's
    # translator gets no gradient and stays zero — it is the logit lens (up to the two pseudo-inverses' rounding)
    assert m[("tuned_lens", "strength=2")] == pytest.approx(m[("logit_lens", "strength=2")], rel=1e-6)
    assert m[("logit_lens", "strength=2")]["success"] >= 0.9
    assert m[("prompting", "strength=1")]["success"] <= 0.2  # the world model never saw a prefix


def test_section_and_tables(bench):
    res, out = bench
    sec = read_section(out)
    (table,) = sec.tables
    assert table.columns == ["world", "method", "level", "readout_auroc", "success", "kl", "model_acc"]
    assert len(table.rows) == 9
    row = next(r for r in table.rows if r[1] == "random")
    assert float(row[4]) == pytest.approx(_metrics(res)[("random", "strength=2")]["success"], abs=1e-3)
    (plot,) = sec.plots
    assert plot.path.name == "tradeoff.png" and plot.path.stat().st_size > 5000
    assert any("Bhalla" in n for n in sec.notes)
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["metric"] for r in rows} >= {"readout_auroc", "success", "kl"}


def test_cli_bench_family_lenses(assay_cache, tmp_path):
    out = tmp_path / "cli"
    res = _one_thread(lambda: CliRunner().invoke(app, [
        "bench", "--family", "lenses", "--seeds", "0", "--worlds", "cyclic:site=blocks.0",
        "--methods", "diff_means:strength=2", "--methods", "random:strength=2",
        "--options", "sae_steps=10", "--out-dir", str(out)]))
    assert res.exit_code == 0, res.output
    assert (out / "summary.csv").is_file() and (out / "section.json").is_file()
    rows = json.loads((out / "summary.json").read_text())
    assert {(r["method"], r["metric"]) for r in rows} >= {("diff_means", "success"), ("random", "kl")}
    assert "diff_means" in res.output and "2 runs (2 computed, 0 cached)" in res.output


def test_bad_specs_fail_before_any_work(assay_cache, tmp_path):
    for spec, msg in (("prompting:strength=0.5", "integer"), ("probe:C=-1", "positive"), ("pca:variant=x", "variant"),
                      ("diff_means:foo=1", "unknown parameter"), ("sae:k=0", "integers"), ("lda", "unknown method"),
                      ("random:strength=nan", "finite")):
        with pytest.raises(ConfigError, match=msg):
            run_family(FAMILY, worlds=("cyclic",), methods=(spec,), seeds=(0,), out_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown world"):
        run_family(FAMILY, worlds=("dyck",), methods=("random",), seeds=(0,), out_dir=tmp_path)
    assert not list((tmp_path / "cache").glob("*.json"))
    with pytest.raises(ConfigError, match="d_model"):
        LensesSettings(d_model=31)
    with pytest.raises(ConfigError, match="unknown parameter.*layer"):
        FAMILY.prepare("cyclic:layer=3", 0, SETTINGS)
    with pytest.raises(ConfigError, match=r"blocks\.0\.\.blocks\.1"):
        _one_thread(lambda: FAMILY.prepare("cyclic:site=blocks.5", 0, SETTINGS))
