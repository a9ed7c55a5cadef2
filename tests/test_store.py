"""Activation store: writer and reader against a direct forward pass, formats, errors."""

import hashlib
import json
from typing import NamedTuple

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from assay import hooks
from assay.store import ActivationStore, StoreError, write_store
from assay.store.prefetch import prefetch


class Windows(NamedTuple):  # the shape of assay.corpora.TokenWindows
    tokens: torch.Tensor
    doc_ids: torch.Tensor
    positions: torch.Tensor


class Tiny(nn.Module):
    """Embedding + residual tanh layers; counts calls per layer."""

    def __init__(self, vocab=50, d=16, n_layers=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([nn.Linear(d, d) for _ in range(n_layers)])
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.calls = [0] * n_layers

    def forward(self, x):
        h = self.emb(x)
        for i, layer in enumerate(self.layers):
            self.calls[i] += 1
            h = h + torch.tanh(layer(h))
        return h


def make_windows(n=23, t=8, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, t), generator=g)
    doc_ids = torch.arange(n) // 3 + 100
    positions = torch.arange(t).repeat(n, 1) + (torch.arange(n) % 3)[:, None] * t
    return Windows(tokens, doc_ids, positions)


def reference(model, sites, tokens):
    """Full forward (no stop_at), all windows at once: site -> [n*T, d]."""
    with torch.no_grad(), hooks.capture(model, sites) as cap:
        model(tokens)
    return {s: cap[s].reshape(-1, cap[s].shape[-1]) for s in sites}


@pytest.fixture
def tiny_store(tmp_path):
    model, win = Tiny().eval(), make_windows()
    summary = write_store(tmp_path / "s", model, ["layers.1", "layers.0"], win, batch_size=4, shard_rows=30)
    return tmp_path / "s", model, win, summary


def test_rows_equal_a_direct_forward_pass(tiny_store):
    path, model, win, summary = tiny_store
    ref = reference(model, ["layers.0", "layers.1"], win.tokens)
    store = ActivationStore.open(path)
    assert store.sites == ("layers.1", "layers.0") and store.n_rows == 23 * 8 == summary.n_rows
    assert store.d("layers.0") == 16 and store.n_shards == summary.n_shards == 7  # ceil(184 / 30)
    for s in ("layers.0", "layers.1"):
        # batched forward vs one big forward: same math, possibly different summation order
        torch.testing.assert_close(store.read(s, 0, store.n_rows), ref[s], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(store.read(s, 25, 95), ref[s][25:95], rtol=1e-6, atol=1e-6)
    assert torch.equal(store.tokens.all(), win.tokens.reshape(-1))
    assert torch.equal(store.doc_ids[:], win.doc_ids.repeat_interleave(8))
    assert torch.equal(store.positions[10:40], win.positions.reshape(-1)[10:40])
    assert store.tokens[-1] == int(win.tokens[-1, -1]) and len(store.tokens) == 184
    idx = torch.tensor([183, 0, 77, 77])
    assert torch.equal(store.doc_ids[idx], win.doc_ids.repeat_interleave(8)[idx])


def test_rows_equal_forward_of_the_same_batches_bitwise(tmp_path):
    model, win = Tiny().eval(), make_windows(n=12)
    write_store(tmp_path / "s", model, "layers.2", win, batch_size=4, shard_rows=25)
    ref = torch.cat([reference(model, ["layers.2"], win.tokens[i : i + 4])["layers.2"] for i in range(0, 12, 4)])
    store = ActivationStore.open(tmp_path / "s")
    assert torch.equal(store.read("layers.2", 0, store.n_rows), ref)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_on_disk_is_the_rounded_activation(tmp_path, dtype):
    model, win = Tiny().eval(), make_windows(n=8)
    write_store(tmp_path / "s", model, "layers.0", win, batch_size=8, shard_rows=20, dtype=dtype)
    store = ActivationStore.open(tmp_path / "s")
    want = reference(model, ["layers.0"], win.tokens)["layers.0"].to(getattr(torch, dtype))
    got = store.read("layers.0", 0, store.n_rows, dtype=getattr(torch, dtype))
    assert got.dtype == getattr(torch, dtype) and torch.equal(got, want)
    assert torch.equal(store.read("layers.0", 0, 5), want[:5].float())
    assert store.dtype == getattr(torch, dtype)


def test_stop_at_runs_only_the_layers_needed(tmp_path):
    model, win = Tiny().eval(), make_windows(n=8)
    write_store(tmp_path / "s", model, ["layers.1", "layers.0"], win, batch_size=4, shard_rows=64)
    # a one-window probe + 2 batches, all stopped after layers.1 (layers 2 and 3 never run)
    assert model.calls == [3, 3, 0, 0]


def test_shards_are_safetensors_with_manifest_checksums(tiny_store):
    path, _, _, _ = tiny_store
    manifest = json.loads((path / "manifest.json").read_text())
    store = ActivationStore.open(path)
    assert manifest["complete"] and [s["rows"] for s in manifest["shards"]] == [30] * 6 + [4]
    for shard in manifest["shards"]:
        for group, rec in shard["files"].items():
            f = path / rec["path"]
            assert hashlib.sha256(f.read_bytes()).hexdigest() == rec["sha256"]
            assert f.stat().st_size == rec["bytes"]
            tensors = load_file(str(f))  # the peer reader
            a, b = shard["start"], shard["start"] + shard["rows"]
            if group == "rows":
                assert torch.equal(tensors["tokens"], store.tokens[a:b])
            else:
                assert torch.equal(tensors["acts"], store.read(group, a, b))


def test_batches_visit_every_row_once_per_epoch(tiny_store):
    path, model, win, _ = tiny_store
    store = ActivationStore.open(path)
    ref = torch.cat([reference(model, ["layers.1"], win.tokens[i : i + 4])["layers.1"] for i in range(0, 23, 4)])
    batches = list(store.batches("layers.1", batch_size=16, seed=7, epochs=2))
    assert len(batches) == store.n_batches(16, epochs=2) == 2 * (184 // 16)
    per_epoch = 184 // 16
    rows = [store.batch_rows(b, batch_size=16, seed=7) for b in range(len(batches))]
    for epoch in range(2):
        seen = torch.cat(rows[epoch * per_epoch : (epoch + 1) * per_epoch])
        assert len(set(seen.tolist())) == per_epoch * 16  # no repeats within an epoch
    assert not torch.equal(rows[0], rows[per_epoch])  # a new order each epoch
    for r, b in zip(rows, batches):
        assert b.shape == (16, 16) and torch.equal(b, ref[r])
    assert sorted(rows[0].tolist()) != list(range(16))  # shuffled, not sequential


def test_batches_are_seeded_and_resume_exactly(tiny_store):
    store = ActivationStore.open(tiny_store[0])
    full = list(store.batches("layers.0", batch_size=8, seed=1))
    again = list(store.batches("layers.0", batch_size=8, seed=1))
    other = list(store.batches("layers.0", batch_size=8, seed=2))
    tail = list(store.batches("layers.0", batch_size=8, seed=1, start_batch=9))
    pre = list(store.batches("layers.0", batch_size=8, seed=1, start_batch=3, prefetch=3))
    assert all(torch.equal(a, b) for a, b in zip(full, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(full, other))
    assert len(tail) == len(full) - 9 and all(torch.equal(a, b) for a, b in zip(full[9:], tail))
    assert len(pre) == len(full) - 3 and all(torch.equal(a, b) for a, b in zip(full[3:], pre))
    assert list(store.batches("layers.0", batch_size=8, seed=1, start_batch=len(full))) == []


def test_hf_llama_tuple_outputs(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    tokens = torch.randint(0, 64, (6, 10))
    write_store(tmp_path / "s", model, ["model.layers.1"], tokens, batch_size=3, shard_rows=16)
    store = ActivationStore.open(tmp_path / "s", sites=["model.layers.1"], d=32)
    with torch.no_grad():
        hidden = model(tokens[:3], output_hidden_states=True).hidden_states[2]  # output of layer 1
    torch.testing.assert_close(store.read("model.layers.1", 0, 30), hidden.reshape(-1, 32), rtol=1e-5, atol=1e-5)
    assert torch.equal(store.positions[:10], torch.arange(10)) and torch.equal(store.doc_ids[:20], torch.arange(2).repeat_interleave(10))


# -- errors -----------------------------------------------------------------------------------------


def test_wrong_site_and_d_are_named(tiny_store):
    path = tiny_store[0]
    store = ActivationStore.open(path)
    with pytest.raises(StoreError, match=r"no site 'layers\.3'.*'layers\.1', 'layers\.0'"):
        next(store.batches("layers.3", batch_size=4, seed=0))
    with pytest.raises(StoreError, match="Did you mean 'layers.1'"):
        store.read("layers1", 0, 4)
    with pytest.raises(StoreError, match="no site 'blocks.0'"):
        ActivationStore.open(path, sites=["blocks.0"])
    with pytest.raises(StoreError, match=r"site 'layers\.0' has d = 16, but d = 576"):
        ActivationStore.open(path, d={"layers.0": 576})
    with pytest.raises(StoreError, match="outside the store"):
        store.read("layers.0", 0, 10_000)
    with pytest.raises(StoreError, match="batch_size must lie"):
        store.batches("layers.0", batch_size=1000, seed=0)


def test_corrupted_shard_is_named_on_first_read(tiny_store):
    path = tiny_store[0]
    victim = path / "acts/layers.0/shard_000002.safetensors"
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0xFF
    victim.write_bytes(bytes(raw))
    store = ActivationStore.open(path)  # lazy: opening checks presence and size only
    assert store.read("layers.0", 0, 60).shape == (60, 16)  # shards 0 and 1 are fine
    assert store.read("layers.1", 60, 90).shape == (30, 16)  # another site's shard 2 is fine
    with pytest.raises(StoreError, match=r"shard file acts/layers\.0/shard_000002\.safetensors is corrupted"):
        store.read("layers.0", 60, 61)
    with pytest.raises(StoreError, match=r"acts/layers\.0/shard_000002\.safetensors is corrupted"):
        list(store.batches("layers.0", batch_size=8, seed=0, prefetch=2))
    with pytest.raises(StoreError, match=r"acts/layers\.0/shard_000002\.safetensors is corrupted"):
        ActivationStore.open(path, verify="open")
    assert ActivationStore.open(path, verify="none").read("layers.0", 60, 61).shape == (1, 16)


def test_missing_or_truncated_shard_fails_at_open(tiny_store):
    path = tiny_store[0]
    f = path / "rows/shard_000004.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(StoreError, match=r"rows/shard_000004\.safetensors has \d+ bytes.*truncated"):
        ActivationStore.open(path)
    f.unlink()
    with pytest.raises(StoreError, match=r"shard file rows/shard_000004\.safetensors is missing"):
        ActivationStore.open(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest.json is corrupted"):
        ActivationStore.open(path)
    with pytest.raises(StoreError, match="is not an activation store"):
        ActivationStore.open(path / "nowhere")


def test_resuming_a_different_run_is_refused(tiny_store):
    path, model, win, _ = tiny_store
    kw = dict(batch_size=4, shard_rows=30)
    with pytest.raises(StoreError, match=r"different run(.|\n)*dtype: store has 'float32', this run has 'float16'"):
        write_store(path, model, ["layers.1", "layers.0"], win, dtype="float16", **kw)
    with pytest.raises(StoreError, match=r"sites: store has \['layers.1', 'layers.0'\], this run has \['layers.1'\]"):
        write_store(path, model, ["layers.1"], win, **kw)
    with pytest.raises(StoreError, match="model_fingerprint"):
        write_store(path, Tiny(seed=1).eval(), ["layers.1", "layers.0"], win, **kw)
    with pytest.raises(StoreError, match="corpus_fingerprint"):
        write_store(path, model, ["layers.1", "layers.0"], make_windows(seed=5), **kw)
    with pytest.raises(StoreError, match="batch_size: store has 4, this run has 8"):
        write_store(path, model, ["layers.1", "layers.0"], win, batch_size=8, shard_rows=30)
    with pytest.raises(StoreError, match="pass resume=True"):
        write_store(path, model, ["layers.1", "layers.0"], win, resume=False, **kw)
    again = write_store(path, model, ["layers.1", "layers.0"], win, **kw)  # same run: already complete
    assert again.resumed_rows == again.n_rows == 184


def test_writer_input_errors(tmp_path):
    model, win = Tiny(), make_windows(n=4)
    with pytest.raises(StoreError, match="training mode"):
        write_store(tmp_path / "a", model, "layers.0", win, batch_size=2, shard_rows=8)
    model.eval()
    with pytest.raises(KeyError, match="no submodule 'layer.0'.*layers.0"):
        write_store(tmp_path / "a", model, "layer.0", win, batch_size=2, shard_rows=8)
    with pytest.raises(StoreError, match="dtype must be one of"):
        write_store(tmp_path / "a", model, "layers.0", win, batch_size=2, shard_rows=8, dtype="int8")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty and holds no store manifest"):
        write_store(tmp_path / "b", model, "layers.0", win, batch_size=2, shard_rows=8)
    with pytest.raises(StoreError, match=r"site 'emb' outputs shape \(1, 4\); the store needs \[batch, tokens, d\]"):
        write_store(tmp_path / "c", _Pooled().eval(), "emb", win, batch_size=2, shard_rows=8)
    with pytest.raises(StoreError, match="token windows must be a non-empty integer tensor"):
        write_store(tmp_path / "d", model, "layers.0", torch.zeros(3, 4), batch_size=2, shard_rows=8)


class _Pooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.EmbeddingBag(50, 4)

    def forward(self, x):
        return self.emb(x)


def test_float16_overflow_is_an_error(tmp_path):
    model = Tiny().eval()
    with torch.no_grad():
        model.emb.weight.mul_(1e6)
    with pytest.raises(StoreError, match="overflow float16.*bfloat16 or float32"):
        write_store(tmp_path / "s", model, "layers.0", make_windows(n=4), batch_size=2, shard_rows=8, dtype="float16")


def test_incomplete_store_needs_allow_partial(tmp_path):
    model, win = Tiny().eval(), make_windows(n=10)

    class Stop(Exception):
        pass

    def progress(done, total):
        if done >= 40:
            raise Stop

    with pytest.raises(Stop):
        write_store(tmp_path / "s", model, "layers.0", win, batch_size=2, shard_rows=16, progress=progress)
    with pytest.raises(StoreError, match=r"incomplete \(48 of 80 rows written\); resume the writer"):
        ActivationStore.open(tmp_path / "s")
    part = ActivationStore.open(tmp_path / "s", allow_partial=True)
    assert part.n_rows == 48
    summary = write_store(tmp_path / "s", model, "layers.0", win, batch_size=2, shard_rows=16)
    assert summary.resumed_rows == 48
    ref = reference(model, ["layers.0"], win.tokens)["layers.0"]
    torch.testing.assert_close(ActivationStore.open(tmp_path / "s").read("layers.0", 0, 80), ref, rtol=1e-6, atol=1e-6)


def test_prefetch_propagates_errors_and_stops_on_close():
    def source():
        yield 1
        yield 2
        raise RuntimeError("boom at 3")

    it = prefetch(source(), 2)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(RuntimeError, match="boom at 3"):
        next(it)
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = prefetch(endless(), 3)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()  # joins the worker
    n = len(produced)
    assert n <= 5 + 3 + 1
    assert list(prefetch(range(4), 0)) == [0, 1, 2, 3]
    assert np.array_equal(list(prefetch(range(100), 1)), np.arange(100))
