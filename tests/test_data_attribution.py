"""Training-data attribution: gradients, projections, influence, TRAK, TracIn, groups, harness, metrics.

Oracles: python loops of autograd.grad, materialised projection matrices, explicit Hessians,
leave-one-out retraining, traker (NoOpProjector), closed-form metric check values.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from assay.config import ConfigError
from assay.data_attribution import (
    featstore,
    featurize,
    grads,
    groups,
    influence,
    projection,
    retrain,
    scorers,
    tracin,
    trak,
)
from assay.data_attribution.applications import opponents, proponents, prune_by_attribution
from assay.evaluate.lds import expand_group_masks, lds
from assay.evaluate.mislabel import plant_label_noise
from assay.stats import auroc, spearman

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # test-local model init only
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def _data(n: int, seed: int, d: int = 5, c: int = 3):
    g = _gen(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


def _loop_grads(model, x, y, out_fn, names=None):
    params = [p for n, p in model.named_parameters() if names is None or n in names]
    rows = []
    for i in range(x.shape[0]):
        v = out_fn(model(x[i : i + 1]), y[i : i + 1]).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, params)]))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=_gen(0))
    return x[perm], y[perm]


# ---------------------------------------------------------------- gradients and projections


@pytest.mark.parametrize("out_name", ["margin", "loss"])
def test_per_example_grads_equal_autograd_loop(out_name):
    model, (x, y) = _mlp(), _data(9, 1)
    fn = grads.output_fn(out_name)
    got = grads.per_example_grads(model, x, y, out_fn=fn, chunk_size=4)
    torch.testing.assert_close(got, _loop_grads(model, x, y, fn), atol=1e-6, rtol=1e-5)
    sub = grads.per_example_grads(model, x, y, out_fn=fn, params=["2"])
    torch.testing.assert_close(sub, _loop_grads(model, x, y, fn, {"2.weight", "2.bias"}), atol=1e-6, rtol=1e-5)


def test_margin_matches_log_odds():
    logits, y = torch.randn(6, 4, generator=_gen(2)), torch.tensor([0, 1, 2, 3, 0, 1])
    p = torch.softmax(logits, -1)[torch.arange(6), y]
    torch.testing.assert_close(grads.margin(logits, y), torch.log(p / (1 - p)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads.out_to_loss(logits, y), 1 - p)


def test_group_grads_equal_sum_of_per_example():
    model, (x, y) = _mlp(), _data(12, 3)
    gid = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 2, 0])
    per = grads.per_example_grads(model, x, y)
    torch.testing.assert_close(grads.group_grads(model, x, y, gid), groups.group_sum(per, gid, 3), atol=1e-5, rtol=1e-5)


def test_dense_projection_equals_reference_and_is_seeded():
    g = torch.randn(6, 50, generator=_gen(4))
    cfg = projection.ProjectionConfig(dim=16, block_rows=7, seed=3)
    torch.testing.assert_close(projection.project_dense(g, cfg), g @ projection.dense_matrix(cfg, 50))
    # projecting column blocks separately and summing equals projecting all at once
    parts = projection.project_dense(g[:, :14], cfg) + projection.project_dense(g[:, 14:], cfg, row_offset=14)
    torch.testing.assert_close(parts, projection.project_dense(g, cfg), atol=1e-5, rtol=1e-5)
    other = projection.project_dense(g, projection.ProjectionConfig(dim=16, block_rows=7, seed=4))
    assert not torch.allclose(other, projection.project_dense(g, cfg))


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_projection_preserves_norms_jl(kind):
    g = torch.randn(1, 10_000, generator=_gen(5))
    k = 512
    ratios = []
    for seed in range(4):
        cfg = projection.ProjectionConfig(dim=k, kind=kind, seed=seed, block_rows=2048)
        ratio = float(projection.project_dense(g, cfg).norm() / g.norm())
        assert abs(ratio - 1) < 4 / math.sqrt(k)
        ratios.append(ratio)
    assert len(set(ratios)) == 4


def test_projection_inner_products_unbiased_factored():
    # E[<R'g, R'h>] = <g, h> for the Khatri–Rao block, averaged over seeds
    model, (x, y) = _mlp(), _data(2, 6)
    g = grads.per_example_grads(model, x, y)
    est = []
    for seed in range(60):
        cfg = projection.ProjectionConfig(dim=64, seed=seed)
        r = featurize.projection_matrix(model, cfg, method="factored")
        p = g @ r
        est.append(float(p[0] @ p[1]))
    exact = float(g[0] @ g[1])
    se = float(np.std(est)) / math.sqrt(len(est))
    assert abs(float(np.mean(est)) - exact) < 4 * se + 1e-6


@pytest.mark.parametrize("method", ["dense", "factored"])
def test_featurize_equals_materialised_projection(method):
    model, (x, y) = _mlp(), _data(11, 7)
    cfg = projection.ProjectionConfig(dim=32, block_rows=16, kind="rademacher" if method == "dense" else "gaussian")
    phi = featurize.featurize(model, x, y, projection=cfg, out_fn=grads.margin, method=method, batch_size=4)
    r = featurize.projection_matrix(model, cfg, method=method)
    torch.testing.assert_close(phi, grads.per_example_grads(model, x, y, out_fn=grads.margin) @ r, atol=1e-5, rtol=1e-4)


def test_factored_projection_on_sequences_and_partial_selection():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(4, 6)
            self.head = nn.Linear(6, 3, bias=False)

        def forward(self, x):  # [B, T, 4] -> [B, 3]
            return self.head(torch.tanh(self.inp(x))).mean(1)

    torch.manual_seed(1)
    model = Seq()
    x, y = torch.randn(5, 3, 4, generator=_gen(8)), torch.randint(0, 3, (5,), generator=_gen(9))
    for names, over in ((None, 1), (["inp.bias", "head"], 1), (None, 3)):
        cfg = projection.ProjectionConfig(dim=20, oversample=over)
        phi = featurize.featurize(model, x, y, projection=cfg, params=names, method="factored")
        r = featurize.projection_matrix(model, cfg, params=names, method="factored")
        g = grads.per_example_grads(model, x, y, params=names)
        torch.testing.assert_close(phi, g @ r, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- influence functions


@pytest.fixture(scope="module")
def logreg_problem():
    x, y = _data(80, 10, d=4)
    model = retrain.fit_logreg(x, y, 3, l2=0.1)
    return model, x, y


def test_cg_and_lissa_equal_explicit_hessian(logreg_problem):
    model, x, y = logreg_problem
    h = influence.loss_hessian(model, x, y, l2=0.1)
    hvp = influence.make_hvp(model, x, y, l2=0.1)
    b = torch.randn(15, 4, generator=_gen(11))
    torch.testing.assert_close(hvp(b), h @ b, atol=1e-5, rtol=1e-5)
    exact = influence.solve_explicit(h, b, damping=0.01)
    torch.testing.assert_close(influence.solve_cg(hvp, b, damping=0.01, max_iter=60), exact, atol=1e-4, rtol=1e-4)
    scale = 1.2 * (influence.spectral_norm(hvp, 15, generator=_gen(12)) + 0.01)

    def hvp_batch(v, idx):
        return influence.make_hvp(model, x[idx], y[idx], l2=0.1)(v)

    est = influence.solve_lissa(hvp_batch, b, 80, damping=0.01, scale=scale, depth=60, batch_size=40, generator=_gen(13))
    assert float((est - exact).norm() / exact.norm()) < 0.1


def test_group_influence_is_pointwise_influence_summed(logreg_problem):
    # GGDA for influence functions: τ(G, t) = ∇ℓ(z_t)ᵀ H⁻¹ g_G with g_G one backward pass of the group's summed loss
    model, x, y = logreg_problem
    xt, yt = _data(3, 53, d=4)
    gid = groups.groups_by_class(y, per_class=4, generator=_gen(54))
    _, k = groups.check_groups(gid, 80)
    h = influence.loss_hessian(model, x, y, l2=0.1)
    solved = influence.solve_explicit(h, grads.per_example_grads(model, xt, yt).T)
    point = influence.influence_scores(grads.per_example_grads(model, x, y), solved)
    group = influence.influence_scores(grads.group_grads(model, x, y, gid), solved)
    torch.testing.assert_close(group, groups.group_sum(point, gid, k), atol=1e-5, rtol=1e-4)


def test_influence_matches_leave_one_out(logreg_problem):
    model, x, y = logreg_problem
    xt, yt = _data(3, 14, d=4)
    h = influence.loss_hessian(model, x, y, l2=0.1)
    g_train = grads.per_example_grads(model, x, y)
    g_t = grads.per_example_grads(model, xt, yt)
    scores = influence.influence_scores(g_train, influence.solve_explicit(h, g_t.T))
    base = nn.functional.cross_entropy(model(xt), yt, reduction="none").detach()
    removed = list(range(0, 80, 4))
    actual = []
    for i in removed:
        keep = torch.tensor([j for j in range(80) if j != i])
        # same objective normalisation (1/n) as H: rescale l2 so the kept objective is (1/n)Σ_{j≠i} + l2/2
        m_i = retrain.fit_logreg(x[keep], y[keep], 3, l2=0.1 * 80 / 79)
        actual.append((nn.functional.cross_entropy(m_i(xt), yt, reduction="none") - base).detach())
    actual = torch.stack(actual) * 79  # loss change × (n−1): first order equals S[i, t]
    pred = scores[removed]
    for t in range(3):
        r = np.corrcoef(pred[:, t].numpy(), actual[:, t].numpy())[0, 1]
        assert r > 0.95, r
    assert float((pred - actual).norm() / actual.norm()) < 0.2


# ---------------------------------------------------------------- TRAK and TracIn


def test_lds_equals_dattri_metric_with_ties():
    from peer_import import peer

    dattri_metric = peer("dattri.metric")
    g = _gen(50)
    scores = torch.randn(30, 6, generator=g).round(decimals=1)  # coarse values: ties in the predictions
    masks = retrain.subset_masks(30, 12, 0.5, seed=2)
    values = torch.randn(12, 6, generator=g).round(decimals=1)
    idx = torch.stack([m.nonzero().squeeze(1) for m in masks])
    want = dattri_metric.lds(scores, (values, idx))[0]
    torch.testing.assert_close(lds(scores, masks, values).per_target, want.double(), atol=1e-6, rtol=0)


def test_explicit_influence_equals_dattri_on_logreg():
    from peer_import import peer

    dattri_if = peer("dattri.algorithm.influence_function")
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _data(80, 51, d=5)
    xt, yt = _data(6, 52, d=5)
    model = retrain.fit_logreg(x, y, 3, l2=1e-2)

    def ce(params, data):
        xx, yy = data
        out = torch.func.functional_call(model, params, xx.unsqueeze(0) if xx.dim() == 1 else xx)
        return nn.functional.cross_entropy(out, yy.unsqueeze(0) if yy.dim() == 0 else yy)

    train_dl = DataLoader(TensorDataset(x, y), batch_size=80, shuffle=False)
    att = dattri_if.IFAttributorExplicit(task=AttributionTask(loss_func=ce, model=model, checkpoints=model.state_dict()),
                                         regularization=1e-2)
    att.cache(train_dl)
    ref = att.attribute(train_dl, DataLoader(TensorDataset(xt, yt), batch_size=6, shuffle=False)).detach()
    h = influence.loss_hessian(model, x, y, l2=1e-2)
    ours = influence.influence_scores(grads.per_example_grads(model, x, y),
                                      influence.solve_explicit(h, grads.per_example_grads(model, xt, yt).T))
    torch.testing.assert_close(ours, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-3)


def test_trak_matches_traker_without_projection(tmp_path):
    from peer_import import peer

    traker = peer("trak")
    from trak.projectors import NoOpProjector

    model = _mlp()
    x, y = _data(60, 15)
    xt, yt = _data(7, 16)
    tr = traker.TRAKer(
        model=model, task="image_classification", train_set_size=60, projector=NoOpProjector(device="cpu"),
        device="cpu", use_half_precision=False, save_dir=str(tmp_path), proj_dim=0, grad_wrt=["0.weight", "0.bias"],
    )
    tr.load_checkpoint(model.state_dict(), model_id=0)
    tr.featurize(batch=(x, y), num_samples=60)
    tr.finalize_features()
    tr.start_scoring_checkpoint(exp_name="e", checkpoint=model.state_dict(), model_id=0, num_targets=7)
    tr.score(batch=(xt, yt), num_samples=7)
    ref = torch.as_tensor(np.array(tr.finalize_scores(exp_name="e")))
    ours = trak.trak([model], (x, y), (xt, yt), projection=projection.ProjectionConfig(dim=None), params=["0"])
    torch.testing.assert_close(ours, ref, atol=2e-2 * float(ref.abs().max()), rtol=0)
    assert np.corrcoef(ours.flatten().numpy(), ref.flatten().numpy())[0, 1] > 0.999


def test_trak_ensemble_is_mean_and_projection_close_to_exact():
    models = [_mlp(0), _mlp(1)]
    x, y = _data(200, 17)
    xt, yt = _data(5, 18)
    exact = [trak.trak([m], (x, y), (xt, yt), projection=projection.ProjectionConfig(dim=None), params=["0"])
             for m in models]
    both = trak.trak(models, (x, y), (xt, yt), projection=projection.ProjectionConfig(dim=None), params=["0"])
    # S = mean_k(F_k G_k) ⊙ mean_k Q: with Q divided out, the ensemble is the mean of the members
    qs = [grads.out_to_loss(m(x), y).detach() for m in models]
    q_mean = (qs[0] + qs[1]) / 2
    torch.testing.assert_close(both / q_mean[:, None], (exact[0] / qs[0][:, None] + exact[1] / qs[1][:, None]) / 2,
                               atol=1e-6, rtol=1e-4)


def test_tracin_equals_lr_weighted_gradient_dots():
    models = [_mlp(0), _mlp(1)]
    x, y = _data(10, 19)
    xt, yt = _data(3, 20)
    lrs = [0.5, 0.1]
    tr_f = [grads.per_example_grads(m, x, y) for m in models]
    te_f = [grads.per_example_grads(m, xt, yt) for m in models]
    got = tracin.tracin_scores(tr_f, te_f, lrs=lrs, block=4)
    want = torch.zeros(10, 3)
    for m, lr in zip(models, lrs):
        a, b = _loop_grads(m, x, y, grads.cross_entropy), _loop_grads(m, xt, yt, grads.cross_entropy)
        want += lr * a @ b.T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    cos = tracin.tracin_scores(tr_f[:1], te_f[:1], cosine=True)
    assert float(cos.abs().max()) <= 1 + 1e-5



def _checkpoints(seeds_lrs):
    return [tracin.TracInCheckpoint(_mlp(s).state_dict(), lr) for s, lr in seeds_lrs]


def test_tracin_cp_equals_naive_loop_over_checkpoints():
    model = _mlp(9)  # the architecture; its own weights must not matter
    cks = _checkpoints([(0, 0.5), (1, 0.1), (2, 0.02)])
    x, y = _data(11, 30)
    xt, yt = _data(4, 31)
    got = tracin.tracin_cp(model, cks, (x, y), (xt, yt), batch_size=3)
    want = torch.zeros(11, 4)
    for ck in cks:
        m = _mlp(0)
        m.load_state_dict(ck.state)
        for i in range(11):  # one training example and one target at a time
            for t in range(4):
                gi = torch.autograd.grad(grads.cross_entropy(m(x[i : i + 1]), y[i : i + 1]).sum(), list(m.parameters()))
                gt = torch.autograd.grad(grads.cross_entropy(m(xt[t : t + 1]), yt[t : t + 1]).sum(), list(m.parameters()))
                want[i, t] += ck.lr * sum(float((a * b).sum()) for a, b in zip(gi, gt))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert torch.equal(model[0].weight, _mlp(9)[0].weight)  # the model passed in is left alone
    # Grad-Dot = one checkpoint at η = 1; Grad-Cos is bounded by 1; a projection gives JL estimates of the dots
    one = tracin.tracin_cp(model, cks[:1], (x, y), (xt, yt))
    torch.testing.assert_close(one, tracin.tracin_scores([grads.per_example_grads(_mlp(0), x, y)],
                                                         [grads.per_example_grads(_mlp(0), xt, yt)], lrs=[0.5]))
    cos = tracin.tracin_cp(model, cks, (x, y), (xt, yt), cosine=True)
    assert float(cos.abs().max()) <= 0.62 + 1e-5  # Σ η_k |cos| ≤ Σ η_k
    proj = tracin.tracin_cp(model, cks, (x, y), (xt, yt), projection=projection.ProjectionConfig(dim=4096, seed=3))
    assert float((proj - want).norm() / want.norm()) < 0.1
    with pytest.raises(ValueError, match="at least one checkpoint"):
        tracin.tracin_cp(model, [], (x, y), (xt, yt))


def test_next_token_loss_is_the_per_row_sequence_loss():
    from assay.models.train import sequence_loss

    g = _gen(32)
    logits, t = torch.randn(3, 5, 7, generator=g), torch.randint(0, 7, (3, 5), generator=g)
    t[0, :2], t[2, 4] = -100, -100
    rows = grads.next_token_loss(logits, t)
    ref = torch.stack([sequence_loss(logits[i : i + 1], t[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(rows, ref)
    assert float(grads.next_token_loss(logits[:1], torch.full((1, 5), -100))) == 0.0


def test_scorers_equal_the_recipes_they_name(logreg_problem):
    model, x, y = logreg_problem
    xt, yt = _data(5, 33, d=4)
    kw = dict(model=model, train=(x, y))
    g, gt = grads.per_example_grads(model, x, y), grads.per_example_grads(model, xt, yt)
    torch.testing.assert_close(scorers.build_scorer("grad_dot", {}, **kw)(xt, yt), g @ gt.T, atol=1e-5, rtol=1e-4)
    h = influence.loss_hessian(model, x, y)
    want = g @ influence.solve_explicit(h, gt.T, damping=0.01)
    torch.testing.assert_close(scorers.build_scorer("influence", {}, **kw)(xt, yt), want, atol=1e-5, rtol=1e-4)
    cg = scorers.build_scorer("influence", {"solver": "cg"}, **kw)(xt, yt)
    torch.testing.assert_close(cg, want, atol=1e-4, rtol=1e-3)
    lissa = scorers.build_scorer("influence", {"solver": "lissa", "damping": 0.1}, **kw)(xt, yt)  # stochastic: 0.05
    damped = g @ influence.solve_explicit(h, gt.T, damping=0.1)
    assert float((lissa - damped).norm() / damped.norm()) < 0.1
    cks = [tracin.TracInCheckpoint(model.state_dict(), 0.3)]
    torch.testing.assert_close(scorers.build_scorer("tracin", {}, checkpoints=cks, **kw)(xt, yt), 0.3 * (g @ gt.T),
                               atol=1e-5, rtol=1e-4)
    proj = projection.ProjectionConfig(dim=64, seed=5)
    one = trak.trak([model], (x, y), (xt, yt), projection=proj, lambda_reg=0.0)
    got = scorers.build_scorer("trak", {"proj_dim": 64, "ensemble": 1, "lambda_rel": 0.0}, seed=5, **kw)(xt, yt)
    torch.testing.assert_close(got, one)
    r1, r2 = (scorers.build_scorer("random", {}, seed=4, **kw)(xt, yt) for _ in range(2))
    assert r1.shape == (80, 5) and torch.equal(r1, r2)  # seeded


def test_scorer_errors_say_what_to_do(logreg_problem):
    model, x, y = logreg_problem
    kw = dict(model=model, train=(x, y))
    with pytest.raises(ConfigError, match="needs the checkpoints"):
        scorers.build_scorer("tracin", {}, **kw)
    with pytest.raises(ConfigError, match="independently trained models"):
        scorers.build_scorer("trak", {"ensemble": 3}, **kw)
    with pytest.raises(ConfigError, match="needs a classifier"):
        scorers.build_scorer("ekfac", {}, loss=grads.next_token_loss, **kw)
    with pytest.raises(ConfigError, match="valid: solver, damping, depth, max_iter"):
        scorers.method_params("influence", {"iters": 3})
    with pytest.raises(ConfigError, match="choose from"):
        scorers.method_params("if-explicit", {})
    assert scorers.method_params("ekfac", {"fisher": "empirical"}) == {"damping": None, "fisher": "empirical"}

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
