"""Attribution metrics of assay vs Quantus (same run), with the forward-pass bound of each metric.

64 examples through the small CNN of ``attribution_throughput.py`` (1×28×28), a fixed random
attribution map per example:

* deletion / pixel flipping: 28 pixels per step (28 steps), Quantus ``PixelFlipping``; assay's
  ``perturbation_curve`` (its curve also has the unperturbed start, so it evaluates 29 rows/example);
* faithfulness correlation: 100 random subsets of 224 pixels, Quantus ``FaithfulnessCorrelation``;
  assay's ``faithfulness_correlation`` draws its own subsets (timed) and is checked for equal values
  on the subsets Quantus drew (untimed).

Both use Quantus's "black" baseline (each image's minimum) and softmax probabilities. The bound is
the metric's rows (assay's count: B·29 for deletion, B·101 for correlation, the unperturbed forward
included) as plain no-grad batched calls, best of several rows-per-call settings. assay, Quantus and
the bound run round-robin ``--reps`` times after a warm-up and each reports its median wall time; the
bound's rows per call are picked first (fastest of several, each timed twice), so all three get the same
number of timed calls (taking the best of many bound settings against one assay setting would favour
the bound on a noisy machine).
Last line: JSON keyed by metric with ``speedup_vs_quantus``, ``fraction_of_bound`` and the largest
difference from Quantus's values.

    .venv/bin/python benchmarks/attribution_metrics.py [--reps N]
"""

import json
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

from assay.evaluate.faithfulness import faithfulness_correlation, perturbation_curve

torch.set_num_threads(2)
REPS = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 5
BOUND_CHUNKS = (256, 512, 1024, 2048)
B, STEP, RUNS, SUBSET = 64, 28, 100, 224


def round_robin(fns: dict, reps: int) -> dict:
    """Median wall time of each function over ``reps`` interleaved rounds (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    times: dict = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def fastest(fns: dict) -> str:
    """Key of the fastest function, each timed twice after a warm-up (picks the bound's rows per call)."""
    best = {}
    for k, fn in fns.items():
        fn()
        best[k] = min(_timed(fn) for _ in range(2))
    return min(best, key=best.get)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bound(model, x, rows, chunk):
    """``rows`` forwards in calls of ``chunk`` rows, cycling through the real examples (copies of one
    example would flatter the bound: max-pooling identical rows predicts its branches)."""
    def run():
        with torch.no_grad():
            for s in range(0, rows, chunk):
                n = min(chunk, rows - s)
                model(x[torch.arange(s, s + n) % x.shape[0]]).softmax(-1)
    return run


def main():
    import quantus

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, 10)).eval()
    x = torch.rand(B, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    a = torch.randn(B, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = cnn(x).argmax(1)
    black = x.flatten(1).min(1).values
    xn, yn, an = x.numpy(), y.numpy(), a.numpy()

    pf = quantus.PixelFlipping(features_in_step=STEP, normalise=False, disable_warnings=True, perturb_baseline="black")
    fc = quantus.FaithfulnessCorrelation(nr_runs=RUNS, subset_size=SUBSET, normalise=False, disable_warnings=True,
                                         perturb_baseline="black", return_aggregate=False)

    def q_pf():
        return np.array(pf(model=cnn, x_batch=xn, y_batch=yn, a_batch=an, device="cpu", softmax=True,
                           channel_first=True))

    def q_fc():
        return np.array(fc(model=cnn, x_batch=xn, y_batch=yn, a_batch=an, device="cpu", softmax=True,
                           channel_first=True))

    def o_pf():
        return perturbation_curve(cnn, x, a, y, features_per_step=STEP, output="probability",
                                  baseline=black.view(-1, 1, 1, 1))

    gen = torch.Generator()

    def o_fc():
        return faithfulness_correlation(cnn, x, a, y, n_runs=RUNS, subset_size=SUBSET, output="probability",
                                        baseline=black, generator=gen.manual_seed(0))

    # equal values: deletion curves directly; correlation on the subsets Quantus draws
    diff_pf = float(np.abs(o_pf().scores[:, 1:].numpy() - q_pf()).max())
    drawn, choice = [], np.random.choice

    def recording(*args, **kw):
        out = choice(*args, **kw)
        drawn.append(out)
        return out

    np.random.choice = recording
    try:
        ref_fc = q_fc()
    finally:
        np.random.choice = choice
    subsets = torch.from_numpy(np.stack(drawn).reshape(RUNS, B, SUBSET).transpose(1, 0, 2).copy())
    ours_fc = faithfulness_correlation(cnn, x, a, y, subsets=subsets, output="probability", baseline=black)
    diff_fc = float(np.abs(ours_fc.numpy() - ref_fc).max())

    results = {}
    for name, ours, theirs, rows, diff in (
        ("deletion", o_pf, q_pf, B * (784 // STEP + 1), diff_pf),
        ("faithfulness_correlation", o_fc, q_fc, B * (RUNS + 1), diff_fc),
    ):
        c = int(fastest({c: bound(cnn, x, rows, c) for c in BOUND_CHUNKS}))
        med = round_robin({"assay": ours, "quantus": theirs, "bound": bound(cnn, x, rows, c)}, REPS)
        to, tq, tb = med["assay"], med["quantus"], med["bound"]
        r = {"assay_s": to, "quantus_s": tq, "bound_s": tb, "speedup_vs_quantus": tq / to, "fraction_of_bound": tb / to,
             "bound_rows_per_call": c, "max_abs_diff_vs_quantus": diff}
        results[name] = r
        print(f"{name:26s} assay {to:7.3f}s  quantus {tq:7.3f}s  bound {tb:7.3f}s ({c} rows/call)  "
              f"speedup {tq / to:6.2f}x  of bound {tb / to:.2f}  max|assay-quantus| {diff:.2e}", flush=True)
    print(json.dumps({k: {m: float(f"{v:.4g}") for m, v in r.items()} for k, r in results.items()}))


if __name__ == "__main__":
    main()
