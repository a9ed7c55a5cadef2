"""Re-running the writer on a damaged store rewrites exactly the damaged shard files, bit-identically."""

import json
import shutil

import pytest
import torch
from torch import nn

from assay import hooks
from assay.store import ActivationStore, StoreError, write_store

SITES = ["layers.0", "layers.2"]
N, T, BATCH, SHARD = 23, 8, 4, 30  # 184 rows: shards of 30 rows, the last (shard 6) of 4


class BatchMixer(nn.Module):
    """Residual tanh layers plus the batch mean: a row of ``layers.2`` depends on its whole forward
    batch, so only the original batch boundaries reproduce the stored bytes. ``offset`` (not a
    parameter, so the model fingerprint ignores it) plays a nondeterministic kernel."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Embedding(50, 12)
        self.layers = nn.ModuleList([nn.Linear(12, 12) for _ in range(3)])
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
        self.offset = 0.0

    def forward(self, x):
        h = self.emb(x) + self.offset
        for layer in self.layers:
            h = h + torch.tanh(layer(h)) + 0.1 * h.mean(dim=(0, 1))
        return h


def tokens():
    return torch.randint(0, 50, (N, T), generator=torch.Generator().manual_seed(3))


def write(path, model, **kw):
    return write_store(path, model, SITES, tokens(), batch_size=BATCH, shard_rows=SHARD, **kw)


def batch_acts(model, b):
    """``layers.2`` rows of forward batch ``b`` run on its own."""
    with torch.no_grad(), hooks.capture(model, ["layers.2"]) as cap:
        model(tokens()[b * BATCH : (b + 1) * BATCH])
    return cap["layers.2"].reshape(-1, 12)


def shard_files(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("shard_*.safetensors"))


def identities(path):
    """Inode and modification time of every shard file: a rewrite (temp file + rename) changes both."""
    return {f: ((path / f).stat().st_ino, (path / f).stat().st_mtime_ns) for f in shard_files(path)}


def flip_byte(f, at=-3):
    raw = bytearray(f.read_bytes())
    raw[at] ^= 0xFF
    f.write_bytes(bytes(raw))


@pytest.fixture
def store(tmp_path):
    """A finished store and a byte copy of it."""
    path = tmp_path / "s"
    write(path, BatchMixer().eval())
    shutil.copytree(path, tmp_path / "copy")
    return path, tmp_path / "copy"


def assert_repaired(path, copy, before, rewritten):
    """``rewritten`` files are new files with the original bytes; every other shard file is untouched."""
    after = identities(path)
    assert sorted(after) == sorted(before)
    for f in after:
        assert (after[f] != before[f]) == (f in rewritten), f
        assert (path / f).read_bytes() == (copy / f).read_bytes(), f
    assert (path / "manifest.json").read_text() == (copy / "manifest.json").read_text()
    ActivationStore.open(path, verify="open").verify_all()


@pytest.mark.parametrize("victim", ["acts/layers.2/shard_000002.safetensors",  # middle shard, mid-batch start
                                    "acts/layers.2/shard_000006.safetensors",  # last, partial shard
                                    "rows/shard_000003.safetensors"])
def test_one_corrupted_byte_rewrites_exactly_that_file(store, victim):
    path, copy = store
    before = identities(path)
    flip_byte(path / victim)
    with pytest.raises(StoreError, match="is corrupted"):
        ActivationStore.open(path, verify="open")
    summary = write(path, BatchMixer().eval())
    k = int(victim[-18:-12])
    assert summary.repaired_shards == (k,) and summary.repaired_files == (victim,)
    assert summary.rerecorded_files == () and summary.resumed_rows == summary.n_rows == N * T
    assert_repaired(path, copy, before, {victim})


def test_the_repair_uses_the_original_batch_boundaries(store):
    path, copy = store
    victim = "acts/layers.2/shard_000002.safetensors"  # rows 60..89: windows 7..11, batches 1 and 2
    model = BatchMixer().eval()
    # the test has teeth: other batch boundaries give other bytes for these rows
    stored = ActivationStore.open(path).read("layers.2", 60, 90)
    assert torch.equal(stored, torch.cat([batch_acts(model, 1)[28:], batch_acts(model, 2)[:26]]))
    with torch.no_grad(), hooks.capture(model, ["layers.2"]) as cap:
        model(tokens()[7:12])
    assert not torch.equal(cap["layers.2"].reshape(-1, 12)[4:34], stored)
    before = identities(path)
    (path / victim).unlink()
    calls = []
    summary = write(path, model, forward=lambda m, x: (calls.append(x.shape[0]), m(x))[1])
    assert calls == [1, BATCH, BATCH]  # the one-window probe, then batches 1 and 2 only
    assert summary.repaired_shards == (2,) and summary.repaired_files == (victim,)
    assert_repaired(path, copy, before, {victim})


def test_several_sites_and_adjacent_damaged_shards(store):
    path, copy = store
    before = identities(path)
    victims = {
        "acts/layers.0/shard_000001.safetensors": "flip",
        "acts/layers.2/shard_000001.safetensors": "flip",
        "acts/layers.2/shard_000004.safetensors": "delete",
        "rows/shard_000005.safetensors": "truncate",
    }
    for f, how in victims.items():
        if how == "flip":
            flip_byte(path / f, at=200)
        elif how == "delete":
            (path / f).unlink()
        else:
            (path / f).write_bytes((path / f).read_bytes()[:-8])
    calls = []
    summary = write(path, BatchMixer().eval(), forward=lambda m, x: (calls.append(x.shape[0]), m(x))[1])
    # shard 1 = windows 3..7 (batches 0, 1); shards 4 and 5 = windows 15..22 (batches 3, 4, 5) share
    # batch 4, so they are computed in one pass: no batch runs twice
    assert calls == [1, 4, 4, 4, 4, 3]
    assert summary.repaired_shards == (1, 4, 5)
    assert sorted(summary.repaired_files) == sorted(victims) and summary.rerecorded_files == ()
    assert_repaired(path, copy, before, set(victims))


def test_a_damaged_shard_of_an_unfinished_store_is_repaired_before_resuming(tmp_path):
    ref = tmp_path / "ref"
    write(ref, BatchMixer().eval())

    class Stop(Exception):
        pass

    def stop_at_100(done, total):
        if done >= 100:
            raise Stop

    path = tmp_path / "s"
    with pytest.raises(Stop):
        write(path, BatchMixer().eval(), progress=stop_at_100)
    assert json.loads((path / "manifest.json").read_text())["complete"] is False
    flip_byte(path / "acts/layers.0/shard_000000.safetensors")
    summary = write(path, BatchMixer().eval())
    assert summary.repaired_shards == (0,) and 0 < summary.resumed_rows < N * T
    assert shard_files(path) == shard_files(ref)
    for f in shard_files(ref):
        assert (path / f).read_bytes() == (ref / f).read_bytes(), f
    ActivationStore.open(path, verify="open")


def test_nondeterministic_recomputation_updates_the_record_and_says_so(store):
    path, copy = store
    victim = "acts/layers.2/shard_000002.safetensors"
    flip_byte(path / victim)
    model = BatchMixer().eval()
    model.offset = 1e-3  # the "hardware" now computes slightly different activations
    summary = write(path, model)
    assert summary.repaired_files == summary.rerecorded_files == (victim,)
    old = {f["path"]: f for s in json.loads((copy / "manifest.json").read_text())["shards"] for f in s["files"].values()}
    new = {f["path"]: f for s in json.loads((path / "manifest.json").read_text())["shards"] for f in s["files"].values()}
    assert new[victim] != old[victim] and {f: r for f, r in new.items() if f != victim} == {
        f: r for f, r in old.items() if f != victim}
    store = ActivationStore.open(path, verify="open")  # the store is consistent again
    # shard 2 = rows 60..89: the last 4 rows of batch 1 (windows 4..7) and the first 26 of batch 2
    want = torch.cat([batch_acts(model, 1)[28:], batch_acts(model, 2)[:26]])
    assert torch.equal(store.read("layers.2", 60, 90), want)
    assert (path / victim).read_bytes() != (copy / victim).read_bytes()


def test_verify_false_skips_the_check(store):
    path, _ = store
    victim = path / "acts/layers.0/shard_000003.safetensors"
    flip_byte(victim)
    damaged = victim.read_bytes()
    summary = write(path, BatchMixer().eval(), verify=False)
    assert summary.repaired_shards == () and victim.read_bytes() == damaged


def test_reader_errors_name_the_repair(store):
    path, _ = store
    flip_byte(path / "acts/layers.2/shard_000002.safetensors")
    hint = r"re-run the same `assay cache` command \(or write_store with the same arguments\) to rewrite exactly " \
           r"the damaged shards"
    with pytest.raises(StoreError, match=r"shard_000002\.safetensors is corrupted.*" + hint):
        ActivationStore.open(path).read("layers.2", 60, 61)
    (path / "rows/shard_000004.safetensors").unlink()
    with pytest.raises(StoreError, match=r"rows/shard_000004\.safetensors is missing.*" + hint):
        ActivationStore.open(path)
    write(path, BatchMixer().eval())
    ActivationStore.open(path, verify="open")
