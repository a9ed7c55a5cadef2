"""Sharded TRAK (Park et al. 2023) and influence functions (Koh & Liang 2017) over two gloo ranks on localhost:
the scores equal the single-process ``trak.trak`` and explicit influence; a rank killed after writing some of
its TRAK feature batches is named by the survivor, and the resume recomputes only the missing batches and gives
the same scores bit for bit; a resume with another number of ranks is refused."""

import json
import os

import pytest
import torch
from data_attribution_data import random_data, tiny_mlp
from gloo_ranks import run_ranks

from assay.data_attribution import grads, influence, retrain, trak
from assay.data_attribution.featstore import FeatureStore
from assay.data_attribution.projection import ProjectionConfig
from assay.data_attribution.sharded import META_FILE, ShardedError, _start, influence_sharded, trak_sharded

N, M, BATCH = 30, 5, 4  # 15 rows per rank: batches of 4, 4, 4, 3 per model
KW = dict(projection=ProjectionConfig(dim=16, seed=3), lambda_reg=1e-2, batch_size=BATCH)


def _models():
    return [tiny_mlp(0), tiny_mlp(1)]


def _problem():
    return random_data(N, seed=10), random_data(M, seed=11)


def _logreg():
    (x, y), target = random_data(N, seed=12, d=4), random_data(M, seed=13, d=4)
    return retrain.fit_logreg(x, y, 3, l2=0.1), (x, y), target


def _worker(rank, world, out, kill_after, with_influence=False):
    written = []
    write = FeatureStore.write

    def counting_write(self, start, features, out_to_loss=None):
        if rank == 1 and len(written) == kill_after:
            os._exit(1)  # killed: no cleanup, no goodbye
        write(self, start, features, out_to_loss)
        written.append([self.path.parent.name, start])

    FeatureStore.write = counting_write
    train, target = _problem()
    try:
        res = trak_sharded(_models(), train, target, out_dir=out, **KW)
    except ShardedError as e:
        return {"error": str(e), "written": written}
    doc = {"error": None, "scores": res.scores.tolist(), "resumed": res.resumed_rows,
           "computed": res.computed_rows, "written": written}
    if with_influence:  # the same launch: start-up dominates the cost
        for solver in ("explicit", "cg"):
            doc[solver] = influence_sharded(*_logreg(), solver=solver, l2=0.1, damping=0.01, max_iter=60).tolist()
    return doc


@pytest.fixture(scope="module")
def single():
    train, target = _problem()
    return trak.trak(_models(), train, target, **KW)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    d = tmp_path_factory.mktemp("fresh")
    return run_ranks(_worker, d, "fresh", str(d / "feats"), None, True)


@pytest.mark.slow
def test_two_ranks_give_the_single_process_scores(fresh, single):
    assert all(r["error"] is None and r["resumed"] == 0 and r["computed"] == 2 * N // 2 for r in fresh)
    assert len(fresh[0]["written"]) == len(fresh[1]["written"]) == 2 * 4  # 2 models × 4 batches, each rank
    a, b = (torch.tensor(r["scores"]) for r in fresh)
    assert torch.equal(a, b)
    scale = float(single.abs().max())
    assert float(single.std()) > 0.1 * scale > 0  # scores that vary: not a trivial comparison
    # only the batching of the featurisation and the order of the float64 kernel sum differ
    torch.testing.assert_close(a, single, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.slow
def test_two_ranks_give_the_single_process_influence(fresh):
    model, (x, y), (xt, yt) = _logreg()
    h = influence.loss_hessian(model, x, y, l2=0.1)
    want = influence.influence_scores(grads.per_example_grads(model, x, y),
                                      influence.solve_explicit(h, grads.per_example_grads(model, xt, yt).T, damping=0.01))
    assert float(want.std()) > 0
    for solver, atol in (("explicit", 1e-6), ("cg", 1e-4)):  # CG: stopped after 60 iterations or at tol 1e-8
        a, b = (torch.tensor(r[solver]) for r in fresh)
        assert torch.equal(a, b)
        torch.testing.assert_close(a, want, rtol=1e-4, atol=atol * float(want.abs().max()))


@pytest.mark.slow
def test_killed_rank_is_named_and_resume_redoes_only_its_missing_batches(tmp_path, fresh):
    out = tmp_path / "feats"
    rank0, rank1 = run_ranks(_worker, tmp_path, "kill", str(out), 2)  # rank 1 dies before its third batch
    assert rank1 is None
    assert "rank 1: no answer: the process died" in rank0["error"] and "Re-run the same command" in rank0["error"]
    meta = json.loads((out / META_FILE).read_text())
    with pytest.raises(ShardedError, match=r"from a run of 2 ranks; this run has 1.*--nproc-per-node 2"):
        _start(out, {**meta, "world_size": 1})
    with pytest.raises(ShardedError, match=r"(?s)different run.*n_train: folder has 30, this run 31"):
        _start(out, {**meta, "n_train": 31})
    r0, r1 = run_ranks(_worker, tmp_path, "resume", str(out), None)
    assert r0["written"] == [] and (r0["resumed"], r0["computed"]) == (30, 0)  # rank 0 had finished
    # rank 1 had flushed model 0's batches at rows 0 and 4 of its block: it redoes the other six
    assert r1["written"] == [["model_00000", 8], ["model_00000", 12]] + [["model_00001", s] for s in (0, 4, 8, 12)]
    assert (r1["resumed"], r1["computed"]) == (8, 22)
    assert r0["scores"] == r1["scores"] == fresh[0]["scores"]  # bit for bit the uninterrupted run
