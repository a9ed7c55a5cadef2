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
the bounds run round-robin ``--reps`` times after a warm-up; each keeps its best wall time.
Last line: JSON keyed by metric with ``speedup_vs_quantus``, ``fraction_of_bound`` and the largest
difference from Quantus's values.

    .venv/bin/python benchmarks/attribution_metrics.py [--reps N]
"""

import json
import sys
import time

import numpy as np
import torch
from torch import nn

from assay.evaluate.faithfulness import faithfulness_correlation, perturbation_curve

torch.set_num_threads(2)
REPS = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 3
BOUND_CHUNKS = (256, 512, 1024, 2048)
B, STEP, RUNS, SUBSET = 64, 28, 100, 224


def round_robin(fns: dict, reps: int) -> dict:
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def bound(model, x, rows, chunk):
    def run():
        with torch.no_grad():
            for s in range(0, rows, chunk):
                n = min(chunk, rows - s)
                model(x[:1].expand(n, *x.shape[1:]).clone()).softmax(-1)
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
        fns = {"assay": ours, "quantus": theirs, **{f"bound{c}": bound(cnn, x, rows, c) for c in BOUND_CHUNKS}}
        best = round_robin(fns, REPS)
        to, tq = best["assay"], best["quantus"]
        tb = min(best[f"bound{c}"] for c in BOUND_CHUNKS)
        r = {"assay_s": to, "quantus_s": tq, "bound_s": tb, "speedup_vs_quantus": tq / to, "fraction_of_bound": tb / to,
             "max_abs_diff_vs_quantus": diff}
        results[name] = r
        print(f"{name:26s} assay {to:7.3f}s  quantus {tq:7.3f}s  bound {tb:7.3f}s  speedup {tq / to:6.2f}x  "
              f"of bound {tb / to:.2f}  max|assay-quantus| {diff:.2e}", flush=True)
    print(json.dumps({k: {m: float(f"{v:.4g}") for m, v in r.items()} for k, r in results.items()}))


if __name__ == "__main__":
    main()
