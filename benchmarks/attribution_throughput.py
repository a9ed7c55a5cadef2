"""Attributions/s of assay vs Captum (same run), with the raw forward(+backward) bound.

MLP 784-512-512-10 (batch 256) and a small CNN on 1×28×28: IG (50 steps), SmoothGrad (25 samples),
KernelSHAP (200 samples, 49 features = 4×4 patches) and occlusion (4×4 windows, stride 4). The bound
runs the same number of rows as plain batched calls (forward+backward for gradient methods; the
rows cycle through the real examples, as copies of one example would let max-pooling predict its
branches) and is
the fastest of several rows-per-call settings (256 … 4096), so it is not tuned to assay's chunk.
The bound's rows per call are picked first (fastest setting, each timed twice); then assay, Captum and
the bound run round-robin ``--reps`` times after a warm-up and each reports its median wall time (on a
shared machine the load changes between calls: interleaving exposes all three to the same, and equal
numbers of timed calls keep the best-of-many-settings from favouring the bound).
Last line: JSON keyed by method with speedup_vs_captum and fraction_of_bound (MLP figures, CNN nested).

    .venv/bin/python benchmarks/attribution_throughput.py [--quick] [--reps N]
"""

import json
import statistics
import sys
import time

import torch
from torch import nn

from assay.attribution import (
    IntegratedGradientsConfig,
    KernelShapConfig,
    OcclusionConfig,
    SmoothGradConfig,
    integrated_gradients,
    kernel_shap,
    occlusion,
    smoothgrad,
)
from assay.attribution.neighbourhoods import grid_feature_mask

torch.set_num_threads(2)
QUICK = "--quick" in sys.argv
REPS = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 3
BOUND_CHUNKS = (256, 512, 1024, 2048, 4096)
EXACT = ("integrated_gradients", "occlusion")  # same values expected; SmoothGrad/KernelSHAP draw their own noise


def round_robin(fns: dict, reps: int) -> tuple[dict, dict]:
    """Median wall time of each function over ``reps`` interleaved rounds (after one warm-up call each), and
    each function's warm-up result."""
    results = {k: fn() for k, fn in fns.items()}
    times: dict = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, results


def fastest(fns: dict):
    """Key of the fastest function, each timed twice after a warm-up (picks the bound's rows per call)."""
    best = {}
    for k, fn in fns.items():
        fn()
        ts = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        best[k] = min(ts)
    return min(best, key=best.get)


def bound(model, x, rows, backward, chunk):
    def run():
        with torch.set_grad_enabled(backward):
            done = 0
            while done < rows:
                n = min(chunk, rows - done)
                xi = x[torch.arange(done, done + n) % x.shape[0]].requires_grad_(backward)  # real, distinct rows
                y = model(xi)
                if backward:
                    torch.autograd.grad(y[:, 0].sum(), xi)
                else:
                    y.detach()
                done += n
    return run


def main():
    from captum.attr import IntegratedGradients, KernelShap, NoiseTunnel, Occlusion, Saliency

    B = 32 if QUICK else 256
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, 10)).eval()
    x = torch.rand(B, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    fm = grid_feature_mask((1, 28, 28), (1, 4, 4))
    n_ks = 32 if QUICK else 64  # KernelSHAP in Captum is slow: time it on fewer examples
    results = {}
    for mname, model in (("mlp", mlp), ("cnn", cnn)):
        t = model(x).argmax(1)
        rows = {"integrated_gradients": (B * 50, True), "smoothgrad": (B * 25, True),
                "kernel_shap": (n_ks * 200, False), "occlusion": (B * 49, False)}
        ours = {
            "integrated_gradients": lambda model=model, t=t: integrated_gradients(model, x, t, config=IntegratedGradientsConfig(steps=50)),
            "smoothgrad": lambda model=model, t=t: smoothgrad(model, x, t, config=SmoothGradConfig(n_samples=25, noise_scale="absolute", noise_level=0.1)),
            "kernel_shap": lambda model=model, t=t: kernel_shap(model, x[:n_ks], t[:n_ks], feature_mask=fm, config=KernelShapConfig(n_samples=200)),
            "occlusion": lambda model=model, t=t: occlusion(model, x, t, config=OcclusionConfig(window=(1, 4, 4), strides=(1, 4, 4))),
        }
        theirs = {
            "integrated_gradients": lambda model=model, t=t: IntegratedGradients(model).attribute(x, target=t, n_steps=50, internal_batch_size=2048),
            "smoothgrad": lambda model=model, t=t: NoiseTunnel(Saliency(model)).attribute(x.clone().requires_grad_(True), nt_type="smoothgrad", nt_samples=25, stdevs=0.1, target=t, abs=False, nt_samples_batch_size=25),
            "kernel_shap": lambda model=model, t=t: KernelShap(model).attribute(x[:n_ks], target=t[:n_ks], feature_mask=fm[None], n_samples=200, perturbations_per_eval=200),
            "occlusion": lambda model=model, t=t: Occlusion(model).attribute(x, target=t, sliding_window_shapes=(1, 4, 4), strides=(1, 4, 4), perturbations_per_eval=64),
        }
        for meth in ours:
            n_attr = n_ks if meth == "kernel_shap" else B
            c = fastest({c: bound(model, x, *rows[meth], c) for c in BOUND_CHUNKS})
            med, res = round_robin({"assay": ours[meth], "captum": theirs[meth],
                                    "bound": bound(model, x, *rows[meth], c)}, REPS)
            to, tc, tb = med["assay"], med["captum"], med["bound"]
            diff = (res["assay"].values - res["captum"]).abs().max().item()
            r = {"assay_per_s": n_attr / to, "captum_per_s": n_attr / tc, "bound_per_s": n_attr / tb,
                 "speedup_vs_captum": tc / to, "fraction_of_bound": tb / to, "bound_rows_per_call": c,
                 "max_abs_diff_vs_captum": diff}
            results.setdefault(meth, {})[mname] = r
            print(f"{mname:4s} {meth:22s} assay {r['assay_per_s']:9.1f}/s  captum {r['captum_per_s']:9.1f}/s  "
                  f"bound {r['bound_per_s']:9.1f}/s ({c:4d}/call)  speedup {r['speedup_vs_captum']:6.2f}x  of bound {r['fraction_of_bound']:.2f}  "
                  f"max|assay-captum| {diff:.2e}{'' if meth in EXACT else ' (different random draws)'}",
                  flush=True)
    print(json.dumps({m: {"speedup_vs_captum": round(v["mlp"]["speedup_vs_captum"], 3),
                          "fraction_of_bound": round(v["mlp"]["fraction_of_bound"], 3),
                          "cnn": {k: round(v["cnn"][k], 3) for k in ("speedup_vs_captum", "fraction_of_bound")}}
                      for m, v in results.items()}))


if __name__ == "__main__":
    main()
