"""``assay prune`` on the digits MLP with a tiny budget: structured removal shrinks parameters and MACs by
the exact counts, unstructured masking keeps the dense count; results, plot and section are written. Its
SmolLM2 path (gated-MLP neurons) on a tiny random Llama: exact counts, and the smaller model's logits equal
those of the model with the removed neurons masked out of ``down_proj``."""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from assay.bench.prune_real import PruneRealConfig, prune_model, run_prune
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


class _CharTokenizer:
    """Stand-in for SmolLM2's tokenizer: one token per character, ids 2..63 (the tiny Llama's vocab 64); BOS 1."""

    bos_token_id = 1

    def __call__(self, texts, add_special_tokens=False, verbose=True):
        return {"input_ids": [[2 + ord(c) % 62 for c in t] for t in texts]}


# the conftest `llama`: vocab 64, hidden 32, 4 heads of 8 (2 key-value heads: k, v are 32→16), intermediate 64,
# 2 layers, untied head. Per layer: attention 2·32·32 + 2·32·16, MLP 3·32·64, two RMSNorms of 32.
LLAMA_PARAMS = 2 * 64 * 32 + 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32) + 32
NEURON = 3 * 32  # a gated-MLP neuron: a row of gate_proj and of up_proj, a column of down_proj


def test_smollm2_path_on_a_tiny_llama_equals_the_masked_model(llama, tmp_path):
    cfg = PruneRealConfig(model="smollm2", sparsities=(0.0, 0.25), n_windows=4, context=16, latency_batches=(1,),
                          latency_runs=1, latency_warmup=1, out_dir=tmp_path)
    small, masks = prune_model(llama, 0.25, cfg)
    assert masks is None and sum(p.numel() for p in llama.parameters()) == LLAMA_PARAMS  # llama unchanged
    assert sum(p.numel() for p in small.parameters()) == LLAMA_PARAMS - 2 * 16 * NEURON  # 16 of 64 neurons per block
    down = {}
    for i in range(2):
        mlp, kept = llama.model.layers[i].mlp, small.model.layers[i].mlp
        # which neurons survived, read off the weights; they must be the 48 of largest group magnitude
        idx = torch.tensor([int((mlp.gate_proj.weight == row).all(1).nonzero()) for row in kept.gate_proj.weight])
        mag = mlp.gate_proj.weight.pow(2).sum(1) + mlp.up_proj.weight.pow(2).sum(1) + mlp.down_proj.weight.pow(2).sum(0)
        assert set(idx.tolist()) == set(mag.argsort(descending=True)[:48].tolist())
        assert torch.equal(kept.up_proj.weight, mlp.up_proj.weight[idx])
        assert torch.equal(kept.down_proj.weight, mlp.down_proj.weight[:, idx])
        keep = torch.zeros(64, dtype=torch.bool)
        keep[idx] = True
        down[f"model.layers.{i}.mlp.down_proj"] = keep.expand(32, 64).clone()
    from assay.pruning.masks import apply_masks

    masked = apply_masks(copy.deepcopy(llama), down)
    tokens = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out, dense = masked(tokens).logits, small(tokens).logits, llama(tokens).logits
    assert torch.allclose(out, ref, atol=1e-5) and not torch.allclose(out, dense, atol=1e-3)

    rows = run_prune(cfg, SimpleNamespace(model=llama, tokenizer=_CharTokenizer())).rows  # what `assay prune` runs
    assert [r["params"] for r in rows] == [LLAMA_PARAMS, LLAMA_PARAMS - 2 * 16 * NEURON]
    assert rows[0]["macs"] - rows[1]["macs"] == 16 * 2 * 16 * NEURON  # 16 tokens of the first window
    assert all(math.isfinite(r["perplexity"]) and r["perplexity"] > 1 for r in rows)
    assert json.loads((tmp_path / "results.json").read_text())["rows"][1]["params"] == rows[1]["params"]
