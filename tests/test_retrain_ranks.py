"""The LDS retraining harness spread over processes: each (subset, run) job is seeded by the job alone, so
1 and 2 worker processes, and 2 gloo ranks, give the same target values bit for bit, and share one cache."""

from functools import partial

import pytest
import torch
from data_attribution_data import random_data
from gloo_ranks import run_ranks

from assay.data_attribution import retrain

CFG = dict(n_subsets=4, fraction=0.5, runs_per_subset=2, seed=7)


def _fn():
    x, y = random_data(30, seed=20, d=3)
    # an MLP whose initialisation and batch order follow the seed: a seeding bug changes the values
    return partial(retrain.mlp_target_values, x_train=x, y_train=y, x_target=x[:5], y_target=y[:5], n_classes=3,
                   epochs=2)


def _fail(idx, seed):
    raise AssertionError("cached results should have been reused")


def test_run_seeds_are_distinct_and_matter():
    seeds = {retrain.run_seed(7, j, r) for j in range(4) for r in range(2)}
    assert len(seeds) == 8
    idx = torch.arange(15)
    assert not torch.equal(_fn()(idx, retrain.run_seed(7, 0, 0)), _fn()(idx, retrain.run_seed(7, 0, 1)))
    with pytest.raises(ValueError, match="runs_per_subset must be ≤ 101"):
        retrain.RetrainConfig(runs_per_subset=102)


def test_one_and_two_workers_give_identical_values_and_share_the_cache(tmp_path):
    one = retrain.retrain(_fn(), 30, retrain.RetrainConfig(**CFG, n_workers=1), cache_dir=tmp_path / "a", key="k")
    two = retrain.retrain(_fn(), 30, retrain.RetrainConfig(**CFG, n_workers=2), cache_dir=tmp_path / "b", key="k")
    assert torch.equal(one.masks, two.masks) and torch.equal(one.values, two.values)
    again = retrain.retrain(_fail, 30, retrain.RetrainConfig(**CFG, n_workers=2), cache_dir=tmp_path / "a", key="k")
    assert torch.equal(again.values, one.values)  # the 1-worker cache serves a 2-worker run


def _worker(rank, world, cache_dir):
    res = retrain.retrain_distributed(_fn(), 30, retrain.RetrainConfig(**CFG), cache_dir=cache_dir, key="k")
    return {"masks": res.masks.tolist(), "values": res.values.tolist()}


@pytest.mark.slow
def test_two_ranks_give_the_single_process_values(tmp_path):
    ranks = run_ranks(_worker, tmp_path, "retrain", str(tmp_path / "cache"))
    single = retrain.retrain(_fn(), 30, retrain.RetrainConfig(**CFG))
    for r in ranks:
        assert torch.equal(torch.tensor(r["masks"]), single.masks)
        assert torch.equal(torch.tensor(r["values"], dtype=torch.float64), single.values)
    assert len(list((tmp_path / "cache").glob("retrain-*/subset*_run*.npy"))) == 8  # both ranks' blocks cached
    again = retrain.retrain(_fail, 30, retrain.RetrainConfig(**CFG), cache_dir=tmp_path / "cache", key="k")
    assert torch.equal(again.values, single.values)
