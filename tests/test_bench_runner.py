"""The one bench runner, on a toy family whose answer is known in closed form: spec strings and their
errors (before any work), options, the per-run cache (a re-run computes nothing; a changed method only
its runs; a torn or foreign cache file is recomputed), resume after a kill gives the uninterrupted
result, Student-t intervals over seeds (against scipy), tables and the report section."""

import json
import math
from dataclasses import dataclass

import pytest

from assay.bench.runner import RunContext, aggregate, check_params, parse_options, run_family, summary_rows
from assay.bench.spec import expand_spec, parse_spec, parse_world_spec
from assay.config import ConfigError


@dataclass(frozen=True, kw_only=True)
class ToySettings:
    """Budget of the toy family."""

    n: int = 200
    """Samples per run."""
    scales: tuple[float, ...] = (1.0,)
    """A list-valued setting (for option parsing)."""


class Toy:
    """World ``coin:p=…`` is a biased coin; method ``mean:bias=b`` estimates p as the sample mean + b from n
    seeded draws; metric ``error`` = |estimate − p| (ground truth: p)."""

    name = "toy"
    title = "Toy family"
    worlds = ("coin:p=0.3",)
    methods = ("mean:bias=0|0.5",)
    metrics = ("error", "estimate")
    settings_type = ToySettings

    def __init__(self):
        self.prepared, self.scored = [], []
        self.fail_at = None

    def world_names(self):
        return ("coin",)

    def method_names(self):
        return ("mean",)

    def expand(self, spec):
        runs = list(expand_spec(spec, self.method_names()))
        for r in runs:
            check_params(r, {"bias": 0.0})
        return runs

    def prepare(self, world, seed, settings):
        self.prepared.append((world, seed))
        _, kw = parse_world_spec(world, self.world_names())
        return kw.get("p", 0.5)

    def score(self, p, run, ctx: RunContext):
        import torch

        if self.fail_at is not None and len(self.scored) == self.fail_at:
            raise KeyboardInterrupt  # a kill in the middle of the bench
        self.scored.append((run.label, run.level, ctx.seed))
        g = torch.Generator().manual_seed(ctx.seed)
        est = float((torch.rand(ctx.settings.n, generator=g) < p).double().mean()) + check_params(run, {"bias": 0.0})["bias"]
        return {"error": abs(est - p), "estimate": est}

    def section(self, result):
        from assay.report import Section, Table

        cols, rows = summary_rows(result, self.metrics)
        return Section(self.title, [Table("toy", cols, rows)], [], ["toy notes"])


def test_specs_and_their_errors():
    assert parse_spec("topk:k=2|4,expansion=2", {"topk"}) == ("topk", {"k": [2, 4], "expansion": [2]})
    runs = list(expand_spec("topk:k=2|4,expansion=2", {"topk"}))
    assert [r.level for r in runs] == ["k=2", "k=4"] and runs[0].label == "topk,expansion=2"
    assert runs[1].params == {"expansion": 2, "k": 4}
    (one,) = expand_spec("pca:n=3,steps=9", {"pca"}, hidden=("steps",))
    assert (one.label, one.level, one.params) == ("pca", "n=3", {"n": 3, "steps": 9})
    with pytest.raises(ConfigError, match="unknown method 'svd'.*choose from: pca"):
        parse_spec("svd:n=2", {"pca"})
    with pytest.raises(ConfigError, match="key=v1"):
        parse_spec("pca:n", {"pca"})
    assert parse_world_spec("h:hierarchy=2/0/0,d=8,name=x", {"h"}) == ("h", {"hierarchy": (2, 0, 0), "d": 8,
                                                                             "name": "x"})
    with pytest.raises(ConfigError, match="sweeps d"):
        parse_world_spec("h:d=8|16", {"h"})


def test_options_parse_into_the_family_settings():
    fam = Toy()
    assert parse_options(fam, ["n=50", "scales=0.5|2"]) == ToySettings(n=50, scales=(0.5, 2.0))
    assert parse_options(fam, ["scales=3"]).scales == (3.0,)  # one item of a list-valued setting
    with pytest.raises(ConfigError, match="unknown key.*valid keys: n, scales"):
        parse_options(fam, ["steps=5"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_options(fam, ["n"])


def test_bad_specs_fail_before_any_work(tmp_path):
    fam = Toy()
    with pytest.raises(ConfigError, match="unknown world 'dice'"):
        run_family(fam, worlds=("dice",), out_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown parameter.*'mean'.*valid: bias"):
        run_family(fam, methods=("mean:bais=1",), out_dir=tmp_path)
    assert fam.prepared == [] and fam.scored == []


def test_cache_resume_intervals_and_section(tmp_path):
    from scipy import stats

    from assay.report import read_section

    fam = Toy()
    res = run_family(fam, seeds=(0, 1, 2), out_dir=tmp_path / "a")
    assert res.computed == 6 and fam.prepared == [("coin:p=0.3", 0), ("coin:p=0.3", 1), ("coin:p=0.3", 2)]
    # the closed-form truth: bias b shifts the error by about b
    err = {r["level"]: r["mean"] for r in res.summary if r["metric"] == "error"}
    assert err["bias=0"] < 0.1 and abs(err["bias=0.5"] - 0.5) < 0.1
    # Student-t interval over the 3 seeds, against scipy
    vals = [r["metrics"]["estimate"] for r in res.runs if r["level"] == "bias=0"]
    (s,) = [s for s in res.summary if s["level"] == "bias=0" and s["metric"] == "estimate"]
    lo, hi = stats.t.interval(0.95, 2, loc=sum(vals) / 3, scale=stats.sem(vals))
    assert (s["ci_low"], s["ci_high"], s["n"]) == (pytest.approx(lo), pytest.approx(hi), 3)
    # tables and the section
    rows = (tmp_path / "a" / "results.csv").read_text().splitlines()
    assert rows[0] == "world,method,level,seed,metric,value" and len(rows) == 1 + 6 * 2
    assert {"mean", "ci_low", "ci_high", "n"} <= set(json.loads((tmp_path / "a" / "summary.json").read_text())[0])
    sec = read_section(tmp_path / "a")
    assert sec.title == "Toy family" and sec.notes == ["toy notes"] and len(sec.tables[0].rows) == 2
    # a re-run computes nothing and prepares no world
    fam2 = Toy()
    again = run_family(fam2, seeds=(0, 1, 2), out_dir=tmp_path / "a")
    assert again.computed == 0 and fam2.prepared == [] and all(r["cached"] for r in again.runs)
    assert again.summary == res.summary
    # a changed method recomputes only its runs
    assert run_family(Toy(), methods=("mean:bias=0|0.25",), seeds=(0, 1, 2), out_dir=tmp_path / "a").computed == 3
    # a torn cache file, or one holding another run's record, is recomputed
    cache = tmp_path / "a" / "cache"
    (cache / f"{res.runs[0]['key']}.json").write_text('{"world": ')
    other = json.loads((cache / f"{res.runs[2]['key']}.json").read_text())
    (cache / f"{res.runs[1]['key']}.json").write_text(json.dumps(other))
    assert run_family(Toy(), seeds=(0, 1, 2), out_dir=tmp_path / "a").computed == 2


def test_a_killed_bench_resumes_to_the_uninterrupted_result(tmp_path):
    whole = run_family(Toy(), seeds=(0, 1), out_dir=tmp_path / "whole")
    fam = Toy()
    fam.fail_at = 3
    with pytest.raises(KeyboardInterrupt):
        run_family(fam, seeds=(0, 1), out_dir=tmp_path / "killed")
    resumed = run_family(Toy(), seeds=(0, 1), out_dir=tmp_path / "killed")
    assert resumed.computed == 1  # only the run that was killed
    assert [r["metrics"] for r in resumed.runs] == [r["metrics"] for r in whole.runs]
    assert resumed.summary == whole.summary


def test_aggregate_ignores_non_finite_values():
    runs = [{"world": "w", "method": "m", "level": "l", "metrics": {"x": v}} for v in (1.0, float("nan"), 3.0)]
    (s,) = aggregate(runs)
    assert s["n"] == 2 and s["mean"] == 2.0 and math.isfinite(s["ci_low"])


@pytest.mark.parametrize("name", sorted(__import__("assay.bench.families", fromlist=["x"]).FAMILY_MODULES))
def test_every_family_refuses_an_unknown_world_parameter_before_any_work(name, tmp_path):
    # the bad spec is the second world: nothing may run for the first one before it is refused
    from assay.bench.families import load_family

    family = load_family(name)
    first = family.worlds[0]
    bad = first.split(":")[0] + ":no_such_parameter=1"
    with pytest.raises(ConfigError, match="unknown parameter.*no_such_parameter"):
        run_family(family, worlds=(first, bad), methods=family.methods[:1], seeds=(0,), out_dir=tmp_path / "o",
                   report=False)
    assert not (tmp_path / "o").exists()
