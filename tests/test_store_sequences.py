"""Sequence reader: whole windows against a naive reference that reads every row and slices by document."""

import pytest
import torch
from test_store import Tiny, Windows

from assay.store import ActivationStore, SequenceReader, StoreError, write_store
from assay.store.manifest import read_manifest, write_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

T = 8
DOC_LENGTHS = [3, 16, 9, 1, 7, 30, 14, 5, 21, 2, 7, 12]
"""Document lengths in tokens: some shorter than a window (padding), some spanning several windows."""


def cut_windows(lengths, t=T, vocab=50, seed=0):
    """Windows as assay.corpora.token_windows cuts them: BOS, then t − 1 document tokens, padding at the end."""
    g = torch.Generator().manual_seed(seed)
    rows, pos, docs = [], [], []
    for doc, n in enumerate(lengths):
        toks = torch.randint(1, vocab, (n,), generator=g).tolist()
        for start in range(0, n, t - 1):
            piece = toks[start:start + t - 1]
            p = list(range(start, start + len(piece)))
            pad = t - 1 - len(piece)
            rows.append([0, *piece, *[0] * pad])
            pos.append([-1, *p, *[-1] * pad])
            docs.append(1000 + doc)
    return Windows(torch.tensor(rows), torch.tensor(docs), torch.tensor(pos))


@pytest.fixture
def store_path(tmp_path):
    win = cut_windows(DOC_LENGTHS)
    write_store(tmp_path / "s", Tiny().eval(), ["layers.1"], win, batch_size=3, shard_rows=20)
    return tmp_path / "s"


def naive_document(acts, doc_ids, positions, doc, first, n):
    """Rows of document ``doc`` at positions first .. first+n-1, found by scanning every row of the store."""
    out = []
    for p in range(first, first + n):
        hit = ((doc_ids == doc) & (positions == p)).nonzero().squeeze(1)
        assert hit.numel() == 1
        out.append(acts[hit[0]])
    return torch.stack(out) if out else acts[:0]


def test_windows_match_the_documents_read_row_by_row(store_path):
    store = ActivationStore.open(store_path)
    reader = SequenceReader(store)
    n_windows = len(cut_windows(DOC_LENGTHS).tokens)
    assert reader.window == T and reader.n_windows == n_windows == sum(-(-n // 7) for n in DOC_LENGTHS)
    acts, doc_ids, positions = store.read("layers.1", 0, store.n_rows), store.doc_ids.all(), store.positions.all()
    seen = []
    for batch in reader.batches("layers.1", batch_size=4, seed=3):
        assert batch.acts.shape == (4, T, 16) and batch.mask.shape == (4, T) and batch.mask.dtype == torch.bool
        for b, w in enumerate(batch.windows.tolist()):
            seen.append(w)
            m = batch.mask[b]
            doc = int(doc_ids[w * T + 1])  # token 1 of every window is a document token
            first = int(positions[w * T + 1])
            ref = naive_document(acts, doc_ids, positions, doc, first, int(m.sum()))
            torch.testing.assert_close(batch.acts[b][m], ref, rtol=0, atol=0)
            assert not m[0] and m[1:int(m.sum()) + 1].all() and not m[int(m.sum()) + 1:].any()  # BOS, doc, padding
    assert len(seen) == len(set(seen)) == (n_windows // 4) * 4  # one epoch: every window at most once
    assert reader.n_batches(4) == n_windows // 4


def test_short_documents_are_padded_and_masked(store_path):
    reader = SequenceReader.open(store_path)
    lengths = [min(7, n - s) for n in DOC_LENGTHS for s in range(0, n, 7)]
    batch = reader.read_windows("layers.1", list(range(reader.n_windows)))
    assert batch.mask.sum(1).tolist() == lengths  # a 3-token document: BOS + 3 tokens + 4 padding rows
    assert batch.mask.sum(1).min() == 1


def test_order_is_seeded_and_resumes_exactly(store_path):
    reader = SequenceReader.open(store_path)
    full = list(reader.batches("layers.1", batch_size=3, seed=7, epochs=2, prefetch=2))
    again = list(reader.batches("layers.1", batch_size=3, seed=7, epochs=2))
    resumed = list(reader.batches("layers.1", batch_size=3, seed=7, epochs=2, start_batch=5))
    assert len(full) == 2 * (reader.n_windows // 3) and len(resumed) == len(full) - 5
    for a, b in zip(full, again):
        assert torch.equal(a.acts, b.acts) and torch.equal(a.windows, b.windows)
    for a, b in zip(full[5:], resumed):
        assert torch.equal(a.acts, b.acts) and torch.equal(a.mask, b.mask) and torch.equal(a.windows, b.windows)
    per_epoch = reader.n_windows // 3
    first = torch.cat([b.windows for b in full[:per_epoch]])
    second = torch.cat([b.windows for b in full[per_epoch:]])
    other_seed = torch.cat([b.windows for b in reader.batches("layers.1", batch_size=3, seed=8)])
    assert not torch.equal(first, second) and not torch.equal(first, other_seed)
    assert torch.equal(reader.batch_windows(5, batch_size=3, seed=7), full[5].windows)


def test_both_readers_check_the_same_manifest_checksums(store_path):
    victim = store_path / "acts/layers.1/shard_000002.safetensors"
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0xFF
    victim.write_bytes(bytes(raw))
    store = ActivationStore.open(store_path)
    reader = SequenceReader(store)
    assert reader.read_windows("layers.1", [0, 1, 4]).acts.shape == (3, T, 16)  # rows 0..39: shards 0 and 1 only
    with pytest.raises(StoreError, match=r"acts/layers\.1/shard_000002\.safetensors is corrupted"):
        list(reader.batches("layers.1", batch_size=4, seed=0))
    with pytest.raises(StoreError, match=r"acts/layers\.1/shard_000002\.safetensors is corrupted"):
        list(store.batches("layers.1", batch_size=8, seed=0))
    rows = store_path / "rows/shard_000001.safetensors"
    raw = bytearray(rows.read_bytes())
    raw[-3] ^= 0xFF
    rows.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"rows/shard_000001\.safetensors is corrupted"):
        SequenceReader.open(store_path).read_windows("layers.1", [2])


def test_a_store_without_sequence_boundaries_says_how_to_recache(tmp_path, store_path):
    m = read_manifest(store_path)
    write_manifest(store_path, m._replace(config={k: v for k, v in m.config.items() if k != "context_length"}))
    store = ActivationStore.open(store_path)
    assert store.read("layers.1", 0, 5).shape == (5, 16)  # token-level reading does not need boundaries
    with pytest.raises(StoreError, match=r"no window length.*re-cache it with `assay cache`"):
        SequenceReader(store)
    shuffled = cut_windows(DOC_LENGTHS)
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(0))
    shuffled = Windows(shuffled.tokens[:, perm], shuffled.doc_ids, shuffled.positions[:, perm])
    write_store(tmp_path / "shuffled", Tiny().eval(), ["layers.1"], shuffled, batch_size=3, shard_rows=20)
    reader = SequenceReader.open(tmp_path / "shuffled")
    with pytest.raises(StoreError, match=r"window \d+ has document positions .* not consecutive.*re-cache"):
        list(reader.batches("layers.1", batch_size=4, seed=0))


def test_bad_arguments(store_path):
    reader = SequenceReader.open(store_path)
    with pytest.raises(StoreError, match="batch_size must lie"):
        reader.batches("layers.1", batch_size=reader.n_windows + 1, seed=0)
    with pytest.raises(StoreError, match="no site 'layers.9'"):
        reader.batches("layers.9", batch_size=2, seed=0)
    with pytest.raises(StoreError, match="window numbers must lie"):
        reader.read_windows("layers.1", [reader.n_windows])
    with pytest.raises(StoreError, match="start_batch must lie"):
        reader.batches("layers.1", batch_size=2, seed=0, start_batch=10_000)
