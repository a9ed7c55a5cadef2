"""SpLiCE's nonnegative lasso solvers (Bhalla et al. 2024) against scikit-learn's ``Lasso(positive=True)`` with
the spec's mapping α = λ/(2d), on the spec's two checks and on a dictionary larger than the working set; the
KKT conditions; the dense and Woodbury ADMM forms agree."""

import pytest
import torch

from assay.concepts.solvers import (
    duality_gap,
    kkt_violation,
    lasso_objective,
    nonneg_lasso_admm,
    nonneg_lasso_batched,
    nonneg_lasso_cd,
    solve,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _sklearn(C, z, lam):
    from sklearn.linear_model import Lasso

    d = C.shape[1]
    out = []
    for zi in z:
        m = Lasso(alpha=lam / (2 * d), positive=True, fit_intercept=False, max_iter=10000, tol=1e-10)
        out.append(torch.from_numpy(m.fit(C.T.double().numpy(), zi.double().numpy()).coef_))
    return torch.stack(out)


def _planted(c, d, n, k=3, noise=0.05, seed=0):
    """Spec check 2: unit rows, centred, renormalised; queries normalised k-sparse nonnegative mixes + noise."""
    g = torch.Generator().manual_seed(seed)
    E = torch.nn.functional.normalize(torch.randn(c, d, generator=g, dtype=torch.float64), dim=1)
    C = torch.nn.functional.normalize(E - E.mean(0), dim=1)
    w = torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        w[i, torch.randperm(c, generator=g)[:k]] = torch.rand(k, generator=g, dtype=torch.float64)
    z = w @ C + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return C, torch.nn.functional.normalize(z, dim=1)


SOLVE = {
    "cd": lambda C, z, lam: nonneg_lasso_cd(C, z, lam, tol=1e-10),
    "admm_woodbury": lambda C, z, lam: nonneg_lasso_admm(C, z, lam, tol=1e-10, max_iter=20000),
    "admm_dense": lambda C, z, lam: nonneg_lasso_admm(C, z, lam, tol=1e-10, max_iter=20000, form="dense"),
    "batched": lambda C, z, lam: nonneg_lasso_batched(C, z, lam, tol=1e-10, working_set=8),
}


@pytest.mark.parametrize("name", SOLVE)
def test_orthonormal_dictionary_closed_form(name):
    """Spec check 1: C = I₃, z = (0.5, 0.2, −0.3), λ = 0.2 → w = max(z − λ/2, 0) = (0.4, 0.1, 0)."""
    C = torch.eye(3, dtype=torch.float64)
    z = torch.tensor([[0.5, 0.2, -0.3]], dtype=torch.float64)
    want = torch.tensor([[0.4, 0.1, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(SOLVE[name](C, z, 0.2).w, want, atol=1e-9, rtol=0)
    torch.testing.assert_close(_sklearn(C, z, 0.2), want, atol=1e-9, rtol=0)


@pytest.mark.parametrize(("name", "shape"), [(name, (50, 8, 0.05)) for name in SOLVE] + [
    (name, (400, 24, 0.1)) for name in ("admm_woodbury", "batched")])  # cd: 900 Python sweeps there (8 s)
def test_reaches_sklearn_objective_and_kkt(name, shape):
    """Spec check 2 (c = 50, d = 8, λ = 0.05) and a dictionary far larger than the batched working set."""
    c, d, lam = shape
    C, z = _planted(c, d, 6)
    ref = _sklearn(C, z, lam)
    res = SOLVE[name](C, z, lam)
    P, P_ref = lasso_objective(C, z, res.w, lam), lasso_objective(C, z, ref, lam)
    assert bool((res.w >= 0).all())
    assert ((P - P_ref) / P_ref).max() < 1e-6
    assert ((P_ref - P) / P_ref).max() < 1e-6  # sklearn is not beaten by more than its own tolerance either
    assert kkt_violation(C, z, res.w, lam).max() < 1e-4
    assert float(duality_gap(C, z, res.w, lam).max()) < 1e-6
    assert bool(((res.w > 1e-6) == (ref > 1e-6)).all())  # the same support as sklearn


def test_dense_and_woodbury_forms_give_the_same_iterates():
    C, z = _planted(50, 8, 4)
    a = nonneg_lasso_admm(C, z, 0.05, tol=1e-10, max_iter=300, form="dense")
    b = nonneg_lasso_admm(C, z, 0.05, tol=1e-10, max_iter=300, form="woodbury")
    assert a.iterations == b.iterations == 300
    torch.testing.assert_close(a.w, b.w, atol=1e-12, rtol=0)


def test_kkt_check_detects_a_wrong_solution_and_single_query_shape():
    C, z = _planted(50, 8, 1)
    res = solve(C, z[0], 0.05, solver="batched")
    assert res.w.shape == (50,)
    assert float(kkt_violation(C, z, res.w[None], 0.05)) < 1e-4
    assert float(kkt_violation(C, z, torch.zeros(1, 50, dtype=torch.float64), 0.05)) > 0.1  # w = 0 is not optimal
    with pytest.raises(ValueError, match=r"queries must be \[B, 8\]"):
        solve(C, torch.ones(2, 9, dtype=torch.float64), 0.05)
    with pytest.raises(ValueError, match="unknown solver 'fista'"):
        solve(C, z, 0.05, solver="fista")
    with pytest.raises(ValueError, match="λ must be >= 0"):
        solve(C, z, -1.0)
