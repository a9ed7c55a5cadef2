"""``assay robustness`` end to end on the subspace world (tiny sizes), and its config errors."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assay.cli import app
from assay.config import ConfigError
from assay.report import read_section
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
    # the legacy --out file also names the output folder (rob.json -> rob/), which holds the section
    sec = read_section(tmp_path / "rob")
    assert json.loads((tmp_path / "rob" / "rows.json").read_text())["rows"] == rows
    assert (tmp_path / "rob" / "report.html").is_file()
    tables = {t.title.split(" (")[0]: t for t in sec.tables}
    avg = {r[0]: r for r in tables["Average-case robustness p_σ(x)"].rows}
    assert set(avg) == {"mc", "taylor", "softmax"}
    assert avg["taylor"][1] == pytest.approx(by[("average_case", "taylor")])
    assert avg["taylor"][2] == pytest.approx(by[("average_case_error_vs_mc", "taylor")])
    assert avg["mc"][2] is None
    pgd = tables["PGD robust accuracy"].rows
    assert [r[0] for r in pgd] == [0.0, 0.5]
    assert [r[1] for r in pgd] == pytest.approx([by[("robust_accuracy", "eps=0")], by[("robust_accuracy", "eps=0.5")]])
    curv = {r[0]: r[1] for r in tables["Loss curvature"].rows}
    assert curv["curvature"] == pytest.approx(by[("curvature", "curvature")])
    assert len(sec.plots) == 1 and sec.plots[0].path.suffix == ".svg" and sec.plots[0].path.is_file()


def test_cli_out_dir_without_json(tmp_path):
    res = CliRunner().invoke(app, ["robustness", "--world", "mixture", "--n-train", "200", "--n-eval", "4",
                                   "--epochs", "1", "--mc-samples", "200", "--estimators", "mc",
                                   "--epsilons", "0", "--epsilons", "0.1", "--epsilons", "0.3",
                                   "--out-dir", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    sec = read_section(tmp_path / "r")
    assert sec.title == "Robustness: mixture world"
    acc = [r[1] for r in next(t for t in sec.tables if t.title.startswith("PGD")).rows]
    assert len(acc) == 3 and all(0 <= a <= 1 for a in acc) and acc[2] <= acc[0]
    assert RobustnessConfig().section_dir == Path("runs/robustness")
    assert RobustnessConfig(out=Path("a/b.json")).section_dir == Path("a/b")


def test_cli_rejects_bad_values():
    res = CliRunner().invoke(app, ["robustness", "--sigma", "0"])
    assert res.exit_code != 0 and "sigma must be" in res.output
    with pytest.raises(ConfigError, match="epsilons"):
        RobustnessConfig(epsilons=(-0.1,))
    with pytest.raises(ConfigError, match="estimators"):
        RobustnessConfig(estimators=("bogus",))
    with pytest.raises(ConfigError, match="is a folder"):
        RobustnessConfig(out=Path("."))
