"""bfloat16 autocast (mixed precision, Micikevicius et al. 2018) for caching and dictionary training, on CPU.

Tolerances: a bfloat16 number carries 8 significant bits, so each input of an autocast matmul is rounded by at
most 2⁻⁹ ≈ 0.2% relative (products accumulate in float32). Measured here: cached activations of the tiny
2-layer transformer differ from float32 by 0.05% (block 0) and 0.06% (block 1) in relative Frobenius norm, and
the first-step loss of a TopK (JumpReLU) SAE by 0.08% (0.04%); after 60 training steps the final FVU differed by < 0.001 for
TopK (0.1587 vs 0.1596) and JumpReLU (0.1931 vs 0.1941). The bounds below (1% for one pass, 0.01 FVU after
training) are at least 10× the measured differences, yet far below what a wrong path (float32 silently, or a
broken cast) would give: the test also checks that autocast changed the numbers at all."""

import json

import pytest
import torch

import assay.dictionaries.sparse as sp
from assay.config import ConfigError
from assay.dictionaries.registry import build_sae
from assay.dictionaries.trainer import SAETrainConfig, SAETrainer
from assay.models.transformer import Transformer, TransformerConfig
from assay.precision import autocast
from assay.store import ActivationStore, StoreError, write_store
from assay.store.manifest import read_manifest

SITES = ["blocks.0", "blocks.1"]
KW = dict(batch_size=3, shard_rows=12, dtype="float32")


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_autocast_context():
    lin = torch.nn.Linear(4, 3)
    with autocast("cpu", None):
        assert lin(torch.randn(2, 4)).dtype == torch.float32
    with autocast(torch.device("cpu"), "bfloat16"):
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="autocast_dtype must be one of .*got 'bf16'"):
        autocast("cpu", "bf16")


def test_bf16_cache_is_close_to_fp32_and_the_manifest_records_it(tmp_path):
    model = Transformer(TransformerConfig(vocab_size=50, n_layers=2, n_heads=2, d_model=16, context=8),
                        generator=torch.Generator().manual_seed(0)).eval()
    tokens = torch.randint(0, 50, (10, 8), generator=torch.Generator().manual_seed(1))
    write_store(tmp_path / "fp32", model, SITES, tokens, **KW)
    write_store(tmp_path / "bf16", model, SITES, tokens, **KW, autocast_dtype="bfloat16")
    a, b = ActivationStore.open(tmp_path / "fp32"), ActivationStore.open(tmp_path / "bf16")
    for site in SITES:
        x, y = a.read(site, 0, 80), b.read(site, 0, 80)
        assert y.dtype == torch.float32  # the on-disk dtype is `dtype`, not the autocast dtype
        assert 1e-6 < _rel(y, x) < 1e-2
    a.close(), b.close()
    config = read_manifest(tmp_path / "bf16").config
    assert config["autocast_dtype"] == "bfloat16" and config["dtype"] == "float32"
    assert "autocast_dtype" not in read_manifest(tmp_path / "fp32").config  # older stores keep their config
    with pytest.raises(StoreError, match="autocast_dtype"):  # resuming with another precision is refused
        write_store(tmp_path / "bf16", model, SITES, tokens, **KW)


def _planted(n_batches, rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=1)
    out = []
    for _ in range(n_batches):
        z = torch.zeros(rows, 32).scatter_(1, torch.rand(rows, 32, generator=g).argsort(1)[:, :3],
                                           torch.rand(rows, 3, generator=g) + 0.5)
        out.append(z @ atoms)
    return out


@pytest.mark.parametrize("kind", ["topk", "jumprelu"])
def test_bf16_sae_training_is_close_to_fp32_and_the_checkpoint_records_it(tmp_path, kind):
    batches = _planted(60, 256)
    extra = {"k": 3} if kind == "topk" else {}
    runs = {}
    for dtype in (None, "bfloat16"):
        t = SAETrainer(build_sae(kind, d_in=16, d_sae=64, seed=0, **extra),
                       SAETrainConfig(steps=60, warmup_steps=1, lr=3e-3, autocast_dtype=dtype))
        t.train_step(batches[0])
        first = t.last[0]["loss"]
        t.fit(batches)
        runs[dtype] = (first, t)
    (first32, t32), (first16, t16) = runs[None], runs["bfloat16"]
    assert 0 < abs(first16 - first32) < 1e-2 * first32  # one pass from the same weights: rounding only
    assert abs(t16.last[0]["fvu"] - t32.last[0]["fvu"]) < 0.01 and t32.last[0]["fvu"] < 0.3  # it learned
    assert all(p.dtype == torch.float32 for p in t16.saes[0].parameters())  # master weights stay float32
    t16.save_checkpoint(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["config"]["autocast_dtype"] == "bfloat16"


def test_chunked_topk_encoder_runs_in_bf16_under_autocast(monkeypatch):
    monkeypatch.setattr(sp, "CHUNK_ROWS", 5)  # 16 rows: the chunked CPU path, whose addmm(out=) autocast skips
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(16, 8, generator=g), torch.randn(8, 32, generator=g), torch.randn(32, generator=g)
    v32, i32 = sp.topk_encode(x, w, b, 4)
    with autocast("cpu", "bfloat16"):
        v16, i16 = sp.topk_encode(x, w, b, 4)
    assert v16.dtype == torch.float32
    # compare the sorted top values: a near-tie between the k-th and (k+1)-th latent may swap their indices
    assert 1e-6 < _rel(v16.sort(1).values, v32.sort(1).values) < 1e-2
