"""The robustness bench family: estimators against a Monte Carlo ground truth, PGD, curvature, the
off-manifold regularisation sweep and its three regimes; cache, resume, section, ``assay bench --family
robustness``, spec validation."""

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from assay.bench.robustness import FAMILY, RobustnessSettings, parse_world
from assay.bench.runner import run_family
from assay.cli import app
from assay.config import ConfigError
from assay.evaluate.estimation import mean_absolute_error
from assay.report import read_section
from assay.robustness.average_case import ESTIMATORS
from assay.robustness.curvature import loss_curvature
from assay.robustness.off_manifold import gradient_manifold_alignment

SETTINGS = RobustnessSettings(n_train=1000, n_eval=32, epochs=5, reference_samples=4000)
NOISE, GRAD = "off_manifold,regulariser=noise", "off_manifold,regulariser=gradient_norm"
METHODS = (*(f"{e}:sigma=0.05" for e in ESTIMATORS), "pgd:eps=0|0.1", "curvature:iters=5",
           "off_manifold:regulariser=noise,strength=0|0.3|10",
           "off_manifold:regulariser=gradient_norm,strength=0|0.1|1|100")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("robustness")
    return run_family(FAMILY, worlds=("subspace",), methods=METHODS, seeds=(0, 1), settings=SETTINGS, out_dir=out)


def _metrics(res):
    return {(r["world"], r["method"], r["level"], r["seed"]): r["metrics"] for r in res.runs}


def test_estimators_match_monte_carlo_on_the_smooth_world_and_beat_softmax(bench):
    err = {(r["method"], r["seed"]): r["metrics"]["error_vs_mc"] for r in bench.runs if r["method"] in ESTIMATORS}
    # Measured (subspace world, MLP on 1000 examples x 5 epochs, sigma = 0.05, 32 points, reference 4000
    # copies), seeds 0 / 1: taylor 0.0016 / 0.0012, mmse 0.0010 / 0.0010 (the reference's own sampling noise
    # is ~0.001-0.002), mc with 500 copies 0.0017 / 0.0018, taylor_mvs 0.018 / 0.030, mmse_mvs 0.018 / 0.029,
    # softmax 0.058 / 0.086. Seeds 0-4: taylor and mmse <= 0.0028, the mvs variants <= 0.044.
    for seed in (0, 1):
        for est in ("taylor", "mmse"):
            assert err[est, seed] < 0.005
            assert err["softmax", seed] > 10 * err[est, seed]
        for est in ("taylor_mvs", "mmse_mvs"):
            assert err[est, seed] < 0.06
        assert 0 < err["mc", seed] < 0.01  # its own noise stream: never zero, but within sampling error
    mvs = sum(err[e, s] for e in ("taylor_mvs", "mmse_mvs") for s in (0, 1)) / 4
    assert sum(err["softmax", s] for s in (0, 1)) / 2 > 2 * mvs


def test_pgd_and_curvature_agree_with_direct_computation(bench):
    m = _metrics(bench)
    for seed in (0, 1):
        clean, attacked = m["subspace", "pgd", "eps=0", seed], m["subspace", "pgd", "eps=0.1", seed]
        assert clean["robust_accuracy"] == clean["clean_accuracy"] > 0.8
        assert attacked["robust_accuracy"] < clean["robust_accuracy"]
    prepared = FAMILY.prepare("subspace", 0, SETTINGS)  # seeded: the same model the bench scored
    c = loss_curvature(prepared.model, prepared.inputs, prepared.targets, iters=5,
                       generator=torch.Generator().manual_seed(0))
    got = m["subspace", "curvature", "iters=5", 0]
    assert got["curvature"] == pytest.approx(float(c.curvature.mean()), rel=1e-6)
    assert got["hessian_norm"] == pytest.approx(float(c.hessian_norm.mean()), rel=1e-6)
    assert got["grad_norm"] == pytest.approx(float(c.grad_norm.mean()), rel=1e-6)


def test_off_manifold_sweep_shows_the_three_regimes(bench):
    m = _metrics(bench)

    def at(method, strength, seed):
        return m["subspace", method, f"strength={strength}", seed]

    # Measured (subspace world d = 16, r = 2, MLP on 1000 examples x 5 epochs, 32 points), seeds 0 / 1:
    # noise std 0 / 0.3 / 10: on_off_ratio 6.94 / 12.7 / 1.11 and 8.75 / 12.3 / 0.87; manifold_alignment
    # 0.912 / 0.935 / 0.378 and 0.934 / 0.915 / 0.306 (chance ~ sqrt(2/16) = 0.35); accuracy 0.94 / 0.94 / 0.34
    # and 0.97 / 0.97 / 0.38 (chance 0.25). gradient_norm weight 0 / 0.1 / 1 / 100: on_off_ratio
    # 6.94 / 22.9 / 14.9 / 6.29 and 8.75 / 16.1 / 12.1 / 6.13; manifold_alignment 0.912 / 0.921 / 0.968 / 0.859
    # and 0.934 / 0.930 / 0.958 / 0.911; accuracy 0.94 -> 0.66 and 0.97 -> 0.47 at 100.
    for seed in (0, 1):
        weak, aligned, excessive = (at(NOISE, s, seed) for s in (0, 0.3, 10))
        assert aligned["on_off_ratio"] > 1.3 * weak["on_off_ratio"]  # more robust off the manifold
        assert aligned["accuracy"] > 0.85 and weak["manifold_alignment"] > 0.85
        assert excessive["on_off_ratio"] < 2  # robust on the manifold too
        assert excessive["manifold_alignment"] < 0.45 and excessive["accuracy"] < 0.5  # uninformative
        g0, g01, g1, g100 = (at(GRAD, s, seed) for s in (0, 0.1, 1, 100))
        assert g1["manifold_alignment"] > g0["manifold_alignment"] + 0.01  # alignment rises ...
        assert g1["manifold_alignment"] > g100["manifold_alignment"] + 0.03  # ... then falls
        assert g01["on_off_ratio"] > 1.5 * g0["on_off_ratio"] and g100["on_off_ratio"] < g01["on_off_ratio"] / 2
        assert g100["accuracy"] < g0["accuracy"] - 0.2
        assert g0 == at(NOISE, 0, seed)  # strength 0 is the same unregularised model for both


def test_off_manifold_at_strength_zero_measures_the_prepared_model(bench):
    prepared = FAMILY.prepare("subspace", 1, SETTINGS)  # seeded: strength 0 retrains exactly this model
    got = _metrics(bench)["subspace", NOISE, "strength=0", 1]
    alignment = gradient_manifold_alignment(prepared.model, prepared.inputs, prepared.tangent).mean()
    assert got["manifold_alignment"] == pytest.approx(float(alignment), rel=1e-6)
    assert got["accuracy"] == _metrics(bench)["subspace", "pgd", "eps=0", 1]["clean_accuracy"]
    assert got["change_on"] > got["change_off"] > 0 and -1 <= got["score_alignment"] <= 1


def test_cache_resume_and_section(bench):
    again = run_family(FAMILY, worlds=("subspace",), methods=METHODS, seeds=(0, 1), settings=SETTINGS,
                       out_dir=bench.out_dir)
    assert again.computed == 0 and _metrics(again) == _metrics(bench)
    victim = next(r for r in bench.runs if r["method"] == "taylor" and r["seed"] == 1)
    (bench.out_dir / "cache" / f"{victim['key']}.json").unlink()
    resumed = run_family(FAMILY, worlds=("subspace",), methods=METHODS, seeds=(0, 1), settings=SETTINGS,
                         out_dir=bench.out_dir)
    assert resumed.computed == 1
    new = _metrics(resumed)["subspace", "taylor", "sigma=0.05", 1]
    assert {k: v for k, v in new.items() if k != "seconds"} == \
        {k: v for k, v in victim["metrics"].items() if k != "seconds"}
    sec = read_section(bench.out_dir)
    tables = {t.title.split(":")[0].split(" (")[0]: t for t in sec.tables}
    avg = {r[1]: r for r in tables["Average-case robustness p_σ(x)"].rows}
    assert set(avg) == set(ESTIMATORS)
    assert [r[2] for r in tables["PGD robust accuracy"].rows] == ["eps=0", "eps=0.1"]
    assert tables["Loss curvature"].columns[3:] == ["curvature", "hessian_norm", "grad_norm"]
    off = tables["Off-manifold robustness over the regularisation sweep"]
    assert off.columns[3:6] == ["accuracy", "manifold_alignment", "on_off_ratio"] and len(off.rows) == 7
    assert [p.path.name for p in sec.plots] == ["robust_accuracy.svg", "off_manifold.svg"]
    assert all(p.path.is_file() for p in sec.plots)
    assert any(n.startswith("subspace, noise: manifold_alignment") for n in sec.notes)


def test_bench_cli_writes_summary_and_section(tmp_path):
    out = tmp_path / "b"
    res = CliRunner().invoke(app, ["bench", "--family", "robustness", "--seeds", "0", "--worlds", "mixture",
                                   "--methods", "taylor:sigma=0.3", "--methods", "pgd:eps=0|0.5",
                                   "--methods", "off_manifold:strength=0|1",
                                   "--options", "n_train=200", "--options", "n_eval=8", "--options", "epochs=2",
                                   "--options", "reference_samples=300", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    assert {(r["method"], r["level"], r["metric"]) for r in rows} >= {
        ("taylor", "sigma=0.3", "error_vs_mc"), ("pgd", "eps=0.5", "robust_accuracy")}
    section = json.loads((out / "section.json").read_text())
    assert section["title"] == FAMILY.title
    assert "off_manifold not applicable (no known tangent space): mixture." in section["notes"]
    assert not any(r["method"] == "off_manifold" for r in rows)  # nothing scored where no tangent is known


def test_low_curvature_digits_world_trains_the_lcnn():
    from assay.robustness.lcnn import LowCurvatureCNN

    prepared = FAMILY.prepare("digits:low_curvature=true", 0, RobustnessSettings(n_train=32, n_eval=4, epochs=1))
    assert isinstance(prepared.model, LowCurvatureCNN) and prepared.inputs.shape == (4, 3, 32, 32)
    assert parse_world("digits") == ("digits", False)


@pytest.mark.parametrize("spec, match", [
    ("taylor:sigma=0", "sigma"), ("mmse:n_samples=0", "n_samples"), ("softmax:noise=pink", "noise"),
    ("taylor:steps=3", "unknown parameter"), ("pgd:eps=-0.1", "eps"), ("pgd:norm=l3", "norm"),
    ("pgd:steps=1.5", "steps"), ("curvature:iters=0", "iters"), ("fgsm", "unknown method"),
    ("off_manifold:regulariser=pgd", "regulariser"), ("off_manifold:strength=-1", "strength"),
    ("off_manifold:eps=0", "eps"), ("off_manifold:sigma=0.1", "unknown parameter")])
def test_bad_method_specs_fail_before_any_work(tmp_path, spec, match):
    with pytest.raises(ConfigError, match=match):
        run_family(FAMILY, worlds=("subspace",), methods=(spec,), seeds=(0,), out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("spec, match", [("tabular:low_curvature=true", "digits world"),
                                         ("digits:width=3", "unknown world parameter"),
                                         ("digits:low_curvature=3", "true or false"), ("cifar", "unknown world")])
def test_bad_world_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_world(spec)
    with pytest.raises(ConfigError):
        RobustnessSettings(reference_samples=0)


def test_mean_absolute_error_closed_form():
    assert mean_absolute_error(torch.tensor([0.5, 1.0, 0.2]), torch.tensor([0.25, 1.0, 0.3])) == pytest.approx(0.35 / 3)
    with pytest.raises(ValueError, match="shape"):
        mean_absolute_error(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="at least one"):
        mean_absolute_error(torch.ones(0), torch.ones(0))
