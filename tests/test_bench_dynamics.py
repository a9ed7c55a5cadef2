"""``assay dynamics`` (assay.bench.dynamics): series, curves, transitions, section, reuse and the CLI, on a
few training steps of the Dyck world's tiny model."""

from __future__ import annotations

import csv
import math

import pytest
from typer.testing import CliRunner

from assay.bench.dynamics import DynamicsConfig, run_dynamics
from assay.config import ConfigError
from assay.dynamics.checkpoints import load_series, log_steps
from assay.dynamics.transitions import fit_transition, normalise_loss
from assay.report import read_section

TINY = dict(world="cyclic", steps=40, n_checkpoints=6, first=2, probe_rows=16)


def test_run_dynamics_writes_series_curves_transitions_and_section(tmp_path):
    cfg = DynamicsConfig(**TINY, out_dir=tmp_path)
    r = run_dynamics(cfg)
    assert r.trained
    series = load_series(tmp_path / "series")
    assert series.steps == log_steps(40, 6, 2) and series.config["world_name"] == "cyclic"
    assert set(r.curves) == {"eval_loss", "answer_acc", "probe:concept"}
    for curve in r.curves.values():
        assert [s for s, _ in curve] == list(series.steps)
    # independent check: the separate evaluation pass at the last checkpoint reproduces train()'s own evaluation
    assert r.curves["eval_loss"][-1][1] == pytest.approx(series.meta["history"][-1]["eval_loss"], abs=1e-5)
    assert r.curves["eval_loss"][-1][1] < r.curves["eval_loss"][0][1]  # it learned something in 40 steps
    # curves.csv holds every value; the transitions are the fits of the normalised curves
    with open(tmp_path / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(c) for c in r.curves.values())
    loss = [float(row["value"]) for row in rows if row["curve"] == "eval_loss"]
    refit = fit_transition(list(series.steps), list(normalise_loss(loss, floor=min(loss))))
    got = r.transitions["eval_loss"]
    assert (math.isnan(refit.t0) and math.isnan(got.t0)) or refit.t0 == pytest.approx(got.t0)
    assert refit.abrupt == got.abrupt
    section = read_section(tmp_path)
    assert section.title == "Learning dynamics: cyclic"
    assert len(section.tables[0].rows) == len(r.transitions)
    assert (tmp_path / "plots" / "curves.svg").is_file() and (tmp_path / "report.html").is_file()
    # a second run with the same settings reuses the series and gives the same curves
    again = run_dynamics(cfg)
    assert not again.trained and again.curves == r.curves


def test_bad_dynamics_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="first checkpoint 50 lies after the last step 40"):
        DynamicsConfig(world="dyck", steps=40, first=50)
    with pytest.raises(ConfigError, match="world must be one of"):
        DynamicsConfig(world="superposition")
    with pytest.raises(ConfigError, match="fewer than 5 distinct checkpoints"):
        DynamicsConfig(world="cyclic", steps=20, n_checkpoints=4, first=2)


def test_cli_dynamics(tmp_path):
    from assay.cli import app

    args = ["dynamics", "--world", "cyclic", "--steps", "20", "--n-checkpoints", "6", "--first", "2",
            "--probe-rows", "16", "--out-dir", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "eval_loss" in res.output and "section:" in res.output
    assert (tmp_path / "section.json").is_file() and (tmp_path / "series" / "config.json").is_file()
    bad = CliRunner().invoke(app, [*args[:-2], "--out-dir", str(tmp_path / "b"), "--site", "blocks.9"])
    assert bad.exit_code != 0 and "blocks.9" in bad.output
