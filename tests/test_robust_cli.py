"""``assay robustness`` end to end on the subspace world (tiny sizes): the robustness bench family run
through the bench runner into --out-dir, and its config errors."""

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assay.cli import app
from assay.cli.robustness import RobustnessCommand
from assay.config import ConfigError
from assay.report import read_section

ARGS = ["robustness", "--world", "subspace", "--n-train", "300", "--n-eval", "8", "--epochs", "3", "--mc-samples",
        "500", "--estimators", "mc", "--estimators", "taylor", "--estimators", "softmax", "--epsilons", "0",
        "--epsilons", "0.5", "--strengths", "0", "--strengths", "10"]


def test_cli_runs_the_family_into_out_dir_and_resumes(tmp_path):
    out = tmp_path / "r"
    res = CliRunner().invoke(app, [*ARGS, "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # the table title may wrap
    assert "assay bench --family robustness --worlds subspace" in said and "(8 computed, 0 cached)" in said
    summary = {(r["method"], r["level"], r["metric"]): float(r["mean"])
               for r in csv.DictReader((out / "summary.csv").read_text().splitlines())}
    level = "sigma=0.1,noise=gaussian"
    assert 0 <= summary["mc", level, "mean_p"] <= 1 and summary["taylor", level, "error_vs_mc"] >= 0
    assert summary["mc", level, "reference_p"] == summary["taylor", level, "reference_p"]  # one ground truth
    pgd = "pgd,norm=linf,steps=10"
    assert summary[pgd, "eps=0.0", "robust_accuracy"] == summary[pgd, "eps=0.0", "clean_accuracy"]
    assert summary[pgd, "eps=0.5", "robust_accuracy"] <= summary[pgd, "eps=0.0", "robust_accuracy"]
    assert summary["curvature", "iters=10", "hessian_norm"] >= 0
    off = "off_manifold,regulariser=noise"  # noise std 10 >> the data: robust in every direction, at chance
    assert summary[off, "strength=0.0", "accuracy"] == summary[pgd, "eps=0.0", "clean_accuracy"]
    assert summary[off, "strength=10.0", "on_off_ratio"] < summary[off, "strength=0.0", "on_off_ratio"]
    sec = read_section(out)
    assert (out / "report.html").is_file() and len(sec.plots) == 2 and all(p.path.is_file() for p in sec.plots)
    avg = {r[1]: r for r in sec.tables[0].rows}
    assert set(avg) == {"mc", "taylor", "softmax"}
    assert float(avg["taylor"][3]) == pytest.approx(summary["taylor", level, "error_vs_mc"], rel=1e-3)
    again = CliRunner().invoke(app, [*ARGS, "--out-dir", str(out)])
    assert again.exit_code == 0 and "(0 computed, 8 cached)" in " ".join(again.output.split())


def test_command_builds_the_bench_specs():
    cfg = RobustnessCommand(world="digits", low_curvature=True, estimators=("mmse",), sigma=0.05, noise="uniform",
                            epsilons=(0.0, 0.1), norm="l2", pgd_steps=5, curvature_iters=3, mc_samples=800)
    assert cfg.world_spec == "digits:low_curvature=true"
    assert cfg.method_specs == ("mmse:sigma=0.05,noise=uniform", "pgd:eps=0.0|0.1,norm=l2,steps=5", "curvature:iters=3")
    assert cfg.settings().reference_samples == 800
    assert RobustnessCommand().out_dir == Path("runs/robustness")
    assert len(RobustnessCommand(epsilons=(), strengths=()).method_specs) == 7  # every estimator, curvature
    assert RobustnessCommand(regulariser="gradient_norm", strengths=(0.0, 1.0)).method_specs[-1] == \
        "off_manifold:regulariser=gradient_norm,strength=0.0|1.0"
    assert not any(s.startswith("off_manifold") for s in RobustnessCommand(world="tabular").method_specs)


def test_cli_rejects_bad_values():
    res = CliRunner().invoke(app, ["robustness", "--sigma", "0"])
    assert res.exit_code != 0 and "sigma" in res.output
    with pytest.raises(ConfigError, match="eps"):
        RobustnessCommand(epsilons=(-0.1,))
    with pytest.raises(ConfigError, match="unknown method"):
        RobustnessCommand(estimators=("bogus",))
    with pytest.raises(ConfigError, match="digits world"):
        RobustnessCommand(world="tabular", low_curvature=True)
    with pytest.raises(ConfigError, match="reference_samples"):
        RobustnessCommand(mc_samples=0)
    with pytest.raises(ConfigError, match="strength"):
        RobustnessCommand(strengths=(-1.0,))
