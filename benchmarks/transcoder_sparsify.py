"""TopK transcoder training: assay vs EleutherAI sparsify (``eai-sparsify``) on the same data and settings —
loss curves (per-batch FVU of the output site) over seeds, and training throughput in one run; plus assay's
TopK SAE of the same shapes on x (the issue's target: a transcoder step costs what an SAE step costs).

Transcoders: Dunefsky, Chlenski & Nanda 2024; Paulo, Shabalin & Belrose 2025 (sparsify's
``transcode=True``). Data: a planted sparse map (n_feat features, Bernoulli(p) × U(0.5, 1.5), read in
superposition as x = f E ∈ ℝ^{d} and written as y = f D ∈ ℝ^{d}), the same batches for both libraries.

Equal settings: TopK k, n latents, Adam (lr, β = (0.9, 0.999)), grad clip 1, no warmup, no input
normalisation, no AuxK (sparsify's default ``auxk_alpha`` for transcoders is 0), sparsify's transcoder
recipe on both sides (b_enc = −mean(x) W_enc at step 0; W_dec from zero, never renormalised: assay's
``unit_decoder=False``) and the same initial weights (sparsify's encoder starts from assay's W_enc, and its
b_dec from assay's step-0 value, the geometric median of y, instead of the mean). What differs is the code
path: sparsify's loss is the per-batch FVU, assay's mean_b‖y − ŷ‖² (proportional within a batch; Adam's
step is invariant to the factor up to ε), and each library's own encoder/decoder kernels. sparsify is stepped in a hand loop mirroring its
trainer's step (its ``Trainer`` needs a Hugging Face model and dataset); assay through its one trainer.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/transcoder_sparsify.py [--steps 300] [--seeds 3]

Per library: the mean over seeds of the per-batch FVU in windows of the curve, the final-window mean ± its
spread over seeds, and the median samples/s (the two libraries are stepped round-robin, one step of each in
turn, so machine load hits both alike; the ratio is what counts). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_data(args: argparse.Namespace, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1000 + seed)
    E = torch.nn.functional.normalize(torch.randn(args.n_feat, args.d, generator=g), dim=-1)
    D = torch.nn.functional.normalize(torch.randn(args.n_feat, args.d, generator=g), dim=-1)
    out = []
    for _ in range(args.steps):
        f = (torch.rand(args.batch, args.n_feat, generator=g) < args.p) * (0.5 + torch.rand(args.batch, args.n_feat,
                                                                                            generator=g))
        out.append((f @ E, f @ D))
    return out


def setup_assay(args: argparse.Namespace, seed: int):
    from assay.dictionaries.registry import build_sae
    from assay.dictionaries.trainer import SAETrainConfig, SAETrainer

    tc = build_sae("topk_transcoder", d_in=args.d, d_out=args.d, d_sae=args.n, k=args.k, aux_coef=0.0,
                   unit_decoder=False, seed=seed)
    w_enc0 = tc.W_enc.detach().clone()
    tr = SAETrainer(tc, SAETrainConfig(steps=10**9, lr=args.lr, warmup_steps=0, normalize_inputs=False))

    def step(x, y):
        tr.train_step(x, target=y)
        return tr.last[0]["fvu"]

    return step, w_enc0


def setup_assay_sae(args: argparse.Namespace, seed: int):
    """Throughput reference: assay's TopK SAE of the same shapes (d → n → d, k) on x alone."""
    from assay.dictionaries.registry import build_sae
    from assay.dictionaries.trainer import SAETrainConfig, SAETrainer

    sae = build_sae("topk", d_in=args.d, d_sae=args.n, k=args.k, aux_coef=0.0, seed=seed)
    tr = SAETrainer(sae, SAETrainConfig(steps=10**9, lr=args.lr, warmup_steps=0, normalize_inputs=False))

    def step(x, y):
        tr.train_step(x)
        return tr.last[0]["fvu"]

    return step


def setup_sparsify(args: argparse.Namespace, w_enc0: torch.Tensor):
    from sparsify import SparseCoder, SparseCoderConfig

    from assay.dictionaries.base import geometric_median

    tc = SparseCoder(args.d, SparseCoderConfig(k=args.k, num_latents=args.n, transcode=True))
    with torch.no_grad():
        tc.encoder.weight.copy_(w_enc0.t())  # the same initial encoder as assay's
    opt = torch.optim.Adam(tc.parameters(), lr=args.lr)
    first = [True]

    def step(x, y):
        if first[0]:  # its trainer's step-0 init for transcoders (b_dec: assay's geometric median)
            with torch.no_grad():
                tc.encoder.bias.data = -x.mean(0) @ tc.encoder.weight.data.T
                tc.b_dec.data = geometric_median(y)
            first[0] = False
        out = tc(x, y)
        out.fvu.backward()
        torch.nn.utils.clip_grad_norm_(tc.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return float(out.fvu.detach())

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--n-feat", type=int, default=1024)
    ap.add_argument("--p", type=float, default=0.012)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the throughput medians")
    ap.add_argument("--windows", type=int, default=6, help="windows of the loss curve reported")
    args = ap.parse_args()
    torch.set_num_threads(1)
    libs = ("assay", "sparsify", "assay_sae")
    curves = {name: [] for name in libs}
    times = {name: [] for name in libs}
    for seed in range(args.seeds):
        data = make_data(args, seed)
        assay_step, w_enc0 = setup_assay(args, seed)
        steps = {"assay": assay_step, "sparsify": setup_sparsify(args, w_enc0), "assay_sae": setup_assay_sae(args, seed)}
        curve = {name: [] for name in libs}
        for i, (x, y) in enumerate(data):
            for name, step in steps.items():  # round-robin
                t0 = time.perf_counter()
                curve[name].append(step(x, y))
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        for name in libs:
            curves[name].append(curve[name])
    w = args.steps // args.windows
    print(f"planted map d={args.d}, {args.n_feat} features (p={args.p}), n={args.n}, k={args.k}, batch {args.batch}, "
          f"{args.steps} steps, lr {args.lr}, {args.seeds} seeds")
    print("per-batch FVU, mean over seeds, by window of steps:")
    print("steps".ljust(12) + "".join(name.rjust(12) for name in libs))
    for j in range(args.windows):
        row = [statistics.mean(statistics.mean(c[j * w:(j + 1) * w]) for c in curves[name]) for name in libs]
        print(f"{j * w}-{(j + 1) * w - 1}".ljust(12) + "".join(f"{v:12.4f}" for v in row))
    result = {}
    for name in libs:
        finals = [statistics.mean(c[-w:]) for c in curves[name]]
        sps = args.batch / statistics.median(times[name])
        result[name] = {"final_fvu_mean": statistics.mean(finals),
                        "final_fvu_seed_sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                        "samples_per_s": sps}
        print(f"{name}: final-window FVU {result[name]['final_fvu_mean']:.4f} ± {result[name]['final_fvu_seed_sd']:.4f} "
              f"(sd over seeds), {sps:.0f} samples/s")
    result["speedup"] = result["assay"]["samples_per_s"] / result["sparsify"]["samples_per_s"]
    result["transcoder_vs_sae_speed"] = result["assay"]["samples_per_s"] / result["assay_sae"]["samples_per_s"]
    print(f"assay transcoder / sparsify transcoder throughput: {result['speedup']:.2f}x; assay transcoder / assay "
          f"SAE (same shapes, FVU of x — not comparable to the transcoders' FVU of y): "
          f"{result['transcoder_vs_sae_speed']:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
