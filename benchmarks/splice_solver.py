"""SpLiCE solver throughput: assay's batched working-set solver vs per-query scikit-learn at equal objective.

Bhalla, Oesterling, Srinivas, Calmon & Lakkaraju 2024, "Interpreting CLIP with Sparse Linear Concept
Embeddings (SpLiCE)": the repository's default CPU solver fits ``Lasso(alpha=λ/(2d), positive=True,
fit_intercept=False, max_iter=10000, tol=1e-6)`` once per query. Here both solve the same problems — a
centred dictionary of c concepts and centred queries from the two-modality world
(:mod:`assay.worlds.two_modality`, d = 384 like MiniLM) — and the benchmark prints the wall-clock ratio and
the objectives P(w) = ‖Cᵀw − z‖² + λ‖w‖₁ of both (they must agree to 1e-6 relative).

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/splice_solver.py
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concepts", type=int, default=10_000)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--k", type=int, default=8, help="planted concepts per query")
    p.add_argument("--lam", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of the batched solver (median)")
    p.add_argument("--admm", action="store_true", help="also time the plain Woodbury ADMM (slow on CPU)")
    a = p.parse_args()

    import numpy as np
    from sklearn.linear_model import Lasso

    from assay.concepts.dictionary import from_embeddings, modality_mean
    from assay.concepts.solvers import lasso_objective, nonneg_lasso_admm, nonneg_lasso_batched
    from assay.worlds.base import make_generator
    from assay.worlds.two_modality import TwoModalityConfig, TwoModalityWorld

    torch.set_num_threads(1)
    world = TwoModalityWorld(TwoModalityConfig(d=a.d, n_concepts=a.concepts, k=a.k, seed=0))
    g = make_generator(1)
    ref = world.sample(1024, generator=g).inputs
    dic = from_embeddings(world.names, world.name_embeddings, query_mean=modality_mean(ref))
    z = dic.centre_queries(world.sample(a.queries, generator=g).inputs)
    C = dic.rows
    print(f"c = {a.concepts}, d = {a.d}, {a.queries} queries, λ = {a.lam}, threads = {torch.get_num_threads()}")

    nonneg_lasso_batched(C, z[:4], a.lam)  # warm-up
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        res = nonneg_lasso_batched(C, z, a.lam)
        times.append(time.perf_counter() - t0)
    t_batched = float(np.median(times))

    X = C.T.double().numpy()
    t0 = time.perf_counter()
    ref_w = []
    for zi in z.double().numpy():
        m = Lasso(alpha=a.lam / (2 * a.d), positive=True, fit_intercept=False, max_iter=10000, tol=1e-6)
        ref_w.append(m.fit(X, zi).coef_.copy())
    t_sklearn = time.perf_counter() - t0
    w_sk = torch.from_numpy(np.stack(ref_w))

    P_b = lasso_objective(C, z, res.w, a.lam)
    P_s = lasso_objective(C, z, w_sk, a.lam)
    rel = (P_b - P_s) / P_s
    print(f"batched (working-set ADMM): {t_batched:.3f} s  ({1e3 * t_batched / a.queries:.2f} ms/query, "
          f"{res.iterations} rounds, median of {a.repeats})")
    print(f"sklearn Lasso per query:    {t_sklearn:.3f} s  ({1e3 * t_sklearn / a.queries:.2f} ms/query)")
    print(f"objective, batched vs sklearn: relative difference max {float(rel.max()):.2e}, "
          f"min {float(rel.min()):.2e} (negative: batched lower)")
    print(f"L0 batched {float((res.w > 0).sum(1).float().mean()):.2f}, sklearn {float((w_sk > 0).sum(1).float().mean()):.2f}")
    print(f"equal objective to 1e-6: {bool((rel.abs() <= 1e-6).all())}")
    print(f"RATIO sklearn / batched = {t_sklearn / t_batched:.1f}x")
    if a.admm:
        t0 = time.perf_counter()
        adm = nonneg_lasso_admm(C, z, a.lam, tol=1e-6, max_iter=2000)
        t_admm = time.perf_counter() - t0
        rel_a = (lasso_objective(C, z, adm.w, a.lam) - P_s) / P_s
        print(f"plain Woodbury ADMM (ρ = 5, tol 1e-6): {t_admm:.2f} s, {adm.iterations} iterations, relative "
              f"objective vs sklearn max {float(rel_a.max()):.2e}; sklearn / ADMM = {t_sklearn / t_admm:.2f}x")


if __name__ == "__main__":
    main()
