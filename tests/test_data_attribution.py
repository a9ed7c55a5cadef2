"""Training-data attribution, first part: gradients, projections, influence, TRAK, TracIn (metrics,
applications, bad input, EK-FAC and groups: tests/test_data_attribution_eval.py).

Oracles: python loops of autograd.grad, materialised projection matrices, explicit Hessians,
leave-one-out retraining, traker (NoOpProjector), closed-form metric check values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from data_attribution_data import gen as _gen
from data_attribution_data import loop_grads as _loop_grads
from data_attribution_data import random_data as _data
from data_attribution_data import tiny_mlp as _mlp
from torch import nn

from assay.config import ConfigError
from assay.data_attribution import (
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
from assay.evaluate.lds import lds

pytestmark = pytest.mark.usefixtures("one_thread")


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
