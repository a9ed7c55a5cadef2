"""``assay cache`` and ``assay quickstart``: config validation, the generated command, a real run."""

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from assay.cli import app
from assay.cli import cache as cache_cli
from assay.config import ConfigError, field_docs
from assay.corpora import TokenWindows
from assay.store import ActivationStore, StoreError, corpus_cache


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(40, 8)
        self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])

    def forward(self, x):
        h = self.emb(x)
        for layer in self.layers:
            h = h + torch.relu(layer(h))
        return h


def fake_prepare(cfg, *, loaded=None):
    n, t = -(-cfg.n_tokens // cfg.context_length), cfg.context_length
    tokens = torch.randint(0, 40, (n, t), generator=torch.Generator().manual_seed(0))
    return Tiny().eval(), TokenWindows(tokens, torch.arange(n), torch.arange(t).repeat(n, 1))


def test_config_validation_and_docs():
    with pytest.raises(ConfigError, match="n_tokens must be positive"):
        corpus_cache.CacheConfig(n_tokens=0)
    with pytest.raises(ConfigError, match="sites must name at least one"):
        corpus_cache.CacheConfig(sites=())
    cfg = corpus_cache.CacheConfig(sites=("model.layers.3",), n_tokens=500)
    assert cfg.store_dir.as_posix() == "runs/cache/smollm2-135m-model.layers.3-500"
    docs = field_docs(corpus_cache.CacheConfig)
    assert set(docs) >= {"model", "sites", "corpus", "n_tokens", "context_length", "batch_size", "shard_rows",
                         "dtype", "out_dir", "resume"}


def test_cache_command_writes_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_cache, "prepare", fake_prepare)
    out = tmp_path / "store"
    args = ["cache", "--model", "tiny", "--sites", "layers.0", "--sites", "layers.1", "--n-tokens", "300",
            "--context-length", "10", "--batch-size", "4", "--shard-rows", "64", "--dtype", "bfloat16",
            "--out-dir", str(out)]
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "tok/s" in res.output and "300 rows in 5 shards" in res.output
    store = ActivationStore.open(out, sites=["layers.0", "layers.1"], d=8)
    assert store.n_rows == 300 and store.dtype == torch.bfloat16 and store.config["model"] == "tiny"
    model, windows = fake_prepare(corpus_cache.CacheConfig(n_tokens=300, context_length=10))
    tokens = windows.tokens
    with torch.no_grad():
        want = model.layers[0](model.emb(tokens)).reshape(-1, 8)  # the site is the Linear's output
    assert torch.equal(store.read("layers.0", 0, 300, dtype=torch.bfloat16), want.to(torch.bfloat16))
    again = runner.invoke(app, args)  # complete: resumes to nothing
    assert again.exit_code == 0 and "resumed at row 300" in again.output
    refused = runner.invoke(app, [*args, "--no-resume"])
    assert refused.exit_code != 0 and "pass resume=True" in refused.output
    other = runner.invoke(app, [a if a != "bfloat16" else "float16" for a in args])
    assert other.exit_code != 0 and "different run" in other.output and "dtype: store has 'bfloat16'" in other.output


def test_cache_rerun_repairs_exactly_the_damaged_shard(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_cache, "prepare", fake_prepare)
    out = tmp_path / "store"
    args = ["cache", "--model", "tiny", "--sites", "layers.0", "--sites", "layers.1", "--n-tokens", "300",
            "--context-length", "10", "--batch-size", "4", "--shard-rows", "64", "--out-dir", str(out)]
    runner = CliRunner()
    assert runner.invoke(app, args).exit_code == 0
    victim = out / "acts/layers.1/shard_000002.safetensors"
    good = victim.read_bytes()
    victim.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    skipped = runner.invoke(app, [*args, "--no-verify"])
    assert skipped.exit_code == 0 and "repaired" not in skipped.output and victim.read_bytes() != good
    with pytest.raises(StoreError, match="re-run the same `assay cache` command"):
        ActivationStore.open(out, verify="open")
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "checking the existing shard files" in res.output
    assert "repaired shard(s) 2: rewrote acts/layers.1/shard_000002.safetensors" in res.output.replace("\n", "")
    assert victim.read_bytes() == good
    ActivationStore.open(out, verify="open")


def test_cache_command_reads_toml(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_cache, "prepare", fake_prepare)
    toml = tmp_path / "c.toml"
    toml.write_text(f'sites = ["layers.2"]\nn_tokens = 40\ncontext_length = 8\nout_dir = "{tmp_path / "s"}"\n')
    res = CliRunner().invoke(app, ["cache", "--config", str(toml), "--shard-rows", "16"])
    assert res.exit_code == 0, res.output
    store = ActivationStore.open(tmp_path / "s")
    assert store.sites == ("layers.2",) and store.n_rows == 40 and store.n_shards == 3
    bad = CliRunner().invoke(app, ["cache", "--n-tokens", "-5"])
    assert bad.exit_code != 0 and "n_tokens must be positive" in bad.output


@pytest.mark.slow
def test_cache_smollm2_real_model(tmp_path, smollm2):
    from assay import hooks

    cfg = corpus_cache.CacheConfig(sites=("model.layers.1",), n_tokens=96, context_length=32, batch_size=2,
                                shard_rows=40, out_dir=tmp_path / "s")
    summary = cache_cli.run_cache(cfg, quiet=True, loaded=smollm2)  # the loaded model is used, not reloaded
    store = ActivationStore.open(tmp_path / "s", d=576)
    assert summary.n_rows == store.n_rows == 96 and store.n_shards == 3
    model, windows = corpus_cache.prepare(cfg, loaded=smollm2)
    assert model is smollm2.model
    with pytest.raises(ConfigError, match="the loaded model is 'smollm2-135m' but the config asks for 'minilm-l6'"):
        corpus_cache.prepare(corpus_cache.CacheConfig(model="minilm-l6"), loaded=smollm2)
    assert torch.equal(store.tokens.all(), windows.tokens.reshape(-1))
    assert torch.equal(store.positions.all(), windows.positions.reshape(-1))
    h = hooks.run_to(smollm2.model, "model.layers.1", windows.tokens[:2])
    torch.testing.assert_close(store.read("model.layers.1", 0, 64), h.reshape(-1, 576), rtol=1e-5, atol=1e-4)


def test_quickstart_statistics_match_a_direct_computation(tmp_path):
    from assay.bench.quickstart import store_statistics
    from assay.store import write_store

    model, windows = fake_prepare(corpus_cache.CacheConfig(n_tokens=120, context_length=10))
    positions = windows.positions.clone()
    positions[:, 0] = -1  # first token of each window plays the BOS
    windows = TokenWindows(windows.tokens, windows.doc_ids, positions)
    write_store(tmp_path / "s", model, "layers.1", windows, batch_size=4, shard_rows=32)
    store = ActivationStore.open(tmp_path / "s")
    stats = store_statistics(store, "layers.1", chunk=7)
    h = store.read("layers.1", 0, 120).double()
    norms = h.norm(dim=1)
    bos = positions.reshape(-1) < 0
    assert stats["rows"] == 120 and stats["d"] == 8
    assert stats["entry_mean"] == pytest.approx(h.mean().item(), rel=1e-9)
    assert stats["entry_std"] == pytest.approx(h.std(unbiased=False).item(), rel=1e-6)
    assert stats["norm_median_bos"] == pytest.approx(norms[bos].float().median().item(), rel=1e-6)
    assert stats["norm_max_text"] == pytest.approx(norms[~bos].max().item(), rel=1e-6)
    top_rows = [r for r, _, _ in stats["top_text_rows"]]
    assert top_rows == norms.masked_fill(bos, -1).topk(5).indices.tolist()
    assert [t for _, t, _ in stats["top_text_rows"]] == windows.tokens.reshape(-1)[top_rows].tolist()
