"""``assay prune`` on the digits MLP with a tiny budget: structured removal shrinks parameters and MACs by
the exact counts, unstructured masking keeps the dense count; results, plot and section are written."""

import json

import pytest
from typer.testing import CliRunner

from assay.bench.prune_real import PruneRealConfig
from assay.cli import app
from assay.config import ConfigError
from assay.report import read_section

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--train-steps", "200", "--finetune-steps", "20", "--latency-runs", "2", "--latency-warmup", "1",
        "--sparsities", "0", "--sparsities", "0.5"]


def _mlp_params(h0: int, h1: int) -> int:
    return 64 * h0 + h0 + h0 * h1 + h1 + h1 * 10 + 10


@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_prune_digits_mlp(tmp_path, mode):
    out = tmp_path / mode
    res = CliRunner().invoke(app, ["prune", "--model", "digits_mlp", "--mode", mode, *TINY, "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    dense, half = rows
    assert dense["params"] == dense["nonzero_params"] == _mlp_params(128, 64)
    if mode == "structured":  # half of each hidden layer removed physically
        assert half["params"] == half["nonzero_params"] == _mlp_params(64, 32)
        assert half["macs"] == 64 * 64 + 64 * 32 + 32 * 10
    else:  # half of all weights masked: the dense count stays, the non-zero count halves
        n_weights = 64 * 128 + 128 * 64 + 64 * 10
        assert half["params"] == dense["params"] and half["macs"] == dense["macs"] == n_weights
        assert dense["nonzero_params"] - half["nonzero_params"] == n_weights // 2 == half["macs"] - half["nonzero_macs"]
        from assay.pruning.masks import load_masks

        masks = load_masks(out / "masks" / "sparsity-0.5")
        assert sum(int((~m).sum()) for m in masks.values()) == n_weights // 2
    assert 0.8 < dense["accuracy"] <= 1 and 0 <= half["accuracy_finetuned"] <= 1
    assert all(r["latency_b1"] > 0 and r["latency_b64"] > 0 for r in rows)
    assert (out / "plots" / "prune.svg").is_file()
    sec = read_section(out)
    assert sec.title == f"Pruning digits_mlp ({mode}, magnitude)" and len(sec.tables[0].rows) == 2


def test_random_importance_control_prunes_the_same_amount(tmp_path):
    out = tmp_path / "random"
    res = CliRunner().invoke(app, ["prune", "--importance", "random", *TINY, "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    half = json.loads((out / "results.json").read_text())["rows"][1]
    assert half["params"] == _mlp_params(64, 32)


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="structurally"):
        PruneRealConfig(model="smollm2", mode="unstructured")
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        PruneRealConfig(sparsities=(0.5, 1.0))
    with pytest.raises(ConfigError, match="importance"):
        PruneRealConfig(importance="taylor")
