"""The dictionaries bench family: method/world specs, baselines against scikit-learn and closed forms, the
run cache through the runner (re-run computes nothing, a changed method only its runs, a torn cache file
is recomputed), plots, the report with its feature browser, the CLI, and the sanity ordering at small
size (TopK SAE beats PCA on superposition recovery; the random dictionary is near chance)."""

import json
import math

import pytest
import torch

from assay.bench.baselines import fit_baseline, fit_ica, fit_pca
from assay.bench.dictionaries import FAMILY, DictionarySettings
from assay.bench.methods import expand_method
from assay.bench.runner import run_family
from assay.bench.spec import parse_spec
from assay.bench.worlds import load_world, parse_world
from assay.config import ConfigError
from assay.worlds.base import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")


def test_method_and_world_specs():
    runs = expand_method("topk:k=2|4,expansion=2,steps=9")
    assert [r.level for r in runs] == ["k=2", "k=4"]
    assert runs[0].label == "topk,expansion=2" and runs[1].params == {"expansion": 2, "steps": 9, "k": 4}
    (pca,) = expand_method("pca:n=3")
    assert (pca.label, pca.level) == ("pca", "n=3")
    (wide,) = expand_method("relu:expansion=8")
    assert (wide.label, wide.level) == ("relu", "default")  # an unswept expansion is not a level
    with pytest.raises(ConfigError, match="unknown method 'svd'"):
        expand_method("svd:n=2")
    with pytest.raises(ConfigError, match="key=v1"):
        parse_spec("topk:k", FAMILY.method_names())
    assert parse_world("hierarchy:hierarchy=2/0/0,d_model=8") == ("hierarchy", {"hierarchy": (2, 0, 0), "d_model": 8})
    with pytest.raises(ConfigError, match="unknown world 'mnist'"):
        parse_world("mnist")
    with pytest.raises(ConfigError, match="n_eval at least 16"):
        DictionarySettings(n_eval=4)


def test_pca_matches_sklearn_and_is_exact_at_full_rank():
    from sklearn.decomposition import PCA

    g = make_generator(0)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    lens = fit_pca(x, 3)
    ref = PCA(n_components=3).fit(x.numpy())
    cos = (lens.decoder.double() * torch.as_tensor(ref.components_)).sum(1).abs()
    assert cos.tolist() == pytest.approx([1.0] * 3, abs=1e-5)  # same directions up to sign
    z = lens.encode(x)
    assert (z >= 0).all() and z.shape == (500, 6) and ((z != 0).sum(1) <= 3).all()
    full = fit_pca(x, 6)
    assert torch.allclose(full.decode(full.encode(x)).double(), x, atol=1e-4)
    with pytest.raises(ValueError, match="at most d=6"):
        fit_pca(x, 7)


def test_ica_unmixes_independent_sources_and_random_is_k_sparse():
    g = make_generator(1)
    s = -torch.log(torch.rand(4000, 2, generator=g, dtype=torch.float64)) * torch.sign(
        torch.rand(4000, 2, generator=g, dtype=torch.float64) - 0.5)  # Laplace sources from our generator
    A = torch.tensor([[1.0, 0.5], [0.3, 1.0]], dtype=torch.float64)
    lens = fit_ica(s @ A, 2, seed=0)
    u = lens.encode(s @ A)
    u = (u[:, :2] - u[:, 2:]).double()
    corr = torch.corrcoef(torch.cat([u, s], 1).t())[:2, 2:].abs()
    assert corr.max(1).values.min().item() > 0.95
    r = fit_baseline("random", s @ A, n=8, k=3, seed=0)
    assert ((r.encode(s @ A) != 0).sum(1) <= 3).all() and r.atoms.shape == (8, 2)


def _suite(tmp_path, methods=("topk:k=3", "pca:n=4", "random"), worlds=("superposition:n_features=24,d_model=8",),
           seeds=(0,), report=False, **settings):
    s = DictionarySettings(**{"steps": 250, "batch_size": 256, "n_eval": 1024, "plots": False, **settings})
    return run_family(FAMILY, methods=methods, worlds=worlds, seeds=seeds, settings=s, out_dir=tmp_path,
                      report=report)


def _metric(res, method, metric):
    (r,) = [r for r in res.summary if r["method"] == method and r["metric"] == metric]
    return r["mean"]


def test_sanity_ordering_and_cache(tmp_path):
    res = _suite(tmp_path)
    assert res.computed == 3
    topk, pca, rnd = (_metric(res, m, "recovery_mcc") for m in ("topk", "pca", "random"))
    assert topk > 0.8 and topk > pca + 0.2 and topk > rnd + 0.2, (topk, pca, rnd)
    auc = {m: _metric(res, m, "detect_auroc") for m in ("topk", "pca", "random")}
    assert auc["topk"] > auc["random"] and auc["topk"] > auc["pca"], auc
    assert _metric(res, "random", "activation_mcc") < _metric(res, "topk", "activation_mcc") - 0.1
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0] == "world,method,level,seed,metric,value" and len(rows) > 3 * 10
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"mean", "ci_low", "ci_high", "n"} <= set(summary[0])
    # re-run: everything cached, same numbers
    again = _suite(tmp_path)
    assert again.computed == 0 and all(r["cached"] for r in again.runs)
    assert _metric(again, "topk", "recovery_mcc") == topk
    # a changed method recomputes only its runs; a torn cache file is recomputed
    changed = _suite(tmp_path, methods=("topk:k=3", "pca:n=5", "random"))
    assert changed.computed == 1
    victim = tmp_path / "cache" / f"{res.runs[0]['key']}.json"
    victim.write_text('{"world": ')
    assert _suite(tmp_path).computed == 1


def test_seeds_give_intervals_plots_and_report(tmp_path):
    pytest.importorskip("matplotlib")
    from assay.report import read_section

    res = _suite(tmp_path, methods=("pca:n=2|4", "random:k=2"), seeds=(0, 1, 2), steps=5, plots=True, report=True,
                 worlds=("hierarchy:n_features=16,hierarchy=3/3/0/0/0/0/0/0/0/0,d_model=8",))
    assert res.computed == 9
    r = [r for r in res.summary if r["method"] == "pca" and r["level"] == "n=2" and r["metric"] == "fvu"][0]
    assert r["n"] == 3 and r["ci_low"] <= r["mean"] <= r["ci_high"]
    assert not math.isnan(_metric(res, "random", "absorption"))
    for kind in ("pareto", "recovery", "detection"):
        for ext in ("png", "svg"):
            files = list((tmp_path / "plots").glob(f"{kind}_*.{ext}"))
            assert files and files[0].stat().st_size > 1000
    sec = read_section(tmp_path)
    assert sec.title.startswith("Dictionary bench") and sec.features and sec.features["latents"]
    html = (tmp_path / "report.html").read_text()
    assert "data:image/svg+xml;base64," in html and '"latents"' in html and "Feature browser" in html


def test_sequence_world_with_tiny_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    data = load_world("dyck:model_steps=20,pool_rows=8", seed=0, n_eval=256)
    assert data.eval.shape[1] == 64 and data.concepts.shape[0] == data.eval.shape[0]
    assert any(n.startswith("depth=") for n in data.concept_names)
    res = _suite(tmp_path / "b", methods=("pca:n=8",), worlds=("dyck:model_steps=20,pool_rows=8",), n_eval=256,
                 steps=5)
    ce = _metric(res, "pca", "ce_recovered")
    assert math.isfinite(ce)


def test_cli_bench(tmp_path):
    from typer.testing import CliRunner

    from assay.cli import app

    out = CliRunner().invoke(app, ["bench", "--family", "dictionaries", "--methods", "pca:n=2", "--methods",
                                   "random:k=1", "--worlds", "superposition:n_features=8,d_model=4", "--seeds", "0",
                                   "--options", "steps=5", "--options", "n_eval=256", "--options", "plots=false",
                                   "--out-dir", str(tmp_path), "--no-report"])
    assert out.exit_code == 0, out.output
    assert "2 runs (2 computed" in out.output and (tmp_path / "summary.csv").exists()
    bad = CliRunner().invoke(app, ["bench", "--methods", "nope", "--out-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown method 'nope'" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(app, ["bench", "--options", "stepz=5", "--out-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "valid keys: steps, batch_size" in bad.output
