"""Average-case robustness estimators vs Monte Carlo on a small CNN on the digits world.

Per-point error of each estimator against a Monte Carlo ground truth (10,000 noisy copies per
point), and its speed-up over Monte Carlo at matched error: the MC samples that reach the estimator's
mean absolute error come from the binomial formula (checked against MC re-run with 8…4096 samples),
times MC's measured cost per sample. Also: the batched MVN CDF against one SciPy call per point on the same Taylor
problems, and (unless --skip-curvature) curvature and accuracy of a standard vs a low-curvature CNN.

    .venv/bin/python benchmarks/avg_case_robustness.py [--n-points 32] [--sigma 0.1] [--skip-curvature]

Sweep mode (``--sigmas 0.005 0.01 0.02 0.05 0.1 0.2``): the same error / matched-MC / speed-up
measurement at every σ (a fresh MC ground truth per σ), one table row per estimator and σ, and the
crossover σ per estimator (the largest σ at which its speed-up at matched error, with the matched MC
samples capped at the ground truth's budget, is still ≥ 1×), and per σ the estimators meeting the goal
(mean error ≤ 0.01 at ≥ 10× that lower bound). The MVN timing and the curvature comparison are skipped. ``--model low_curvature`` measures on the
LowCurvatureCNN recipe (``fit_low_curvature`` defaults, ``--lc-train`` × ``--lc-epochs``) instead of
the zoo CNN: the smooth model where the linearisation should hold.

The CNN is the cached ``assay.models.classifier_zoo.world_classifier("digits")`` (SmallCNN (16, 32, 64)
with BatchNorm, 10k composites × 8 epochs, test accuracy ≈ 0.84; trained once, then loaded from
``ASSAY_CACHE``), or with ``--train-own`` a SmallCNN trained here (``--n-train`` × ``--epochs``).

Last line: JSON with ``speedup_vs_mc`` and ``mean_abs_error`` per estimator (per σ in sweep mode).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


MC_CURVE = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
"""Monte Carlo budgets of the error/time curve (per point)."""


def mc_matched(model, x, sigma: float, p_true: torch.Tensor, *, max_n: int = 4096):
    """MC's error/time curve against ``p_true`` and ``mc_time_at(err) -> (seconds, samples)``.

    A binomial estimate with n samples has E|p̂ − p| ≈ √(2p(1−p)/(πn)), so the samples for mean error e are
    n(e) = (mean_i √(2p_i(1−p_i)/π) / e)²; time = per-sample MC cost × n (median of the curve's largest
    budgets). The empirical curve checks the formula; matching is limited by the ground truth's own noise."""
    from assay.robustness import average_case as ac
    from assay.worlds.base import make_generator

    curve = []
    for n in (n for n in MC_CURVE if n <= max_n):
        est, t = timed(lambda n=n: ac.monte_carlo(model, x, sigma, n_samples=n, chunk=min(n, 256),
                                                  generator=make_generator(100 + n)))
        err = (est.p.double() - p_true).abs().mean().item()
        curve.append((n, err, t))
        print(f"  mc n={n:5d}: mean |err| {err:.4f}  {t:.2f}s", flush=True)
    spread = torch.sqrt(2 * p_true * (1 - p_true) / math.pi).mean().item()
    per_sample = float(np.median([t / n for n, _, t in curve[-4:]]))
    at256 = dict((n, e) for n, e, _ in curve).get(256, float("nan"))
    print(f"  predicted MC error at n=256: {spread / 16:.4f} (measured {at256:.4f}); "
          f"MC cost {per_sample * 1e3:.2f} ms per sample for all {x.shape[0]} points")

    def mc_time_at(err: float) -> tuple[float, float]:
        n = max(1.0, (spread / max(err, 1e-12)) ** 2)
        return per_sample * n, n

    return curve, mc_time_at


def compare_estimators(model, x, sigma: float, p_true: torch.Tensor, mc_time_at,
                       mc_truth: int) -> dict[str, dict[str, float]]:
    """Each estimator's mean |p̂ − p_true|, time, MC samples and time at the same error, speed-up.

    An error below the ground truth's own noise cannot be resolved, so ``speedup_lower_bound`` caps the
    matched MC samples at the truth's budget ``mc_truth`` (``speedup_vs_mc`` does not)."""
    from assay.robustness import average_case as ac
    from assay.worlds.base import make_generator

    estimators = {
        "taylor": lambda: ac.taylor(model, x, sigma, generator=make_generator(2)),
        "taylor_mvs": lambda: ac.taylor_mvs(model, x, sigma),
        "mmse": lambda: ac.mmse(model, x, sigma, n_samples=10, generator=make_generator(3)),
        "mmse_mvs": lambda: ac.mmse_mvs(model, x, sigma, n_samples=10, generator=make_generator(3)),
        "mmse_n4": lambda: ac.mmse(model, x, sigma, n_samples=4, generator=make_generator(3)),
        "mmse_n2": lambda: ac.mmse(model, x, sigma, n_samples=2, generator=make_generator(3)),
        "softmax": lambda: ac.softmax_confidence(model, x),
    }
    rows = {}
    for name, fn in estimators.items():
        fn()  # warm-up (first-call allocation), not timed
        p, t = timed(fn)
        err = (p.double() - p_true).abs().mean().item()
        t_mc, n_mc = mc_time_at(err)
        rows[name] = {"mean_abs_error": round(err, 5), "time_s": round(t, 4), "matched_mc_samples": round(n_mc, 1),
                      "matched_mc_s": round(t_mc, 4), "speedup_vs_mc": round(t_mc / t, 2),
                      "speedup_lower_bound": round(t_mc * min(1.0, mc_truth / n_mc) / t, 2)}
        print(f"{name:11s} mean |err| {err:.4f}  time {t:.3f}s  MC at same error ≈ {n_mc:.0f} samples, "
              f"{t_mc:.3f}s -> speed-up {t_mc / t:.1f}x", flush=True)
    return rows


def jacobian_cost(model, x) -> tuple[float, float]:
    """Seconds of one forward and of the margins' input Jacobian (C backward passes) on ``x``."""
    from assay.robustness import average_case as ac

    with torch.no_grad():
        model(x)
        _, t_fwd = timed(lambda: model(x))
    ac.margins(model, x)
    _, t_jac = timed(lambda: ac.margins(model, x))
    print(f"one forward of {x.shape[0]} points {t_fwd * 1e3:.1f} ms; input Jacobian (margins) {t_jac * 1e3:.1f} ms "
          f"= {t_jac / t_fwd:.1f} forwards", flush=True)
    return t_fwd, t_jac


def sigma_sweep(model, x, sigmas: list[float], mc_truth: int, header: dict) -> None:
    """The estimator comparison at every σ, a summary table and the crossover σ per estimator."""
    from assay.robustness import average_case as ac
    from assay.worlds.base import make_generator

    t_fwd, t_jac = jacobian_cost(model, x)
    per_sigma = {}
    for sigma in sigmas:
        truth, t_truth = timed(lambda s=sigma: ac.monte_carlo(model, x, s, n_samples=mc_truth, chunk=256,
                                                              generator=make_generator(1)))
        p_true = truth.p.double()
        print(f"σ = {sigma}: MC truth {mc_truth} samples/point in {t_truth:.1f}s; p mean {p_true.mean():.3f}, "
              f"min {p_true.min():.3f}, frac < 0.99: {(p_true < 0.99).float().mean():.2f}", flush=True)
        _, mc_time_at = mc_matched(model, x, sigma, p_true, max_n=min(4096, mc_truth // 4))
        rows = compare_estimators(model, x, sigma, p_true, mc_time_at, mc_truth)
        per_sigma[sigma] = {"p_mean": round(p_true.mean().item(), 4), "p_min": round(p_true.min().item(), 4),
                            "estimators": rows}
    names = list(next(iter(per_sigma.values()))["estimators"])
    print("\n| estimator | " + " | ".join(f"σ = {s}" for s in sigmas) + " |")
    print("|---|" + "---|" * len(sigmas))
    for name in names:
        cells = [per_sigma[s]["estimators"][name] for s in sigmas]
        print(f"| {name} | " + " | ".join(f"{c['mean_abs_error']:.4f}, {c['time_s']:.3f} s, "
                                          f"≈ {c['matched_mc_samples']:.0f} MC, {c['speedup_vs_mc']:.2f}× (≥ {c['speedup_lower_bound']:.2f}×)"
                                          for c in cells) + " |")
    crossover = {}
    for name in names:
        paying = [s for s in sigmas if per_sigma[s]["estimators"][name]["speedup_lower_bound"] >= 1]
        crossover[name] = max(paying) if paying else None
    print("crossover σ (largest σ whose speed-up lower bound is ≥ 1×):", crossover)
    goal = {s: [k for k, r in per_sigma[s]["estimators"].items()
                if r["mean_abs_error"] <= 0.01 and r["speedup_lower_bound"] >= 10] for s in sigmas}
    print("mean error <= 0.01 at >= 10x MC (lower bound):", goal)
    print(json.dumps({**header, "sigmas": sigmas, "mc_truth_samples": mc_truth, "forward_s": round(t_fwd, 5),
                      "jacobian_s": round(t_jac, 5), "jacobian_in_forwards": round(t_jac / t_fwd, 1),
                      "crossover_sigma": crossover,
                      "goal_met_by": {str(s): v for s, v in goal.items()}, "per_sigma": {str(s): v for s, v in per_sigma.items()}}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-own", action="store_true",
                    help="train a SmallCNN here (--n-train x --epochs) instead of the cached world_classifier('digits')")
    ap.add_argument("--model", choices=("zoo", "low_curvature"), default="zoo",
                    help="zoo: the cached digits SmallCNN (or --train-own); low_curvature: the LowCurvatureCNN "
                         "recipe trained here on --lc-train x --lc-epochs")
    ap.add_argument("--n-points", type=int, default=32)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--sigmas", type=float, nargs="+", default=None,
                    help="sweep mode: the estimator comparison at each of these σ, with the crossover σ")
    ap.add_argument("--mc-truth", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--skip-curvature", action="store_true")
    ap.add_argument("--lc-train", type=int, default=5000, help="training set of the standard vs LC comparison")
    ap.add_argument("--lc-epochs", type=int, default=4, help="epochs of the standard vs LC comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from scipy.stats import multivariate_normal

    from assay.models.classifier_zoo import world_classifier
    from assay.models.cnn import SmallCNN
    from assay.models.fit import fit_classifier
    from assay.robustness import average_case as ac
    from assay.robustness.lcnn import LowCurvatureCNN, fit_low_curvature
    from assay.robustness.mvn import mvn_cdf
    from assay.worlds.base import make_generator
    from assay.worlds.digits import DigitsConfig, SignalDistractorDigits

    g = make_generator(0)
    train = SignalDistractorDigits(DigitsConfig(split="train")).sample(args.n_train, generator=g)
    test = SignalDistractorDigits(DigitsConfig(split="test")).sample(512, generator=g)
    chans = (16, 32, 64)
    if args.model == "low_curvature":
        lc_train = SignalDistractorDigits(DigitsConfig(split="train")).sample(args.lc_train,
                                                                              generator=make_generator(6))
        torch.manual_seed(0)  # LowCurvatureCNN init
        model, t_train = timed(lambda: fit_low_curvature(LowCurvatureCNN(channels=chans), lc_train.inputs,
                                                         lc_train.targets, epochs=args.lc_epochs, batch_size=64,
                                                         seed=0))
        how = f"LowCurvatureCNN (16, 32, 64), fit_low_curvature defaults, {args.lc_train} x {args.lc_epochs} epochs"
    elif not args.train_own:
        wc, t_train = timed(lambda: world_classifier("digits"))  # SmallCNN (16, 32, 64) + BN, 10k x 8 epochs, cached
        model, how = wc.model.eval(), f"SmallCNN (16, 32, 64) + BN, assay.models.classifier_zoo (trained={wc.trained})"
    else:
        torch.manual_seed(0)  # SmallCNN init
        model, t_train = timed(lambda: fit_classifier(SmallCNN(channels=chans, batch_norm=True), train.inputs,
                                                      train.targets, epochs=args.epochs, batch_size=64, lr=3e-3,
                                                      seed=0))
        how = f"SmallCNN (16, 32, 64) + BN, {args.n_train} examples x {args.epochs} epochs"
    with torch.no_grad():
        acc = (model(test.inputs).argmax(1) == test.targets).float().mean().item()
    print(f"{how} on digits, {t_train:.0f}s: test acc {acc:.3f}", flush=True)
    x = test.inputs[: args.n_points]
    if args.sigmas:
        sigma_sweep(model, x, args.sigmas, args.mc_truth,
                    {"model": args.model, "n_points": args.n_points, "cnn_test_acc": round(acc, 3),
                     "threads": args.threads})
        return
    sigma = args.sigma

    truth, t_truth = timed(lambda: ac.monte_carlo(model, x, sigma, n_samples=args.mc_truth, chunk=256,
                                                  generator=make_generator(1)))
    p_true = truth.p.double()
    print(f"MC ground truth: {args.mc_truth} samples/point in {t_truth:.1f}s; p mean {p_true.mean():.3f}, "
          f"min {p_true.min():.3f}, frac < 0.99: {(p_true < 0.99).float().mean():.2f}")

    _, mc_time_at = mc_matched(model, x, sigma, p_true)
    t_fwd, t_jac = jacobian_cost(model, x)
    rows = compare_estimators(model, x, sigma, p_true, mc_time_at, args.mc_truth)
    mean_abs_error = {k: r["mean_abs_error"] for k, r in rows.items()}
    speedup = {k: r["speedup_vs_mc"] for k, r in rows.items()}
    matched = {k: r["matched_mc_samples"] for k, r in rows.items()}

    # batched MVN CDF vs one SciPy call per point on the Taylor problems
    m = ac.margins(model, x)
    z, U = ac._standardised(m, sigma)
    cov = (U.double() @ U.double().transpose(1, 2)) + 1e-5 * torch.eye(U.shape[1], dtype=torch.float64)
    ours, t_ours = timed(lambda: mvn_cdf(z.double(), cov, generator=make_generator(4)).p)
    zc = z.double().clamp(-1e6, 1e6).numpy()
    ref, t_scipy = timed(lambda: np.array([multivariate_normal.cdf(zc[i], mean=np.zeros(zc.shape[1]), cov=cov[i].numpy(),
                                                                   maxpts=10000, abseps=1e-4, releps=1e-4)
                                           for i in range(zc.shape[0])]))
    print(f"MVN CDF ({zc.shape[1]}-dim, {zc.shape[0]} points): batched {t_ours:.3f}s vs scipy per point "
          f"{t_scipy:.3f}s ({t_scipy / t_ours:.1f}x), max |diff| {np.abs(ours.numpy() - ref).max():.2e}")

    extra: dict = {}
    if not args.skip_curvature:
        from assay.robustness.curvature import loss_curvature

        # standard vs low-curvature CNN at the same (small) budget; the zoo model is a reference row
        lc_train = SignalDistractorDigits(DigitsConfig(split="train")).sample(args.lc_train,
                                                                              generator=make_generator(6))
        torch.manual_seed(0)  # SmallCNN init
        std, t_std = timed(lambda: fit_classifier(SmallCNN(channels=chans, batch_norm=True), lc_train.inputs,
                                                  lc_train.targets, epochs=args.lc_epochs, batch_size=64, lr=3e-3,
                                                  seed=0))
        lc, t_lc = timed(lambda: fit_low_curvature(LowCurvatureCNN(channels=chans), lc_train.inputs,
                                                   lc_train.targets, epochs=args.lc_epochs, batch_size=64, seed=0))
        xe, ye = test.inputs[:64], test.targets[:64]
        rows = [("standard", std, t_std), ("low_curvature", lc, t_lc)]
        if args.model == "zoo" and not args.train_own:
            rows.append(("zoo_reference", model, t_train))
        for name, mdl, t in rows:
            with torch.no_grad():
                a = (mdl(test.inputs).argmax(1) == test.targets).float().mean().item()
            c = loss_curvature(mdl, xe, ye, iters=10, generator=make_generator(5))
            extra[name] = {"test_acc": round(a, 3), "curvature": round(c.curvature.mean().item(), 4),
                           "hessian_norm": round(c.hessian_norm.mean().item(), 5),
                           "grad_norm": round(c.grad_norm.mean().item(), 4), "train_s": round(t, 1)}
            print(f"{name:13s} acc {a:.3f}  curvature {c.curvature.mean():.4f} ± {c.curvature.std():.4f}  "
                  f"‖H‖ {c.hessian_norm.mean():.5f}  ‖∇‖ {c.grad_norm.mean():.4f}  train {t:.0f}s", flush=True)

    print(json.dumps({"sigma": sigma, "n_points": args.n_points, "cnn_test_acc": round(acc, 3),
                      "mc_truth_samples": args.mc_truth, "mean_abs_error": mean_abs_error,
                      "speedup_vs_mc": speedup, "matched_mc_samples": matched,
                      "mvn_cdf_speedup_vs_scipy": round(t_scipy / t_ours, 2),
                      "jacobian_in_forwards": round(t_jac / t_fwd, 1), "curvature": extra}))


if __name__ == "__main__":
    main()
