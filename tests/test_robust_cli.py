"""``assay robustness`` end to end on the subspace world (tiny sizes), and its config errors."""

import json

import pytest
from typer.testing import CliRunner

from assay.cli import app
from assay.config import ConfigError
from assay.robustness.suite import RobustnessConfig


def test_cli_runs_and_writes_rows(tmp_path):
    out = tmp_path / "rob.json"
    res = CliRunner().invoke(app, ["robustness", "--world", "subspace", "--n-train", "300", "--n-eval", "8",
                                   "--epochs", "3", "--mc-samples", "500", "--estimators", "mc",
                                   "--estimators", "taylor", "--estimators", "softmax", "--epsilons", "0",
                                   "--epsilons", "0.5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    by = {(r["section"], r["name"]): r["value"] for r in rows}
    assert 0 <= by[("average_case", "mc")] <= 1
    assert by[("robust_accuracy", "eps=0")] == pytest.approx(by[("accuracy", "clean")])
    assert by[("robust_accuracy", "eps=0.5")] <= by[("robust_accuracy", "eps=0")]
    assert ("average_case_error_vs_mc", "taylor") in by and by[("curvature", "hessian_norm")] >= 0


def test_cli_rejects_bad_values():
    res = CliRunner().invoke(app, ["robustness", "--sigma", "0"])
    assert res.exit_code != 0 and "sigma must be" in res.output
    with pytest.raises(ConfigError, match="epsilons"):
        RobustnessConfig(epsilons=(-0.1,))
    with pytest.raises(ConfigError, match="estimators"):
        RobustnessConfig(estimators=("bogus",))
