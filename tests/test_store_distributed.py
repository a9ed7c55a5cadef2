"""Distributed caching: two gloo ranks on localhost write the single-process store byte for byte; a rank
killed mid-run is named by the survivor (no hang), its finished shards survive, and the resumed run
completes the same store; a resume with another world size is refused."""

import json
import os

import pytest
import torch
from gloo_ranks import run_ranks

from assay.models.transformer import Transformer, TransformerConfig
from assay.store import ActivationStore, StoreError, write_store
from assay.store.distributed import RANKS, _start, write_store_distributed
from assay.store.manifest import read_manifest
from assay.store.ranks import rank_block

SITES = ["blocks.0", "blocks.1"]
KW = dict(batch_size=3, shard_rows=12, dtype="float32")  # batches straddle shards and the ranks' blocks


def _model():
    cfg = TransformerConfig(vocab_size=50, n_layers=2, n_heads=2, d_model=16, context=8)
    return Transformer(cfg, generator=torch.Generator().manual_seed(0)).eval()


def _tokens():
    return torch.randint(0, 50, (10, 8), generator=torch.Generator().manual_seed(1))  # 80 rows: 7 shards


def _worker(rank, world, out, kill_at_rows):
    def progress(done, total):
        if kill_at_rows is not None and rank == 1 and done >= kill_at_rows:
            os._exit(1)  # killed: no cleanup, no goodbye

    try:
        s = write_store_distributed(out, _model(), SITES, _tokens(), **KW, progress=progress, max_pending=0)
        return {"error": None, "resumed": s.resumed_rows, "rows": s.n_rows, "shards": s.n_shards}
    except StoreError as e:
        return {"error": str(e)}


def _run(tmp_path, tag, out, kill_at_rows=None):
    return run_ranks(_worker, tmp_path, tag, str(out), kill_at_rows)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "store"
    write_store(out, _model(), SITES, _tokens(), **KW)
    return out


def _same_store(got, want):
    a, b = read_manifest(got), read_manifest(want)
    assert a.complete and a.config == b.config and a.n_rows == b.n_rows
    assert [s.files for s in a.shards] == [s.files for s in b.shards]  # same files, same SHA-256
    x, y = ActivationStore.open(got), ActivationStore.open(want)
    for site in SITES:
        assert torch.equal(x.read(site, 0, 80), y.read(site, 0, 80))
    assert torch.equal(x.tokens.all(), y.tokens.all()) and torch.equal(x.doc_ids.all(), y.doc_ids.all())
    x.close(), y.close()
    assert not (got / RANKS).exists()


def test_blocks_cover_the_shards_once():
    for n, world in [(7, 2), (3, 4), (10, 3)]:
        blocks = [rank_block(n, r, world) for r in range(world)]
        assert [k for b in blocks for k in b] == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


@pytest.mark.slow
def test_two_ranks_write_the_single_process_store(tmp_path, single):
    res = _run(tmp_path, "a", tmp_path / "store")
    assert res == [{"error": None, "resumed": 0, "rows": 80, "shards": 7}] * 2
    _same_store(tmp_path / "store", single)


@pytest.mark.slow
def test_killed_rank_is_named_and_resumes_without_redoing_shards(tmp_path, single):
    out = tmp_path / "store"
    rank0, rank1 = _run(tmp_path, "kill", out, kill_at_rows=24)  # rank 1 (shards 3..6) dies after 3..5
    assert rank1 is None
    assert "rank 1: no answer: the process died" in rank0["error"] and "Re-run the same command" in rank0["error"]
    assert not read_manifest(out).complete
    with pytest.raises(StoreError, match=r"started by 2 process\(es\); this run has 1"):
        write_store(out, _model(), SITES, _tokens(), **KW)
    record = json.loads((out / RANKS / "rank_00001.json").read_text())
    assert [s["index"] for s in record["shards"]] == [3, 4, 5]
    kept = [f.path for k in range(6) for f in read_manifest(single).shards[k].files.values()]
    stamps = {p: (out / p).stat().st_mtime_ns for p in kept}
    res = _run(tmp_path, "resume", out)
    assert [r["resumed"] for r in res] == [36, 36] and all(r["error"] is None for r in res)
    assert {p: (out / p).stat().st_mtime_ns for p in kept} == stamps  # finished shards were not rewritten
    _same_store(out, single)


def test_distributed_resume_of_a_single_process_store_is_refused(tmp_path):
    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    out = tmp_path / "store"
    with pytest.raises(Stop):
        write_store(out, _model(), SITES, _tokens(), **KW, progress=stop, max_pending=0)
    m = read_manifest(out)
    assert not m.complete and m.shards  # an unfinished single-process store
    with pytest.raises(StoreError, match=r"started by 1 process\(es\); this run has 2. Resume it with a single process"):
        _start(out, m.config, m.n_rows, 2, True)
    other = {**m.config, "sites": ["blocks.1"]}
    with pytest.raises(StoreError, match="sites: store has"):
        _start(out, other, m.n_rows, 1, True)
