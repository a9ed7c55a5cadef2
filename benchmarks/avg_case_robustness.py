"""Average-case robustness estimators vs Monte Carlo on a small CNN on the digits world.

Per-point error of each estimator against a Monte Carlo ground truth (10,000 noisy copies per
point), and its speed-up over Monte Carlo at matched error: MC is re-run with 8…4096 samples, its
mean absolute error against the ground truth and its time are interpolated (log-log) at the
estimator's error. Also: the batched MVN CDF against one SciPy call per point on the same Taylor
problems, and (unless --skip-curvature) curvature and accuracy of a standard vs a low-curvature CNN.

    .venv/bin/python benchmarks/avg_case_robustness.py [--n-points 32] [--sigma 0.1] [--skip-curvature]

The CNN is the cached ``assay.models.classifier_zoo.world_classifier("digits")`` (SmallCNN (16, 32, 64)
with BatchNorm, 10k composites × 8 epochs, test accuracy ≈ 0.84; trained once, then loaded from
``ASSAY_CACHE``), or with ``--train-own`` a SmallCNN trained here (``--n-train`` × ``--epochs``).

Last line: JSON with ``speedup_vs_mc`` and ``mean_abs_error`` per estimator.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-own", action="store_true",
                    help="train a SmallCNN here (--n-train x --epochs) instead of the cached world_classifier('digits')")
    ap.add_argument("--n-points", type=int, default=32)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--mc-truth", type=int, default=10_000)
    ap.add_argument("--skip-curvature", action="store_true")
    ap.add_argument("--lc-train", type=int, default=5000, help="training set of the standard vs LC comparison")
    ap.add_argument("--lc-epochs", type=int, default=4, help="epochs of the standard vs LC comparison")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from scipy.stats import multivariate_normal

    from assay.models.classifier_zoo import world_classifier
    from assay.models.cnn import SmallCNN
    from assay.models.fit import fit_classifier
    from assay.robustness import average_case as ac
    from assay.robustness.mvn import mvn_cdf
    from assay.worlds.base import make_generator
    from assay.worlds.digits import DigitsConfig, SignalDistractorDigits

    g = make_generator(0)
    train = SignalDistractorDigits(DigitsConfig(split="train")).sample(args.n_train, generator=g)
    test = SignalDistractorDigits(DigitsConfig(split="test")).sample(512, generator=g)
    chans = (16, 32, 64)
    if not args.train_own:
        wc, t_train = timed(lambda: world_classifier("digits"))  # SmallCNN (16, 32, 64) + BN, 10k x 8 epochs, cached
        model, how = wc.model.eval(), f"assay.models.classifier_zoo (trained={wc.trained})"
    else:
        torch.manual_seed(0)  # SmallCNN init
        model, t_train = timed(lambda: fit_classifier(SmallCNN(channels=chans, batch_norm=True), train.inputs,
                                                      train.targets, epochs=args.epochs, batch_size=64, lr=3e-3,
                                                      seed=0))
        how = f"{args.n_train} examples x {args.epochs} epochs"
    with torch.no_grad():
        acc = (model(test.inputs).argmax(1) == test.targets).float().mean().item()
    print(f"SmallCNN (16, 32, 64) + BN on digits, {how}, {t_train:.0f}s: test acc {acc:.3f}", flush=True)
    x = test.inputs[: args.n_points]
    sigma = args.sigma

    truth, t_truth = timed(lambda: ac.monte_carlo(model, x, sigma, n_samples=args.mc_truth, chunk=256,
                                                  generator=make_generator(1)))
    p_true = truth.p.double()
    print(f"MC ground truth: {args.mc_truth} samples/point in {t_truth:.1f}s; p mean {p_true.mean():.3f}, "
          f"min {p_true.min():.3f}, frac < 0.99: {(p_true < 0.99).float().mean():.2f}")

    # MC error/time curve
    mc_curve = []
    for n in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
        est, t = timed(lambda n=n: ac.monte_carlo(model, x, sigma, n_samples=n, chunk=min(n, 256),
                                                  generator=make_generator(100 + n)))
        err = (est.p.double() - p_true).abs().mean().item()
        mc_curve.append((n, err, t))
        print(f"  mc n={n:5d}: mean |err| {err:.4f}  {t:.2f}s", flush=True)

    # MC at matched error: a binomial estimate with n samples has E|p̂ − p| ≈ √(2p(1−p)/(πn)), so the
    # samples for mean error e are n(e) = (mean_i √(2p_i(1−p_i)/π) / e)²; time = per-sample MC cost × n.
    # The empirical curve above checks the formula; matching is limited by the ground truth's own noise.
    spread = torch.sqrt(2 * p_true * (1 - p_true) / math.pi).mean().item()
    per_sample = np.median([t / (n * x.shape[0]) for n, _, t in mc_curve[-4:]]) * x.shape[0]
    print(f"  predicted MC error at n=256: {spread / 16:.4f} (measured {mc_curve[5][1]:.4f}); "
          f"MC cost {per_sample * 1e3:.2f} ms per sample for all {x.shape[0]} points")

    def mc_time_at(err: float) -> tuple[float, float]:
        n = max(1.0, (spread / max(err, 1e-12)) ** 2)
        return per_sample * n, n

    estimators = {
        "taylor": lambda: ac.taylor(model, x, sigma, generator=make_generator(2)),
        "taylor_mvs": lambda: ac.taylor_mvs(model, x, sigma),
        "mmse": lambda: ac.mmse(model, x, sigma, n_samples=10, generator=make_generator(3)),
        "mmse_mvs": lambda: ac.mmse_mvs(model, x, sigma, n_samples=10, generator=make_generator(3)),
        "mmse_n4": lambda: ac.mmse(model, x, sigma, n_samples=4, generator=make_generator(3)),
        "mmse_n2": lambda: ac.mmse(model, x, sigma, n_samples=2, generator=make_generator(3)),
        "softmax": lambda: ac.softmax_confidence(model, x),
    }
    # where the analytic estimators' time goes: one forward vs one input Jacobian (C backward passes)
    with torch.no_grad():
        model(x)
        _, t_fwd = timed(lambda: model(x))
    _, t_jac = timed(lambda: ac.margins(model, x))
    print(f"one forward of {x.shape[0]} points {t_fwd * 1e3:.1f} ms; input Jacobian (margins) {t_jac * 1e3:.1f} ms "
          f"= {t_jac / t_fwd:.1f} forwards")
    mean_abs_error, speedup, matched = {}, {}, {}
    for name, fn in estimators.items():
        p, t = timed(fn)
        err = (p.double() - p_true).abs().mean().item()
        t_mc, n_mc = mc_time_at(err)
        mean_abs_error[name] = round(err, 5)
        speedup[name] = round(t_mc / t, 2)
        matched[name] = round(n_mc, 1)
        print(f"{name:11s} mean |err| {err:.4f}  time {t:.3f}s  MC at same error ≈ {n_mc:.0f} samples, "
              f"{t_mc:.3f}s -> speed-up {t_mc / t:.1f}x")

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
        from assay.robustness.lcnn import LowCurvatureCNN, fit_low_curvature

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
        if not args.train_own:
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
