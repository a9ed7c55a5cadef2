"""Training-data attribution, second part: metrics and applications, bad input, EK-FAC and group
attribution (the first part, tests/test_data_attribution.py: gradients, projections, influence, TRAK,
TracIn).

Oracles: explicit Hessians, python loops of autograd.grad, retraining, closed-form metric check values.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from data_attribution_data import gen as _gen
from data_attribution_data import random_data as _data
from data_attribution_data import tiny_mlp as _mlp
from torch import nn

from assay.data_attribution import (
    featstore,
    featurize,
    grads,
    groups,
    influence,
    projection,
    retrain,
    trak,
)
from assay.data_attribution.applications import opponents, proponents, prune_by_attribution
from assay.evaluate.lds import expand_group_masks, lds
from assay.evaluate.mislabel import plant_label_noise
from assay.stats import auroc, spearman

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=_gen(0))
    return x[perm], y[perm]


# ---------------------------------------------------------------- evaluation and applications


def test_metric_check_values():
    assert auroc(torch.tensor([0.9, 0.1, 0.8, 0.3, 0.2]), torch.tensor([1, 0, 0, 1, 0])) == pytest.approx(0.833333, abs=1e-6)
    tau = torch.randn(30, 4, generator=_gen(21))
    masks = torch.rand(20, 30, generator=_gen(22)) > 0.5
    assert lds(tau, masks, masks.double() @ tau.double()).mean == pytest.approx(1.0)
    assert lds(tau, masks, -(masks.double() @ tau.double())).mean == pytest.approx(-1.0)


def test_lds_of_influence_and_trak_on_digits_logreg(digits, tmp_path):
    x, y = digits
    xtr, ytr, xte, yte = x[:200], y[:200], x[200:220], y[200:220]
    l2 = 1e-2
    model = retrain.fit_logreg(xtr, ytr, 10, l2=l2)
    fn = partial(retrain.logreg_target_values, x_train=xtr, y_train=ytr, x_target=xte, y_target=yte, n_classes=10, l2=l2)
    cfg = retrain.RetrainConfig(n_subsets=12, fraction=0.5, seed=0)
    truth = retrain.retrain(fn, 200, cfg, cache_dir=tmp_path, key="digits-lr-test")
    h = influence.loss_hessian(model, xtr, ytr, l2=l2)
    scores = influence.influence_scores(grads.per_example_grads(model, xtr, ytr),
                                        influence.solve_explicit(h, grads.per_example_grads(model, xte, yte).T))
    res = lds(scores, truth.masks, truth.values)
    assert res.mean > 0.6 and res.ci_low < res.mean < res.ci_high
    # a random score matrix has LDS near zero
    assert abs(lds(torch.randn(200, 20, generator=_gen(23)), truth.masks, truth.values).mean) < 0.2
    # the cache resumes: a second call computes nothing (a train_eval that would fail)
    again = retrain.retrain(_fail, 200, cfg, cache_dir=tmp_path, key="digits-lr-test")
    torch.testing.assert_close(again.values, truth.values)
    # group LDS by class: group scores = sums of pointwise scores, subsets = unions of groups
    gid = groups.groups_by_class(ytr, per_class=3, generator=_gen(24))
    _, k = groups.check_groups(gid, 200)
    gmasks = retrain.subset_masks(k, 12, 0.5, seed=1)
    gtruth = torch.stack([fn(expand_group_masks(gmasks[j : j + 1], gid)[0].nonzero().squeeze(1), 0) for j in range(12)])
    assert lds(groups.group_sum(scores, gid, k), gmasks, gtruth).mean > 0.5


def _fail(idx, seed):
    raise AssertionError("cached results should have been reused")


def test_retrain_serial_runs_on_one_thread_and_restores_it():
    seen = []

    def record(idx, seed):
        seen.append(torch.get_num_threads())
        return torch.zeros(1)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        retrain.retrain(record, 10, retrain.RetrainConfig(n_subsets=3, fraction=0.5))
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2  # like the worker processes; restored after
    finally:
        torch.set_num_threads(before)


def test_retrain_resumes_after_interruption_and_parallel_equals_serial(tmp_path):
    x, y = _data(40, 25, d=3)
    fn = partial(retrain.logreg_target_values, x_train=x, y_train=y, x_target=x[:4], y_target=y[:4], n_classes=3)
    cfg = retrain.RetrainConfig(n_subsets=4, fraction=0.5, seed=3)
    full = retrain.retrain(fn, 40, cfg, cache_dir=tmp_path / "a", key="k")
    files = sorted((tmp_path / "a").glob("retrain-*/subset*.npy"))
    assert len(files) == 4
    files[2].unlink()  # simulate an interruption before the third subset finished
    calls = []

    def counting(idx, seed):
        calls.append(seed)
        return fn(idx, seed)

    resumed = retrain.retrain(counting, 40, cfg, cache_dir=tmp_path / "a", key="k")
    assert len(calls) == 1
    torch.testing.assert_close(resumed.values, full.values)
    par = retrain.retrain(fn, 40, retrain.RetrainConfig(n_subsets=4, fraction=0.5, seed=3, n_workers=2))
    torch.testing.assert_close(par.values, full.values)


def test_mislabel_detection_by_self_influence(digits):
    x, y = digits[0][:200], digits[1][:200]
    noisy, flip = plant_label_noise(y, 0.1, 10, generator=_gen(26))
    assert int(flip.sum()) == 20 and bool((noisy[flip] != y[flip]).all()) and bool((noisy[~flip] == y[~flip]).all())
    model = retrain.fit_logreg(x, noisy, 10, l2=1e-2)
    g = grads.per_example_grads(model, x, noisy)
    h = influence.loss_hessian(model, x, noisy, l2=1e-2)
    self_inf = (g * influence.solve_explicit(h, g.T).T).sum(1)
    assert auroc(self_inf, flip) > 0.85


def test_applications_rank_and_prune():
    s = torch.tensor([[3.0, -1.0], [1.0, 2.0], [-2.0, 0.5], [0.0, -3.0]])
    assert proponents(s, 2).indices.tolist() == [[0, 1], [1, 2]]
    assert opponents(s, 1).indices.tolist() == [[2], [3]]
    assert prune_by_attribution(s, 0.5).tolist() == [0, 1]
    with pytest.raises(ValueError, match="keep_fraction"):
        prune_by_attribution(s, 0.0)


def test_grad_kmeans_groups_are_valid_and_recover_clusters():
    centers = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    truth = torch.arange(60) % 3
    feats = centers[truth] + 0.1 * torch.randn(60, 2, generator=_gen(27))
    lab = groups.groups_by_kmeans(feats, 3, generator=_gen(28), normalize=False)
    groups.check_groups(lab, 60)
    # the clustering equals the truth up to relabelling
    assert all(len(set(lab[truth == c].tolist())) == 1 for c in range(3)) and len(set(lab.tolist())) == 3
    within = groups.groups_by_kmeans(feats, 6, targets=truth, generator=_gen(29))
    for gid in within.unique():
        assert len(set(truth[within == gid].tolist())) == 1


def test_feature_store_resumes(tmp_path):
    model, (x, y) = _mlp(), _data(10, 30)
    cfg = projection.ProjectionConfig(dim=8)
    want = featurize.featurize(model, x, y, projection=cfg)

    def compute(a, b):
        return featurize.featurize(model, x[a:b], y[a:b], projection=cfg), torch.zeros(b - a)

    store = featstore.FeatureStore(tmp_path / "f", n=10, k=8, identity={"model": "mlp"})
    assert featstore.featurize_to_store(store, compute, batch_size=3, max_batches=2) == 2
    with pytest.raises(ValueError, match="not featurised"):
        store.read()
    store = featstore.FeatureStore(tmp_path / "f", n=10, k=8, identity={"model": "mlp"})
    assert featstore.featurize_to_store(store, compute, batch_size=3) == 2  # only the two missing batches
    torch.testing.assert_close(store.read()[0], want)
    with pytest.raises(ValueError, match="different run"):
        featstore.FeatureStore(tmp_path / "f", n=10, k=8, identity={"model": "other"})


class _Interrupting(nn.Module):
    """Wraps a model; raises on the ``fail_at``-th forward call (simulates a killed featurisation)."""

    def __init__(self, inner: nn.Module, fail_at: int | None):
        super().__init__()
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return self.inner(x)


def test_interrupted_trak_featurisation_resumes(tmp_path):
    inner, (x, y) = _mlp(), _data(10, 60)
    cfg = projection.ProjectionConfig(dim=8, block_rows=16)
    want_phi, want_q = trak.trak_featurize(inner, x, y, projection=cfg, method="dense", batch_size=4)
    ident = {"model": "mlp", "seed": 0}
    killed = _Interrupting(inner, fail_at=3)  # each batch: one forward for Φ (vmap counts once) and one for Q
    with pytest.raises(KeyboardInterrupt):
        trak.trak_featurize(killed, x, y, projection=cfg, method="dense", batch_size=4,
                            store=featstore.FeatureStore(tmp_path / "s", n=10, k=8, identity=ident))
    store = featstore.FeatureStore(tmp_path / "s", n=10, k=8, identity=ident)
    assert int(store.done.sum()) == 4  # the first batch finished before the interruption, the second did not
    resumed = _Interrupting(inner, fail_at=None)
    phi, q = trak.trak_featurize(resumed, x, y, projection=cfg, method="dense", batch_size=4, store=store)
    assert resumed.calls == 4  # two remaining batches × (Φ, Q); the finished batch was not recomputed
    torch.testing.assert_close(phi, want_phi, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(q, want_q)
    with pytest.raises(ValueError, match="use a store of that shape"):
        trak.trak_featurize(inner, x, y, projection=cfg, store=featstore.FeatureStore(tmp_path / "t", n=10, k=4))


# ---------------------------------------------------------------- bad input


def test_bad_input_errors():
    model = _mlp()
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="do not require grad"):
        grads.select_parameters(model, ["0.weight"])
    indefinite = torch.diag(torch.tensor([2.0, -1.0, 0.5]))
    with pytest.raises(ValueError, match="negative curvature"):  # CG on an indefinite H must not return garbage
        influence.solve_cg(lambda v: indefinite @ v, torch.ones(3), damping=0.1)
    torch.testing.assert_close(influence.solve_cg(lambda v: indefinite @ v, torch.ones(3), damping=1.5),
                               torch.ones(3) / torch.tensor([3.5, 0.5, 2.0]))
    frozen = _mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        trak.trak([frozen], _data(6, 61), _data(2, 62), projection=projection.ProjectionConfig(dim=4))
    with pytest.raises(ValueError, match="add a leading batch dimension"):  # one target point without its batch dim
        trak.trak([_mlp()], _data(6, 63), (_data(1, 64)[0][0], torch.tensor([0])),
                  projection=projection.ProjectionConfig(dim=4))
    with pytest.raises(ValueError, match="names no parameter"):
        grads.select_parameters(model, ["nope"])
    with pytest.raises(ValueError, match="projection dim must be a positive integer"):
        projection.ProjectionConfig(dim=0)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        retrain.RetrainConfig(fraction=1.0)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        retrain.subset_masks(10, 3, 0.0, 0)
    x, y = _data(20, 31)
    with pytest.raises(ValueError, match="example shape"):
        trak.trak([_mlp()], (x, y), (torch.randn(5, 4), y[:5]), projection=projection.ProjectionConfig(dim=8))
    with pytest.raises(ValueError, match="method='factored'"):
        featurize.featurize(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(6, 2)), torch.randn(4, 1, 5),
                            torch.zeros(4, dtype=torch.long), projection=projection.ProjectionConfig(dim=4),
                            method="factored")
    with pytest.raises(ValueError, match="no empty group"):
        groups.check_groups(torch.tensor([0, 2, 2]), 3)



# ---------------------------------------------------------------- EK-FAC and group attribution


def test_ekfac_matches_explicit_influence_on_logreg():
    from assay.data_attribution import ekfac

    x, y = _data(300, 32, d=6)
    xt, yt = _data(6, 33, d=6)
    model = retrain.fit_logreg(x, y, 3, l2=1e-2)
    f = ekfac.fit_ekfac(model, x, y, fisher="true", n_samples=20, damping=1e-2, generator=_gen(34))
    got = ekfac.ekfac_scores(model, f, (x, y), (xt, yt))
    h = influence.loss_hessian(model, x, y)
    want = influence.influence_scores(grads.per_example_grads(model, x, y),
                                      influence.solve_explicit(h, grads.per_example_grads(model, xt, yt).T, damping=1e-2))
    assert float(spearman(got, want, dim=0).min()) > 0.95
    # on an MLP the per-layer solve equals the dense inverse of the EK-FAC block
    mlp = _mlp()
    xm, ym = _data(50, 35)
    fm = ekfac.fit_ekfac(mlp, xm, ym, fisher="empirical", damping=0.05)
    lay = fm["2"]
    a, s = ekfac.layer_grads(mlp, [p for p in featurize.linear_plan(mlp, grads.select_parameters(mlp)) if p.name == "2"],
                             xm[:2], ym[:2])["2"]
    q = torch.kron(lay.q_s, lay.q_a)  # eigenbasis of the row-major vec of [out, in+1]
    dense = q @ torch.diag(lay.eigen.reshape(-1) + lay.damping) @ q.T
    v = (s[0][:, None] * a[0][None, :]).reshape(-1)
    solved = lay.q_s @ ((lay.q_s.T @ v.reshape(s.shape[1], -1) @ lay.q_a) / (lay.eigen + lay.damping)) @ lay.q_a.T
    torch.testing.assert_close(solved.reshape(-1), torch.linalg.solve(dense, v), atol=1e-4, rtol=1e-3)


def test_group_grads_vectorised_equal_loop_with_weights():
    model, (x, y) = _mlp(), _data(23, 40)
    gid = torch.tensor([0, 1, 2, 3] * 5 + [0, 0, 3])  # unequal sizes: padding must not leak in
    w = torch.rand(23, generator=_gen(41)) - 0.5
    per = grads.per_example_grads(model, x, y, out_fn=grads.margin)
    want = groups.group_sum(per * w[:, None], gid, 4)
    for gpc in (1, 3, 64):
        got = grads.group_grads(model, x, y, gid, out_fn=grads.margin, weights=w, groups_per_call=gpc)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    loop = grads.group_grads(model, x, y, gid, out_fn=grads.margin, weights=w, vectorize=False)
    torch.testing.assert_close(loop, want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="weights must be"):
        grads.group_grads(model, x, y, gid, weights=torch.ones(3))


def test_group_features_and_group_scores():
    from assay.data_attribution import group_trak

    model, (x, y) = _mlp(), _data(40, 36)
    xt, yt = _data(4, 37)
    gid = groups.groups_by_class(y, per_class=2, generator=_gen(38))
    _, k = groups.check_groups(gid, 40)
    for method in ("dense", "factored"):
        cfg = projection.ProjectionConfig(dim=16, block_rows=32)
        got = group_trak.group_features(model, x, y, gid, projection=cfg, method=method)
        per = featurize.featurize(model, x, y, projection=cfg, out_fn=grads.margin, method=method)
        torch.testing.assert_close(got, groups.group_sum(per, gid, k), atol=1e-5, rtol=1e-4)
    cfg = projection.ProjectionConfig(dim=12, block_rows=32)
    point = trak.trak([model], (x, y), (xt, yt), projection=cfg, method="dense")
    tol = {"atol": 1e-5 * float(point.abs().max()) + 1e-9, "rtol": 1e-3}
    # the exact kernel: group TRAK is pointwise TRAK summed over each group (Q folded into the group gradient)
    exact = group_trak.group_trak([model], (x, y), (xt, yt), gid, projection=cfg, kernel="exact", method="dense")
    torch.testing.assert_close(exact, groups.group_sum(point, gid, k), **tol)
    # singleton groups: the signed sketch is the exact kernel, and the literal group kernel is pointwise TRAK
    for kern in ("signed", "group"):
        single = group_trak.group_trak([model], (x, y), (xt, yt), torch.arange(40), projection=cfg, kernel=kern,
                                       seed=5, method="dense")
        torch.testing.assert_close(single, point, **tol)
    # the signed sketch is unbiased for the pointwise kernel: averaging many draws approaches the exact scores
    run = partial(group_trak.group_trak, [model], (x, y), (xt, yt), gid, projection=cfg, method="factored",
                            lambda_reg=0.1)
    many, exact_f, few = run(kernel="signed", sketch_draws=400), run(kernel="exact"), run(kernel="signed")
    err = lambda s: float((s / s.norm() - exact_f / exact_f.norm()).norm())  # noqa: E731
    assert err(many) < 0.2 and err(many) < err(few)
    with pytest.raises(ValueError, match="kernel must be"):
        run(kernel="points")
    with pytest.raises(ValueError, match="singular without damping"):  # 6 group rows cannot span 12 dims
        run(kernel="group", lambda_reg=0.0)
