"""The attribution bench family: method specs read from the registry (and fail before any work), the run
cache through the runner (a re-run computes nothing; a deleted cache file recomputes exactly that run), the
report section and plots, the CLI, and the science on the signal–distractor digits: gradient-family maps of
the trained classifier put their mass on the signal digit far above chance and above the random control,
and depend on the learnt weights (randomisation Spearman well below the control's 1)."""

import json
import math
import os
from pathlib import Path

import pytest

from assay.bench.attribution import FAMILY, AttributionSettings
from assay.bench.runner import run_family
from assay.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"n_examples": 8, "n_train": 500, "epochs": 3, "plots": False}
"""A tabular classifier trained in about a second (held-out accuracy ≈ 0.8)."""


def _metric(res, method, metric, level=None):
    (r,) = [r for r in res.summary if r["method"] == method and r["metric"] == metric
            and (level is None or r["level"] == level)]
    return r["mean"]


def test_method_specs_come_from_the_registry_and_fail_early(tmp_path):
    ig = FAMILY.expand("integrated_gradients:steps=16|64")
    assert [(r.level, r.params) for r in ig] == [("steps=16", {"steps": 16}), ("steps=64", {"steps": 64})]
    (occ,) = FAMILY.expand("occlusion:patch=4")
    (lime,) = FAMILY.expand("lime:n_samples=200")
    assert occ.params == {"patch": 4} and lime.params == {"n_samples": 200}
    assert len(FAMILY.expand("diet:rounds=1|2")) == 2
    with pytest.raises(ConfigError, match="unknown method 'ig'.*integrated_gradients"):
        FAMILY.expand("ig:steps=4")
    with pytest.raises(ConfigError, match="unknown parameter.*stepz.*valid:.*steps"):
        FAMILY.expand("integrated_gradients:stepz=4")
    with pytest.raises(ConfigError, match="unknown parameter.*patch"):
        FAMILY.expand("gradient:patch=4")  # the gradient scores pixels, not patches
    with pytest.raises(ConfigError, match="valid: none"):
        FAMILY.expand("random:k=2")
    with pytest.raises(ConfigError, match="diet"):
        FAMILY.expand("diet:rounds=0")
    with pytest.raises(ConfigError, match="integrated_gradients"):
        FAMILY.expand("integrated_gradients:steps=0")
    with pytest.raises(ConfigError, match="n_examples"):
        AttributionSettings(n_examples=0)
    with pytest.raises(ConfigError, match="gan_samples"):
        AttributionSettings(gan_samples=-1)
    with pytest.raises(ConfigError, match="unknown neighbourhood 'uniform'.*gaussian, mask"):
        AttributionSettings(neighbourhood="uniform:sigma=0.1")
    with pytest.raises(ConfigError, match="gaussian takes one value of each of sigma, n_samples; unknown: keep"):
        AttributionSettings(neighbourhood="gaussian:keep=0.5")
    with pytest.raises(ConfigError, match="patch must be a positive integer"):
        AttributionSettings(neighbourhood="mask:patch=0")
    with pytest.raises(ConfigError, match="sigma > 0"):
        AttributionSettings(neighbourhood="gaussian:sigma=0")
    # a bad spec stops the bench before any world is prepared
    with pytest.raises(ConfigError, match="stepz"):
        run_family(FAMILY, worlds=("tabular",), methods=("gradient", "integrated_gradients:stepz=4"), seeds=(0,),
                   out_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown world 'mnist'"):
        run_family(FAMILY, worlds=("mnist",), seeds=(0,), out_dir=tmp_path)
    assert not list((tmp_path / "cache").glob("*.json"))


def test_cache_resume_section_and_plots(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from assay.report import read_section

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "models"))
    settings = AttributionSettings(**{**TINY, "plots": True})
    kw = dict(worlds=("tabular:top_k=3",), methods=("gradient", "integrated_gradients:steps=4|8", "gradcam", "random"),
              seeds=(0, 1), settings=settings, out_dir=tmp_path / "out")
    res = run_family(FAMILY, **kw)
    assert res.computed == 10
    # Grad-CAM needs images: no metrics on the tabular world, and the section says so
    assert all(not r["metrics"] for r in res.runs if r["method"] == "gradcam")
    ig = [r for r in res.summary if r["method"] == "integrated_gradients" and r["metric"] == "relevance_mass"]
    assert {r["level"] for r in ig} == {"steps=4", "steps=8"} and all(r["n"] == 2 for r in ig)
    assert all(r["ci_low"] <= r["mean"] <= r["ci_high"] for r in ig)
    assert _metric(res, "random", "randomisation_spearman") == pytest.approx(1.0)
    # a re-run computes nothing and gives the same numbers
    again = run_family(FAMILY, **kw)
    assert again.computed == 0 and again.summary == res.summary
    # resume: a deleted cache file recomputes exactly that run, with the same metrics
    victim = next(r for r in res.runs if r["method"] == "integrated_gradients" and r["seed"] == 1)
    (tmp_path / "out" / "cache" / f"{victim['key']}.json").unlink()
    resumed = run_family(FAMILY, **kw)
    assert resumed.computed == 1
    redone = next(r for r in resumed.runs if r["key"] == victim["key"])
    assert not redone["cached"] and redone["metrics"] == victim["metrics"]
    # the section: one table per world, sorted by relevance mass, without the inapplicable method
    sec = read_section(tmp_path / "out")
    assert sec.title.startswith("Attribution bench")
    (table,) = sec.tables
    assert table.columns[:2] == ["method", "level"] and table.columns[2:] == list(FAMILY.metrics)
    for r in res.runs:  # DiET's metrics (mask IoU, keep-top-1/p) are reported for every method
        if r["metrics"]:
            assert {"mask_iou", *(f"keep_top_{p}_accuracy" for p in (10, 20, 50, 100))} <= set(r["metrics"])
            assert 0 <= r["metrics"]["mask_iou"] <= 1
    assert sorted(r[0] for r in table.rows) == ["gradient", "integrated_gradients", "integrated_gradients", "random"]
    masses = [float(r[2].split()[0]) for r in table.rows]
    assert masses == sorted(masses, reverse=True)
    assert any("Not applicable (needs images): gradcam on tabular:top_k=3" in n for n in sec.notes)
    for ext in ("png", "svg"):
        (plot,) = (tmp_path / "out" / "plots").glob(f"truth_vs_sanity_*.{ext}")
        assert plot.stat().st_size > 1000
    assert "data:image/svg+xml;base64," in (tmp_path / "out" / "report.html").read_text()
    # one classifier so far (model_seed 0 for every seed); model_per_seed trains seed 1 its own
    assert len(list((tmp_path / "models" / "world_models").glob("tabular-classifier-*"))) == 1
    per_seed = AttributionSettings(**{**TINY, "model_per_seed": True})
    run_family(FAMILY, worlds=("tabular",), methods=("random",), seeds=(0, 1), settings=per_seed, out_dir=tmp_path / "p")
    assert len(list((tmp_path / "models" / "world_models").glob("tabular-classifier-*"))) == 2
    with pytest.raises(ConfigError, match="no parameterised sites.*choose from out, fc1, fc0"):
        run_family(FAMILY, worlds=("tabular",), methods=("gradient",), seeds=(0,), out_dir=tmp_path / "r",
                   settings=AttributionSettings(**{**TINY, "randomise": ("conv0",)}))


def test_cli_bench_attribution(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from assay.cli import app

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "models"))
    opts = [a for k, v in TINY.items() for a in ("--options", f"{k}={str(v).lower()}")]
    out = CliRunner().invoke(app, ["bench", "--family", "attribution", "--methods", "input_x_gradient", "--methods",
                                   "random", "--worlds", "tabular", "--seeds", "0", *opts, "--out-dir",
                                   str(tmp_path / "b")])
    assert out.exit_code == 0, out.output
    assert "2 runs (2 computed" in out.output
    assert (tmp_path / "b" / "summary.csv").exists() and (tmp_path / "b" / "section.json").exists()
    rows = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert {r["method"] for r in rows} == {"input_x_gradient", "random"}
    bad = CliRunner().invoke(app, ["bench", "--family", "attribution", "--options", "output=raw",
                                   "--out-dir", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "output" in bad.output and "Traceback" not in bad.output


@pytest.fixture
def zoo_cache(monkeypatch):
    """The zoo's digits classifier (SmallCNN, held-out accuracy 0.838) and the GAN-test's proxy (seed 1000): each
    trained once (minutes on 2 shared cores) into ``$ASSAY_TEST_CACHE`` or ``~/.cache/assay`` — the cache
    tests/test_attribution_groundtruth.py shares."""
    monkeypatch.setenv("ASSAY_CACHE", os.environ.get("ASSAY_TEST_CACHE") or str(Path.home() / ".cache" / "assay"))


def test_ground_truth_on_the_digits_world(tmp_path, zoo_cache):
    """Measured at this size (16 held-out digits of seed 0, log-softmax, the full 7-layer cascade):
    IG (16 steps) relevance mass 0.589, input×gradient 0.623, random 0.129, chance (the mask's area) 0.131;
    top-64 precision IG 0.844 vs random 0.125; deletion AUC IG 0.121 vs random 0.158; randomisation Spearman
    IG 0.401, input×gradient 0.432, random 1.000. (docs/attribution.md, 32 digits, all methods: IG 0.587.)
    DiET (2 rounds × 8 epochs): relevance mass 0.219, top-64 precision 0.324, 3.2 s with the 7 refits of the
    randomisation test; its randomisation Spearman is undefined: on the fully randomised model the masks are
    constant (every pixel erased).
    Unfaithfulness (Srinivas & Fleuret 2021): least-salient accuracy IG 0.835, input×gradient 0.848, random 0.710;
    mean |Δp| 0.132, 0.125, 0.312. GAN-test (20 samples, 20 steps along the logit attribution, the proxy of seed
    1000, held-out accuracy 0.929): gradient 0.60, input×gradient 0.55, IG 0.50, random 0.20; the explained
    model itself calls 1.00 of the gradient's samples their target and 0.05 of the random control's."""
    res = run_family(FAMILY, worlds=("digits",), seeds=(0,), out_dir=tmp_path, report=False,
                     methods=("integrated_gradients:steps=16", "input_x_gradient", "gradient", "random",
                              "diet:rounds=2,max_epochs=8"),
                     settings=AttributionSettings(n_examples=16, gan_samples=20, plots=False))
    ig = {m: _metric(res, "integrated_gradients", m) for m in FAMILY.metrics}
    ixg = {m: _metric(res, "input_x_gradient", m) for m in FAMILY.metrics}
    rnd = {m: _metric(res, "random", m) for m in FAMILY.metrics}
    chance = _metric(res, "random", "chance_mass")
    assert 0.1 < chance < 0.16  # the 16×16 digit's stroke pixels on a 32×32 canvas
    for m in (ig, ixg):  # far above chance and the control, on every agreement measure
        assert m["relevance_mass"] > 3 * chance and m["relevance_mass"] > rnd["relevance_mass"] + 0.3
        assert m["top_k_precision"] > 4 * rnd["top_k_precision"] and m["pointing_game"] > 0.8
        assert m["rank_correlation"] > rnd["rank_correlation"] + 0.3
        assert m["deletion_auc"] < rnd["deletion_auc"] - 0.02 and m["faithfulness_correlation"] > 0.2
        assert m["randomisation_spearman"] < 0.7  # the maps depend on the learnt weights
    assert abs(rnd["relevance_mass"] - chance) < 0.03 and abs(rnd["top_k_precision"] - chance) < 0.05
    assert rnd["randomisation_spearman"] == pytest.approx(1.0)  # the control ignores the weights entirely
    assert _metric(res, "integrated_gradients", "model_accuracy") > 0.8
    for m in (ig, ixg):  # removing what the map calls least salient hurts far less than removing random pixels
        assert m["least_salient_accuracy"] > rnd["least_salient_accuracy"] + 0.07
        assert m["least_salient_change"] < rnd["least_salient_change"] / 2
    # the GAN-test: ascent along the logit gradient draws digits an independent proxy recognises
    assert _metric(res, "gradient", "gan_test_accuracy") > rnd["gan_test_accuracy"] + 0.2
    assert _metric(res, "gradient", "gan_model_accuracy") > 0.9 > 0.3 > _metric(res, "random", "gan_model_accuracy")
    assert _metric(res, "gradient", "gan_proxy_accuracy") > 0.85
    assert not [r for r in res.summary if r["method"] == "diet" and r["metric"].startswith("gan_")]
    diet_mass = _metric(res, "diet", "relevance_mass")
    assert diet_mass > chance + 0.05, diet_mass
    assert math.isnan(_metric(res, "diet", "randomisation_spearman"))


def test_lfa_fidelity_report_ranks_the_surrogate_that_matches_the_neighbourhood(tmp_path, monkeypatch):
    """Han, Srinivas & Lakkaraju 2022 on the tabular MLP: under small Gaussian noise the gradient's surrogate
    fits best; under binary masks (zero fill) the removal-type explanations (input × gradient, occlusion) fit
    far better than the gradient. The report table lists methods lowest loss first."""
    from typer.testing import CliRunner

    from assay.cli import app
    from assay.report import read_section

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "models"))
    methods = ("gradient", "input_x_gradient", "occlusion", "random")
    loss = {}
    for nb in ("gaussian:sigma=0.01", "mask:n_samples=400"):
        out = tmp_path / nb.split(":")[0]
        opts = [a for k, v in {**TINY, "neighbourhood": nb}.items() for a in ("--options", f"{k}={str(v).lower()}")]
        res = CliRunner().invoke(app, ["bench", "--family", "attribution", "--worlds", "tabular", "--seeds", "0",
                                       *[a for m in methods for a in ("--methods", m)], *opts, "--out-dir", str(out)])
        assert res.exit_code == 0, res.output
        rows = json.loads((out / "summary.json").read_text())
        loss[nb] = {r["method"]: r["mean"] for r in rows if r["metric"] == "lfa_loss"}
        lfa = read_section(out).tables[1]
        assert lfa.title.startswith(f"tabular: LFA fidelity in the neighbourhood {nb}")
        ranked = [r[0] for r in lfa.rows]
        assert ranked == sorted(loss[nb], key=loss[nb].get) and ranked[-1] == "random"
    g, m = loss["gaussian:sigma=0.01"], loss["mask:n_samples=400"]
    # measured: Gaussian σ = 0.01 gradient 4.1e-10, input×gradient 2.1e-6, occlusion 2.4e-6, random 5.8e-4;
    # masks gradient 0.0236, input×gradient 0.0016, occlusion 0.0013, random 23.3
    assert g["gradient"] < g["input_x_gradient"] / 100 and g["gradient"] < g["occlusion"] / 100, g
    assert m["input_x_gradient"] < m["gradient"] / 5 and m["occlusion"] < m["gradient"] / 5, m


def test_robust_world_fine_tunes_a_pgd_copy(tmp_path, monkeypatch):
    """``robust_eps`` in a world spec explains a PGD-fine-tuned copy of the classifier (its own accuracy); a
    negative ε fails before any work."""
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "models"))
    settings = AttributionSettings(**TINY, robust_n_train=200, robust_epochs=1, robust_steps=2)
    res = run_family(FAMILY, worlds=("tabular", "tabular:robust_eps=0.3"), methods=("gradient",), seeds=(0,),
                     settings=settings, out_dir=tmp_path / "out", report=False)
    acc = {r["world"]: r["metrics"]["model_accuracy"] for r in res.runs}
    grad = {r["world"]: r["metrics"]["mask_iou"] for r in res.runs}
    assert set(acc) == {"tabular", "tabular:robust_eps=0.3"} and acc["tabular"] != acc["tabular:robust_eps=0.3"]
    assert grad["tabular"] != grad["tabular:robust_eps=0.3"]  # a different model explained
    with pytest.raises(ConfigError, match="robust_eps must be"):
        run_family(FAMILY, worlds=("tabular:robust_eps=-1",), methods=("gradient",), seeds=(0,), settings=settings,
                   out_dir=tmp_path / "bad", report=False)
    with pytest.raises(ConfigError, match="robust_epochs"):
        AttributionSettings(robust_epochs=0)


def test_robust_model_makes_gradient_maps_pass_keep_top(tmp_path, zoo_cache):
    """DiET's robust-vs-standard claim, the half that reproduces: keep-top-1/10 accuracy of IG on the zoo's digits
    classifier vs its PGD-fine-tuned copy (ε = 0.05, 2 epochs on 2,000 digits). Measured (32 digits, seeds 0–2):
    IG 0.281 → 0.854, gradient 0.281 → 0.625, random 0.115 → 0.198; at seed 0 with 16 digits IG 0.312 → 0.875,
    random 0.125 → 0.312. Mask IoU does not rise (IG 0.508 → 0.532, gradient 0.479 → 0.400; docs/attribution.md)."""
    res = run_family(FAMILY, worlds=("digits", "digits:robust_eps=0.05"), seeds=(0,), out_dir=tmp_path, report=False,
                     methods=("integrated_gradients:steps=16", "random"),
                     settings=AttributionSettings(n_examples=16, gan_samples=0, faithfulness_runs=3, plots=False))
    keep = {(r["world"], r["method"]): r["metrics"]["keep_top_10_accuracy"] for r in res.runs}
    gain_ig = keep[("digits:robust_eps=0.05", "integrated_gradients")] - keep[("digits", "integrated_gradients")]
    gain_random = keep[("digits:robust_eps=0.05", "random")] - keep[("digits", "random")]
    assert gain_ig > 0.3 and gain_ig > gain_random + 0.2, keep
