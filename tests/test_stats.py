"""The statistics floor against scipy, scikit-learn and statsmodels, with ties, constant input and tiny n."""

import math

import numpy as np
import pytest
import torch

from assay.stats import (
    Interval,
    LinearModel,
    auroc,
    auroc_matrix,
    average_ranks,
    delong_interval,
    logistic_regression,
    pearson,
    softmax_regression,
    spearman,
    t_interval,
    wilson_interval,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _g(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------- ranks


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_average_ranks_match_scipy_rankdata(dim):
    from scipy.stats import rankdata

    x = torch.randint(0, 4, (5, 6, 7), generator=_g(0)).double()  # many ties
    for chunk in (1, 3, 512):
        got = average_ranks(x, dim, chunk=chunk)
        assert got.dtype == torch.float64 and got.shape == x.shape
        assert torch.equal(got, torch.from_numpy(rankdata(x.numpy(), axis=dim)))


def test_average_ranks_nan_ints_bools_and_tiny_input():
    from scipy.stats import rankdata

    x = torch.tensor([[3.0, float("nan"), 1.0, 3.0, float("inf"), 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    want = rankdata(x.numpy(), axis=1, nan_policy="omit")
    np.testing.assert_array_equal(average_ranks(x).numpy(), want)  # NaN gets NaN, the rest ranks among itself
    assert average_ranks(torch.tensor([2, 7, 2, -1])).tolist() == [2.5, 4.0, 2.5, 1.0]
    assert average_ranks(torch.tensor([True, False, True])).tolist() == [2.5, 1.0, 2.5]
    assert average_ranks(torch.tensor([4.0])).tolist() == [1.0]
    assert average_ranks(torch.zeros(3, 0)).shape == (3, 0)
    with pytest.raises(ValueError, match="0-d"):
        average_ranks(torch.tensor(1.0))


def test_spearman_matches_scipy_rowwise_and_columnwise():
    from scipy.stats import spearmanr

    a = torch.randint(0, 5, (30, 4), generator=_g(1)).double()
    b = a + torch.randint(0, 3, (30, 4), generator=_g(2)).double()
    cols = spearman(a, b, dim=0)
    rows = spearman(a, b)  # dim=-1
    assert cols.shape == (4,) and rows.shape == (30,)
    for j in range(4):
        assert float(cols[j]) == pytest.approx(spearmanr(a[:, j], b[:, j]).statistic, abs=1e-12)
    for i in range(30):
        if a[i].unique().numel() > 1 and b[i].unique().numel() > 1:
            assert float(rows[i]) == pytest.approx(spearmanr(a[i], b[i]).statistic, abs=1e-12)
    assert float(spearman(torch.tensor([1.0, 2.0]), torch.tensor([5.0, 3.0]))) == pytest.approx(-1.0)


def test_spearman_constant_or_nan_input_is_nan():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]])
    y = torch.tensor([[3.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    r = spearman(x, y)
    assert r[0] == pytest.approx(-0.5) and math.isnan(r[1])
    assert math.isnan(float(spearman(torch.ones(5), torch.arange(5.0))))
    assert math.isnan(float(spearman(torch.tensor([1.0]), torch.tensor([2.0]))))
    assert math.isnan(float(spearman(torch.tensor([1.0, float("nan"), 3.0]), torch.arange(3.0))))
    with pytest.raises(ValueError, match="one shape"):
        spearman(torch.ones(3), torch.ones(4))


# ----------------------------------------------------------------------------------------------- AUROC


def test_auroc_matches_sklearn_and_mann_whitney_with_ties():
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    g = _g(3)
    z = torch.randint(0, 4, (300, 5), generator=g).float()  # many ties
    y = torch.rand(300, 3, generator=g) < 0.3
    auc = auroc_matrix(z, y)
    assert auc.shape == (5, 3) and auc.dtype == torch.float64
    for i in range(5):
        for c in range(3):
            want = roc_auc_score(y[:, c].numpy(), z[:, i].numpy())
            assert auc[i, c].item() == pytest.approx(want, abs=1e-12)
            assert auroc(z[:, i], y[:, c].long()) == pytest.approx(want, abs=1e-12)
    pos, neg = z[y[:, 0], 0].numpy(), z[~y[:, 0], 0].numpy()
    u = mannwhitneyu(pos, neg).statistic
    assert auc[0, 0].item() == pytest.approx(u / (len(pos) * len(neg)), abs=1e-12)


def test_auroc_tiny_and_single_class_cases():
    assert auroc(torch.tensor([0.9, 0.1, 0.8, 0.3, 0.2]), torch.tensor([1, 0, 0, 1, 0])) == pytest.approx(5 / 6)
    assert auroc(torch.tensor([2.0, 1.0]), torch.tensor([True, False])) == 1.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([True, False])) == 0.5  # a tie counts one half
    # one class: NaN (the library's single convention), for the scalar and per column of the matrix
    assert math.isnan(auroc(torch.randn(4), torch.zeros(4)))
    assert math.isnan(auroc(torch.randn(1), torch.ones(1)))
    m = auroc_matrix(torch.randn(6, 2), torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0], [1, 0], [0, 0]]))
    assert not m[:, 0].isnan().any() and m[:, 1].isnan().all()
    with pytest.raises(ValueError, match="NaN"):
        auroc(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="0/1"):
        auroc(torch.randn(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        auroc(torch.randn(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[N, n\]"):
        auroc_matrix(torch.randn(3), torch.ones(3, 1))


def test_delong_against_naive_structural_components():
    g = _g(5)
    y = (torch.rand(120, generator=g) < 0.4).long()
    s = torch.round((torch.randn(120, generator=g) + y) * 2) / 2  # ties
    pos, neg = s[y == 1].double(), s[y == 0].double()
    psi = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    v10, v01 = psi.mean(1), psi.mean(0)
    se = math.sqrt(float(v10.var() / len(pos) + v01.var() / len(neg)))
    ci = delong_interval(s, y)
    assert isinstance(ci, Interval)
    assert ci.value == pytest.approx(float(psi.mean()), abs=1e-12) == pytest.approx(auroc(s, y), abs=1e-12)
    assert ci.high - ci.value == pytest.approx(1.959964 * se, rel=1e-5)
    assert ci.value - ci.low == pytest.approx(1.959964 * se, rel=1e-5)
    ci90 = delong_interval(s, y, level=0.9)
    assert ci90.high - ci90.value == pytest.approx(1.644854 * se, rel=1e-5)


def test_delong_hand_computed_and_edge_cases():
    # positives 0.9, 0.8; negatives 0.7, 0.85 → V10 = (1, ½), V01 = (1, ½), AUC = ¾,
    # Var = Var(V10)/2 + Var(V01)/2 = 0.125/2 + 0.125/2 = 0.125 → half-width 1.959964·√0.125
    ci = delong_interval(torch.tensor([0.9, 0.8, 0.7, 0.85]), torch.tensor([1, 1, 0, 0]))
    assert ci.value == pytest.approx(0.75)
    assert ci.low == pytest.approx(0.75 - 1.959964 * math.sqrt(0.125), abs=1e-6)
    assert ci.high == 1.0  # clipped
    # one positive: only the negatives' component varies; V01 = (1, 0, 1) → Var = (1/3)/3
    ci = delong_interval(torch.tensor([0.5, 0.1, 0.9, 0.2]), torch.tensor([1, 0, 0, 0]))
    assert ci.value == pytest.approx(2 / 3)
    assert ci.value - ci.low == pytest.approx(1.959964 * math.sqrt(1 / 9), abs=1e-6) and ci.high == 1.0
    assert all(math.isnan(v) for v in delong_interval(torch.randn(5), torch.ones(5)))
    with pytest.raises(ValueError, match="level"):
        delong_interval(torch.randn(4), torch.tensor([0, 1, 0, 1]), level=1.0)


# ------------------------------------------------------------------------------------------- intervals


def test_wilson_matches_scipy_and_statsmodels():
    from scipy.stats import binomtest

    cases = [(0, 10), (3, 10), (31, 32), (64, 64), (1, 1), (0, 1), (500, 1000)]
    for level in (0.95, 0.8):
        for k, n in cases:
            ref = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
            lo, hi = wilson_interval(k, n, level=level)
            assert float(lo) == pytest.approx(ref.low, abs=1e-12) and float(hi) == pytest.approx(ref.high, abs=1e-12)
    lo, hi = wilson_interval(torch.tensor([0.0, 3.0, 10.0]), torch.tensor([10.0, 10.0, 10.0]))  # batched
    assert lo.shape == (3,) and hi.shape == (3,)
    sm = pytest.importorskip("statsmodels.stats.proportion")
    want_lo, want_hi = sm.proportion_confint(np.array([0, 3, 10]), 10, alpha=0.05, method="wilson")
    np.testing.assert_allclose(lo.numpy(), want_lo, atol=1e-12)
    np.testing.assert_allclose(hi.numpy(), want_hi, atol=1e-12)


def test_wilson_no_trials_and_bad_counts():
    lo, hi = wilson_interval(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 4.0]))
    assert (float(lo[0]), float(hi[0])) == (0.0, 1.0)  # n = 0: no information, the limit of the interval
    # …which is the limit as n → 0 (k = 0): the interval tends to [0, 1]
    assert float(wilson_interval(0, 1e-9)[1]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(-1, 4)
    with pytest.raises(ValueError, match="level"):
        wilson_interval(1, 4, level=0.0)


def test_t_interval_matches_scipy():
    from scipy import stats

    v = [0.8, 0.9, 0.85]
    m, lo, hi, n = t_interval(v)
    ref = stats.t.interval(0.95, 2, loc=sum(v) / 3, scale=stats.sem(v))
    assert (lo, hi) == pytest.approx(ref, abs=1e-12) and n == 3 and m == pytest.approx(0.85)
    x = torch.randn(17, generator=_g(6), dtype=torch.float64)
    r = t_interval(x, level=0.9)  # a tensor and another level
    ref = stats.t.interval(0.9, 16, loc=float(x.mean()), scale=stats.sem(x.numpy()))
    assert (r.low, r.high) == pytest.approx(ref, abs=1e-12) and r.n == 17 and r.mean == pytest.approx(float(x.mean()))


def test_t_interval_skips_non_finite_and_tiny_n():
    assert t_interval([1.0, float("nan"), None, float("inf")]) == (1.0, 1.0, 1.0, 1)
    assert t_interval([2.0, 2.0]) == (2.0, 2.0, 2.0, 2)
    empty = t_interval([])
    assert empty.n == 0 and all(math.isnan(v) for v in empty[:3])
    with pytest.raises(ValueError, match="level"):
        t_interval([1.0, 2.0], level=95)


# ------------------------------------------------------------------------------- logistic regression


def _binary_data(n=300, d=4, seed=7):
    g = _g(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, d, dtype=torch.float64) + 0.7
    w = torch.linspace(-1.0, 1.5, d, dtype=torch.float64)
    y = (x @ w - 0.4 + torch.randn(n, generator=g, dtype=torch.float64)) > 0
    return x, y


def _multiclass_data(n=400, d=3, k=4, seed=8):
    g = _g(seed)
    y = torch.randint(0, k, (n,), generator=g)
    centres = torch.randn(k, d, generator=g, dtype=torch.float64) * 1.5
    x = centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5
    return x, y


def _sk(**kw):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(tol=1e-12, max_iter=100_000, **kw)


@pytest.mark.parametrize(("C", "intercept"), [(1.0, True), (0.01, True), (10.0, False), (math.inf, True)])
def test_logistic_regression_matches_sklearn(C, intercept):
    x, y = _binary_data()
    ref = (_sk(C=C, fit_intercept=intercept) if math.isfinite(C) else _sk(penalty=None, fit_intercept=intercept))
    ref.fit(x.numpy(), y.numpy())
    fit = logistic_regression(x, y, C=C, fit_intercept=intercept)
    assert fit.weight.shape == (4,) and fit.bias.shape == () and fit.weight.dtype == torch.float64
    np.testing.assert_allclose(fit.weight.numpy(), ref.coef_[0], atol=1e-4)
    assert float(fit.bias) == pytest.approx(float(ref.intercept_[0]) if intercept else 0.0, abs=1e-4)


def test_logistic_regression_penalised_intercept_and_warm_start():
    x, y = _binary_data(seed=9)
    ones = np.ones((x.shape[0], 1))
    # a penalised intercept is the weight of a constant feature in sklearn without an intercept
    ref = _sk(C=0.5, fit_intercept=False).fit(np.hstack([x.numpy(), ones]), y.numpy())
    fit = logistic_regression(x, y.long(), C=0.5, penalize_intercept=True)
    np.testing.assert_allclose(torch.cat([fit.weight, fit.bias[None]]).numpy(), ref.coef_[0], atol=1e-4)
    cold = logistic_regression(x, y, C=3.0)
    warm = logistic_regression(x, y, C=3.0, init=logistic_regression(x, y, C=0.1))
    torch.testing.assert_close(warm.weight, cold.weight, atol=1e-6, rtol=0)
    # float32 input is fitted in float64
    f32 = logistic_regression(x.float(), y, C=1.0)
    torch.testing.assert_close(f32.weight, logistic_regression(x.float().double(), y).weight)


def test_logistic_regression_input_errors():
    x, y = _binary_data(n=20)
    with pytest.raises(ValueError, match="both classes"):
        logistic_regression(x, torch.zeros(20))
    with pytest.raises(ValueError, match="softmax_regression"):
        logistic_regression(x, torch.arange(20) % 3)
    with pytest.raises(ValueError, match="positive"):
        logistic_regression(x, y, C=0.0)
    with pytest.raises(ValueError, match=r"\[N\]"):
        logistic_regression(x, y[:10])
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        logistic_regression(bad, y)
    with pytest.raises(TypeError, match="LinearModel"):
        logistic_regression(x, y, init=torch.zeros(5))


@pytest.mark.parametrize(("C", "intercept"), [(1.0, True), (0.05, True), (2.0, False)])
def test_softmax_regression_matches_sklearn_multinomial(C, intercept):
    x, y = _multiclass_data()
    ref = _sk(C=C, fit_intercept=intercept).fit(x.numpy(), y.numpy())  # lbfgs: multinomial for > 2 classes
    fit = softmax_regression(x, y, C=C, fit_intercept=intercept)
    assert fit.weight.shape == (4, 3) and fit.bias.shape == (4,)
    np.testing.assert_allclose(fit.weight.numpy(), ref.coef_, atol=1e-4)
    # an unpenalised intercept is determined up to a constant shared by all classes
    b = fit.bias - fit.bias.mean()
    np.testing.assert_allclose(b.numpy(), ref.intercept_ - ref.intercept_.mean(), atol=1e-4)
    proba = torch.softmax(x @ fit.weight.T + fit.bias, 1)
    np.testing.assert_allclose(proba.numpy(), ref.predict_proba(x.numpy()), atol=1e-5)


def test_softmax_regression_penalised_intercept_classes_and_errors():
    x, y = _multiclass_data(seed=10)
    ones = np.ones((x.shape[0], 1))
    ref = _sk(C=0.2, fit_intercept=False).fit(np.hstack([x.numpy(), ones]), y.numpy())
    fit = softmax_regression(x, y, C=0.2, penalize_intercept=True)
    np.testing.assert_allclose(torch.cat([fit.weight, fit.bias[:, None]], 1).numpy(), ref.coef_, atol=1e-4)
    # a declared class that never occurs: stationarity gives its row in closed form, [w_k, b_k] = −C Σ_i p_ik [x_i, 1]
    wide = softmax_regression(x, y, 6, C=0.2, penalize_intercept=True)
    p = torch.softmax(x @ wide.weight.T + wide.bias, 1)
    for k in (4, 5):
        torch.testing.assert_close(wide.weight[k], -0.2 * (p[:, k, None] * x).sum(0), atol=1e-6, rtol=0)
        assert float(wide.bias[k]) == pytest.approx(-0.2 * float(p[:, k].sum()), abs=1e-6)
    warm = softmax_regression(x, y, C=0.2, penalize_intercept=True, init=LinearModel(fit.weight * 0.5, fit.bias))
    torch.testing.assert_close(warm.weight, fit.weight, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        softmax_regression(x, y, 3)
    with pytest.raises(ValueError, match="integer classes"):
        softmax_regression(x, y.double())


def test_pearson_matches_scipy_and_constant_input_is_nan():
    from scipy import stats as sps

    g = torch.Generator().manual_seed(3)
    a, b = (torch.randn(4, 30, generator=g, dtype=torch.float64) for _ in range(2))
    b[1] = 2 * a[1] + 0.1 * b[1]
    ours = pearson(a, b)
    for i in range(4):
        assert float(ours[i]) == pytest.approx(sps.pearsonr(a[i].numpy(), b[i].numpy())[0], abs=1e-12)
    assert float(pearson(a, b, dim=0)[5]) == pytest.approx(sps.pearsonr(a[:, 5].numpy(), b[:, 5].numpy())[0], abs=1e-12)
    assert torch.isnan(pearson(torch.ones(5), torch.arange(5.0)))
    with pytest.raises(ValueError, match="one shape"):
        pearson(torch.ones(3), torch.ones(4))
