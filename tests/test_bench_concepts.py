"""Bench family ``concepts`` (SpLiCE, Bhalla et al. 2024) on the two-modality world: the run cache (a re-run
computes nothing, a deleted run is recomputed with the same metrics), the section, the command line, spec
validation, and the scientific check against the planted support.

Measured with the default settings (n_eval 256 → here 128, c = 200, d = 64, k = 3), seeds 0-2, mean [95% interval]:

    method            λ     f1                   l0                cosine
    splice            0.1   0.740 [0.724, 0.756]  6.05              0.969
    splice            0.3   0.996 [0.992, 1]      3.03              0.965
    splice_uncentred  0.1   0.601 [0.586, 0.615]  1.63              0.271
    splice_uncentred  0.3   0.522 [0.452, 0.592]  1.27              0.262
    nnls              –     0.090                 64 (= d)          0.979
"""

import csv
import shutil

import pytest
from typer.testing import CliRunner

from assay.bench.concepts import FAMILY, ConceptSettings, nnls_codes
from assay.bench.runner import run_family
from assay.cli import app
from assay.config import ConfigError
from assay.report import read_section

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ("splice:lam=0.1|0.3", "splice_uncentred:lam=0.3", "nnls")
SETTINGS = ConceptSettings(n_eval=128, n_reference=256)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-concepts")
    return run_family(FAMILY, methods=METHODS, seeds=(0,), settings=SETTINGS, out_dir=out), out


def _metrics(res):
    return {(r["method"], r["level"]): r["metrics"] for r in res.runs}


def test_rerun_is_cached_and_resume_recomputes_exactly_the_deleted_run(bench, tmp_path):
    res, out = bench
    assert res.computed == len(res.runs) == 4
    again = run_family(FAMILY, methods=METHODS, seeds=(0,), settings=SETTINGS, out_dir=out, report=False)
    assert again.computed == 0 and _metrics(again) == _metrics(res)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    victim = next(r for r in res.runs if r["method"] == "splice_uncentred")
    (copy / "cache" / f"{victim['key']}.json").unlink()
    redo = run_family(FAMILY, methods=METHODS, seeds=(0,), settings=SETTINGS, out_dir=copy, report=False)
    assert redo.computed == 1
    assert next(r for r in redo.runs if r["key"] == victim["key"])["metrics"] == pytest.approx(victim["metrics"])


def test_section_reads_back_with_its_plot(bench):
    res, out = bench
    sec = read_section(out)
    assert sec.title == FAMILY.title and len(sec.tables[0].rows) == 4
    assert [p.path.name for p in sec.plots] == ["concepts_recovery.svg"]


def test_centred_splice_recovers_the_planted_support_and_the_controls_do_not(bench):
    """The scientific check (numbers in the module docstring)."""
    m = _metrics(bench[0])
    best = m[("splice", "lam=0.3")]
    assert best["f1"] > 0.95 and abs(best["l0"] - 3) < 0.3 and best["cosine"] > 0.9
    assert m[("splice", "lam=0.1")]["f1"] < best["f1"]  # too small a λ keeps spurious concepts (l0 6)
    unc = m[("splice_uncentred", "lam=0.3")]
    assert unc["f1"] < best["f1"] - 0.3 and unc["cosine"] < 0.5  # the modality gap breaks it
    nn = m[("nnls", "default")]
    assert nn["f1"] < 0.2 and nn["l0"] > 30  # without the ℓ1 term: dense codes


def test_nnls_matches_an_exhaustive_check_on_a_tiny_problem():
    import itertools

    import torch

    C = torch.nn.functional.normalize(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    z = torch.tensor([[0.3, -0.2, 0.9]])
    w = nnls_codes(C, z)
    best = float("inf")
    for S in itertools.chain.from_iterable(itertools.combinations(range(5), k) for k in range(4)):
        if not S:
            best = min(best, float(z.pow(2).sum()))
            continue
        sol = torch.linalg.lstsq(C[list(S)].T.double(), z[0].double()).solution
        if bool((sol >= 0).all()):
            best = min(best, float((sol @ C[list(S)].double() - z[0]).pow(2).sum()))
    assert float((w.double() @ C.double() - z).pow(2).sum()) == pytest.approx(best, abs=1e-10)


def test_specs_are_validated_and_the_cli_runs(tmp_path):
    with pytest.raises(ConfigError, match="unknown parameter"):
        FAMILY.expand("splice:rho=3")
    with pytest.raises(ConfigError, match="lam must be >= 0"):
        FAMILY.expand("splice:lam=-1")
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["bench", "--family", "concepts", "--seeds", "0", "--methods", "splice:lam=0.3",
                                   "--options", "n_eval=16", "--options", "n_reference=64", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    assert {r["metric"] for r in rows} >= {"f1", "l0", "cosine"} and (out / "section.json").exists()


def test_world_spec_fields_are_checked_and_set():
    prepared = FAMILY.prepare("two_modality:query_offset=0,d=16,n_concepts=20", 0,
                              ConceptSettings(n_eval=4, n_reference=8))
    assert prepared.queries.shape == (4, 16) and float(prepared.world.query_offset.norm()) == 0
    with pytest.raises(ConfigError, match="unknown parameter.*offset"):
        FAMILY.prepare("two_modality:offset=1", 0, SETTINGS)
