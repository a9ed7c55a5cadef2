"""Probes against closed forms, scikit-learn and planted directions; pooling against spec values."""

import math

import pytest
import torch

from assay.hooks import SiteError, run_to
from assay.lenses.pooling import (
    SequenceProbeConfig,
    fit_sequence_probe,
    last_index,
    pool_last,
    pool_max,
    pool_mean,
    pool_rolling_max,
    pool_softmax,
)
from assay.lenses.probe_eval import accuracy_ci, cross_validate, stratified_folds, tpr_at_fpr
from assay.lenses.probes import diff_of_means, lda, logistic, logistic_path, sparse_probe
from assay.lenses.sweep import collect_features, probe_sweep
from assay.stats import auroc, delong_interval

pytestmark = pytest.mark.usefixtures("one_thread")


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _exact_moments(n, mu_pos, mu_neg, cov):
    """Two classes with exactly the given means and pooled (ML) within-class covariance."""
    z = torch.randn(2 * n, len(mu_pos), generator=_g(), dtype=torch.float64)
    z[:n] -= z[:n].mean(0)
    z[n:] -= z[n:].mean(0)
    c = z.T @ z / (2 * n)
    a = torch.linalg.cholesky(cov) @ torch.linalg.inv(torch.linalg.cholesky(c))
    x = z @ a.T
    x[:n] += mu_pos
    x[n:] += mu_neg
    y = torch.cat([torch.ones(n), torch.zeros(n)]).long()
    return x, y


def test_closed_forms_spec_check():
    cov = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    x, y = _exact_moments(50, torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0]), cov)
    torch.testing.assert_close(diff_of_means(x, y).w, torch.tensor([2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(lda(x, y, shrinkage=0.0).w, torch.tensor([8 / 3, -4 / 3], dtype=torch.float64))
    assert float(diff_of_means(x, y).b) == pytest.approx(0.0, abs=1e-12)


def _data(n=200, d=8, seed=0):
    g = _g(seed)
    u = torch.randn(d, generator=g)
    u /= u.norm()
    y = (torch.rand(n, generator=g) < 0.5).long()
    x = torch.randn(n, d, generator=g) * torch.linspace(0.5, 3, d) + 2.0 + (2 * y[:, None] - 1) * u * 1.5
    return x.double(), y, u


@pytest.mark.parametrize(("C", "intercept"), [(1e-3, False), (1.0, True), (0.05, True)])
def test_logistic_C_is_sklearns_C_on_the_features_as_given(C, intercept):
    from sklearn.linear_model import LogisticRegression

    x, y, _ = _data()  # features of scales 0.5..3 around 2: standardising would change what C means
    ref = LogisticRegression(C=C, fit_intercept=intercept, max_iter=5000, tol=1e-10).fit(x.numpy(), y.numpy())
    probe = logistic(x, y, C=C, fit_intercept=intercept)
    torch.testing.assert_close(probe.w, torch.from_numpy(ref.coef_[0]), atol=1e-4, rtol=1e-4)
    p_ref = torch.from_numpy(ref.predict_proba(x.numpy())[:, 1])
    torch.testing.assert_close(probe.predict_proba(x), p_ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("C", "intercept"), [(1e-3, False), (1.0, True), (0.05, True)])
def test_standardised_logistic_matches_sklearn_pipeline(C, intercept):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, _ = _data()
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=C, fit_intercept=intercept, max_iter=5000,
                                                             tol=1e-10)).fit(x.numpy(), y.numpy())
    probe = logistic(x, y, C=C, fit_intercept=intercept, standardise=True)
    p_ref = torch.from_numpy(ref.predict_proba(x.numpy())[:, 1])
    torch.testing.assert_close(probe.predict_proba(x), p_ref, atol=1e-4, rtol=0)


def test_logistic_path_warm_start_equals_cold_fits():
    x, y, _ = _data(seed=1)
    for standardise in (False, True):
        path = logistic_path(x, y, Cs=(1.0, 1e-2, 1e-1), standardise=standardise)
        assert path.Cs == (1e-2, 1e-1, 1.0)
        for C, p in zip(path.Cs, path.probes):
            want = logistic(x, y, C=C, standardise=standardise).predict_proba(x)
            torch.testing.assert_close(p.predict_proba(x), want, atol=1e-5, rtol=0)
        # weaker regularisation → larger weights (in the coordinates the penalty applies to)
        scale = x.std(0, unbiased=False) if standardise else torch.ones(x.shape[1], dtype=x.dtype)
        norms = [float((p.w * scale).norm()) for p in path.probes]
        assert norms == sorted(norms)


def test_lda_matches_sklearn():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x, y, _ = _data(seed=2)
    ref = LinearDiscriminantAnalysis(solver="lsqr").fit(x.numpy(), y.numpy())
    w = torch.from_numpy(ref.coef_[0])
    probe = lda(x, y, shrinkage=0.0)
    torch.testing.assert_close(probe.w, w, atol=1e-8, rtol=1e-6)
    prior = math.log(float(y.float().mean()) / (1 - float(y.float().mean())))
    assert float(probe.b) + prior == pytest.approx(float(ref.intercept_[0]), abs=1e-6)


@pytest.mark.parametrize("fit", [diff_of_means, lda, lambda x, y: logistic(x, y, C=1.0)])
def test_planted_direction_recovered(fit):
    """Isotropic noise + (2y−1)·u: every probe's direction is the planted u (cosine)."""
    g = _g(3)
    d = 16
    u = torch.randn(d, generator=g)
    u /= u.norm()
    y = (torch.rand(2000, generator=g) < 0.5).long()
    x = torch.randn(2000, d, generator=g) + (2 * y[:, None] - 1) * u
    cos = float(fit(x, y).direction @ u)
    assert cos > 0.97


def test_planted_direction_superposition_world():
    """A feature of the toy-superposition world: the LDA direction for "feature i active" matches the
    planted atom of feature i."""
    from assay.worlds.superposition import SuperpositionConfig, SuperpositionWorld

    world = SuperpositionWorld(SuperpositionConfig(n_features=24, d_model=16, p_max=0.2, p_min=0.05, seed=0))
    batch = world.sample(4000, generator=_g(4))
    i = 0
    y = batch.labels["active"][:, i].long()
    probe = diff_of_means(batch.inputs, y)
    assert float(probe.direction @ world.directions[i]) > 0.9


def test_accuracy_wilson_and_tpr_at_fpr():
    from scipy.stats import binomtest

    acc = accuracy_ci(torch.tensor([1] * 8 + [0] * 2), torch.ones(10))
    ref = binomtest(8, 10).proportion_ci(confidence_level=0.95, method="wilson")
    assert acc.value == 0.8 and acc.low == pytest.approx(ref.low, abs=1e-12) and acc.high == pytest.approx(ref.high, abs=1e-12)
    assert tpr_at_fpr(torch.arange(10.0), torch.tensor([0] * 5 + [1] * 5), fpr=0.0) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        tpr_at_fpr(torch.randn(4), torch.zeros(4))


def test_cross_validation_folds_and_scores():
    x, y, _ = _data(n=100, seed=6)
    folds = stratified_folds(y, 5, seed=0)
    assert torch.equal(torch.sort(torch.cat(folds)).values, torch.arange(100))
    for f in folds:
        frac = float(y[f].float().mean())
        assert abs(frac - float(y.float().mean())) < 0.1
    res = cross_validate(diff_of_means, x, y, k=5)
    assert res.auroc.low < res.auroc.value < res.auroc.high
    assert res.auroc == delong_interval(res.scores, y)
    assert res.auroc.value > 0.8
    # out-of-fold: each score comes from a probe that never saw that row
    f0 = folds[0]
    train = torch.ones(100, dtype=torch.bool)
    train[f0] = False
    torch.testing.assert_close(res.scores[f0], diff_of_means(x[train], y[train]).score(x[f0]).double())


def test_pooling_spec_values_and_padding():
    s = torch.tensor([[1.0, 2.0, 3.0]])
    assert float(pool_mean(s)) == pytest.approx(2.0)
    assert float(pool_max(s)) == 3.0
    assert float(pool_softmax(s, temperature=1.0)) == pytest.approx(2.575210, abs=1e-6)
    assert float(pool_softmax(s, temperature=5.0)) == pytest.approx(2.132452, abs=1e-6)
    assert float(pool_rolling_max(s, window=2)) == pytest.approx(2.5)
    # right and left padding give the same pooled values as the unpadded sequence
    right = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    rmask = torch.tensor([[1, 1, 1, 0]])
    left = torch.tensor([[9.0, 1.0, 2.0, 3.0]])
    lmask = torch.tensor([[0, 1, 1, 1]])
    for x, m in ((right, rmask), (left, lmask)):
        assert float(pool_last(x, m)) == 3.0
        assert float(pool_mean(x, m)) == pytest.approx(2.0)
        assert float(pool_max(x, m)) == 3.0
        assert float(pool_softmax(x, m, temperature=1.0)) == pytest.approx(2.575210, abs=1e-6)
        assert float(pool_rolling_max(x, m, window=2)) == pytest.approx(2.5)
    assert last_index(torch.tensor([[1, 1, 0], [0, 1, 1]])).tolist() == [1, 2]


def test_rolling_max_against_loop():
    g = _g(7)
    s = torch.randn(5, 12, generator=g)
    lengths = [12, 7, 3, 1, 10]
    mask = torch.zeros(5, 12, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    got = pool_rolling_max(s, mask, window=4)
    for i, n in enumerate(lengths):
        w = min(4, n)
        ref = max(float(s[i, j:j + w].mean()) for j in range(n - w + 1))
        assert float(got[i]) == pytest.approx(ref, abs=1e-6)


def _sparse_signal_world(n=240, T=12, d=8, seed=8):
    """Positives carry the planted direction u at one random token; negatives never."""
    g = _g(seed)
    u = torch.zeros(d)
    u[0] = 1.0
    y = (torch.rand(n, generator=g) < 0.5).long()
    h = torch.randn(n, T, d, generator=g) * 0.5
    where = torch.randint(0, T, (n,), generator=g)
    h[torch.arange(n), where] += 3.0 * u * y[:, None]
    mask = torch.ones(n, T, dtype=torch.bool)
    return h, mask, y, u


@pytest.mark.parametrize(("kind", "agg"), [("linear_then_agg", "max"), ("linear_then_agg", "softmax"),
                                           ("attention", "mean")])
def test_sequence_probe_finds_sparse_signal(kind, agg):
    h, mask, y, u = _sparse_signal_world()
    cfg = SequenceProbeConfig(kind=kind, aggregation=agg, temperature=1.0, epochs=20, lr=2e-2, seed=0)
    probe = fit_sequence_probe(h[:160], mask[:160], y[:160], cfg)
    with torch.no_grad():
        s = probe(h[160:], mask[160:])
    assert auroc(s, y[160:]) > 0.9
    w = probe.w.detach()
    if probe.bn is not None:
        w = w / torch.sqrt(probe.bn.running_var + probe.bn.eps)
    # the probe reads the planted direction (the attention probe's value vector less sharply: its
    # context vector averages noise from the other tokens; cos ≈ 0.68 at this size)
    assert int(w.abs().argmax()) == 0
    assert abs(float(w @ u) / float(w.norm())) > (0.6 if kind == "attention" else 0.8)


@pytest.mark.parametrize(("kind", "agg"), [("mean_then_linear", "mean"), ("attention", "mean")]
                         + [("linear_then_agg", a) for a in ("mean", "max", "last", "rolling_max", "softmax")])
def test_every_sequence_probe_ignores_padding_and_batches(kind, agg):
    """Contract for every pooling: left or right padding changes no score, a batch scores as its rows
    one by one, and a short training run separates a planted last-token signal (above chance)."""
    g = _g(11)
    cfg = SequenceProbeConfig(kind=kind, aggregation=agg, window=3, temperature=2.0, epochs=8, lr=3e-2, seed=1)
    n, T, d = 64, 6, 8
    y = (torch.arange(n) % 2).long()
    h = 0.5 * torch.randn(n, T, d, generator=g)
    h[:, -1, 0] += 2.0 * (2 * y - 1)  # the label sits in the last token's first coordinate
    probe = fit_sequence_probe(h, None, y, cfg)
    with torch.no_grad():
        s = probe(h)
        assert auroc(s, y) > 0.75
        x = h[:3]
        pad = torch.randn(3, 2, d, generator=g) * 100.0
        ones, zeros = torch.ones(3, T, dtype=torch.bool), torch.zeros(3, 2, dtype=torch.bool)
        left = probe(torch.cat([pad, x], 1), torch.cat([zeros, ones], 1))
        right = probe(torch.cat([x, pad], 1), torch.cat([ones, zeros], 1))
        torch.testing.assert_close(left, s[:3], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(right, s[:3], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.cat([probe(x[i:i + 1]) for i in range(3)]), s[:3], atol=1e-6, rtol=0)


def test_collect_features_one_pass_equals_per_site():
    from assay.models.transformer import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(vocab_size=20, n_layers=3, d_model=16, n_heads=2, context=8),
                        generator=_g(0)).eval()
    ids = torch.randint(0, 20, (6, 8), generator=_g(1))
    sites = ["blocks.0", "blocks.2", "blocks.1"]
    calls = {"model": 0, "blocks.2": 0, "unembed": 0}
    hooks = [model.register_forward_pre_hook(lambda *_: calls.__setitem__("model", calls["model"] + 1)),
             model.blocks[2].register_forward_pre_hook(lambda *_: calls.__setitem__("blocks.2", calls["blocks.2"] + 1)),
             model.unembed.register_forward_pre_hook(lambda *_: calls.__setitem__("unembed", calls["unembed"] + 1))]
    try:
        feats = collect_features(model, sites, [(ids[:3], None), (ids[3:], None)], pooling="mean", skip_first=True)
        assert calls == {"model": 2, "blocks.2": 2, "unembed": 0}  # one pass per batch for all sites, stopped early
        collect_features(model, ["blocks.1", "blocks.0"], [(ids, None)])
        assert calls == {"model": 3, "blocks.2": 2, "unembed": 0}  # nothing after the deepest site runs
    finally:
        for h in hooks:
            h.remove()
    for s in sites:
        torch.testing.assert_close(feats[s], run_to(model, s, ids)[:, 1:].mean(1))
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    res = probe_sweep(feats, y, fit=diff_of_means, k=2)
    assert res.sites == tuple(sites) and len(res.aurocs()) == 3 and res.best() in sites


def test_bad_input():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="single class"):
        logistic(x, torch.zeros(10))
    with pytest.raises(ValueError, match="single class"):
        diff_of_means(x, torch.ones(10))
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        lda(bad, torch.arange(10) % 2)
    with pytest.raises(ValueError, match="binary"):
        diff_of_means(x, torch.arange(10))
    with pytest.raises(ValueError, match="width 3"):
        diff_of_means(x, torch.arange(10) % 2).score(torch.randn(2, 4))
    model = torch.nn.Sequential(torch.nn.Identity())
    with pytest.raises(SiteError, match="no submodule"):
        collect_features(model, ["layers.9"], [(torch.randn(2, 3, 4), None)])


def test_sparse_probe_on_sae_latents():
    """Probe on the codes of an SAE whose atom 5 is the planted concept direction: the 1-sparse probe
    selects latent 5 and separates the classes."""
    from assay.dictionaries.registry import build_sae

    sae = build_sae("topk", d_in=16, d_sae=32, k=4)
    g = _g(9)
    y = (torch.rand(300, generator=g) < 0.5).long()
    h = 0.3 * torch.randn(300, 16, generator=g) + 3.0 * y[:, None] * sae.W_dec[5].detach()
    with torch.no_grad():
        z = sae.encode(h)
    sp = sparse_probe(z, y, 1)
    assert sp.latents.tolist() == [5]
    assert auroc(sp.score(z), y) > 0.95
    dense = logistic(z, y, C=1.0)
    assert auroc(dense.score(z), y) > 0.95
    cv = cross_validate(lambda zz, yy: sparse_probe(zz, yy, 1), z, y, k=3)  # cross-validated on SAE latents
    assert cv.auroc.low > 0.9 and cv.accuracy.value > 0.85
    with pytest.raises(ValueError, match="k must be"):
        sparse_probe(z, y, 0)
