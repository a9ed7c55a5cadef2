"""Group attribution (GGDA) and property targets on the data-attribution bench: group_trak / group_tracin
against the pointwise methods summed over groups, by group-LDS on retrainings over unions of groups; the
property target (mean loss over the targets) by property-LDS; ``assay data-attribution --groups/--target``;
every bad spec refused before any work."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from assay.bench.data_attribution import FAMILY, check_world
from assay.bench.data_attribution_groups import groups_option, target_option
from assay.bench.runner import parse_options, run_family
from assay.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = "digits:grouping=kmeans,group_size=20"
METHODS = ("random", "tracin", "group_tracin", "trak:ensemble=1", "group_trak:ensemble=1,lambda_rel=0.01")
OPTIONS = ("n_train=300", "n_test=40", "steps=100", "n_subsets=16", "n_checkpoints=3")


def _metrics(res):
    return {(r["method"], r["level"]): {k: v for k, v in r["metrics"].items() if k != "seconds"} for r in res.runs}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("data-attribution-groups")
    return out, run_family(FAMILY, worlds=[WORLD], methods=METHODS, seeds=[0], out_dir=out,
                           settings=parse_options(FAMILY, OPTIONS))


def test_group_methods_against_pointwise_summed_on_group_lds(bench):
    out, res = bench
    m = {meth: r["group_lds"] for (meth, _), r in _metrics(res).items()}
    assert set(m) == {"random", "tracin", "group_tracin", "trak", "group_trak"}
    # group TracIn is exactly pointwise TracIn summed over each group (exact gradients on both sides)
    assert m["group_tracin"] == pytest.approx(m["tracin"], abs=1e-9)
    # measured (seed 0; seed 1 in brackets): group-LDS random 0.05 [−0.07], tracin = group_tracin 0.80 [0.76],
    # trak summed 0.53 [0.51], group_trak (group kernel, λ = 0.01·trace) 0.76 [0.77]
    assert m["group_tracin"] - m["random"] > 0.5 and m["group_trak"] - m["random"] > 0.4
    again = run_family(FAMILY, worlds=[WORLD], methods=METHODS, seeds=[0], out_dir=out,
                       settings=parse_options(FAMILY, OPTIONS), report=False)
    assert again.computed == 0 and _metrics(again) == _metrics(res)


def test_section_has_the_group_lds_column(bench):
    from assay.report import read_section

    out, _ = bench
    sec = read_section(out)
    assert sec.tables[0].columns[3:] == ["group_lds", "mislabel_auroc", "seconds"]
    assert any("group-LDS" in n for n in sec.notes) and {p.path.name for p in sec.plots} == {"lds.png"}


def test_cli_groups_and_property_target(tmp_path):
    from assay.cli import app

    args = ["data-attribution", "--groups", "class:size=40", "--target", "mean", "--seeds", "0", "--worlds", "digits",
            *[a for m in ("random", "group_tracin", "tracin") for a in ("--methods", m)],
            *[a for o in OPTIONS for a in ("--options", o)], "--out-dir", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in json.loads((tmp_path / "summary.json").read_text()) if r["metric"] == "property_lds"}
    assert rows["group_tracin"]["mean"] == pytest.approx(rows["tracin"]["mean"], abs=1e-9)  # one property gradient
    # measured: property-LDS (mean loss over 40 targets, 8 class groups of ≈40) group_tracin 0.85, random −0.2
    # (seed 1: 0.53 and −0.28; group_trak 0.68)
    assert rows["group_tracin"]["mean"] - rows["random"]["mean"] > 0.4
    assert "digits:grouping=class,group_size=40,target=mean,target_class=-1" in rows["tracin"]["world"]
    assert json.loads((tmp_path / "section.json").read_text())["tables"][0]["columns"][3] == "property_lds"


def test_bad_group_and_target_specs_fail_before_any_work(tmp_path):
    assert groups_option("class") == {"grouping": "class", "group_size": 0}
    assert groups_option("grad_kmeans:size=64") == {"grouping": "grad_kmeans", "group_size": 64}
    assert target_option("class=3") == {"target": "mean", "target_class": 3}
    for spec, match in (("spectral", "must be one of"), ("kmeans:size=x", "only parameter is size"),
                        ("random:k=4", "only parameter is size"), ("random:size=0", "group_size must be")):
        with pytest.raises(ConfigError, match=match):
            groups_option(spec)
    with pytest.raises(ConfigError, match="use points, mean or class=C|use points"):
        target_option("median")
    for spec, match in (("digits:grouping=tree", "grouping must be"), ("digits:target=max", "target must be"),
                        ("tabular:grouping=kmeans,group_size=0", "group_size must be")):
        with pytest.raises(ConfigError, match=match):
            check_world(spec)
    from assay.cli import app

    for args, match in ((["--groups", "kmeans:size=-1"], "only parameter is size"),
                        (["--methods", "group_trak"], "give --groups"),
                        (["--groups", "random", "--worlds", "contamination"], "classifier worlds"),
                        (["--groups", "random", "--worlds", "digits:grouping=class"], "already sets grouping"),
                        (["--target", "class=a"], "--target 'class=a'")):
        bad = CliRunner().invoke(app, ["data-attribution", *args, "--out-dir", str(tmp_path)])
        assert bad.exit_code != 0 and match in bad.output, bad.output
    assert not (tmp_path / "cache").exists()
