"""TopK SAE training throughput: assay vs the peers, same synthetic activations, same optimizer (Adam,
lr 2e-4/√(n/2¹⁴), grad clip 1, unit-norm decoder with the parallel gradient removed, AuxK on).

    .venv/bin/python benchmarks/sae_throughput.py [--steps 20] [--batch 4096]

Peers: EleutherAI sparsify (``eai-sparsify``, SparseCoder driven by a hand loop mirroring its trainer),
SAELens (``SAETrainer.fit`` on ``TopKTrainingSAE``), dictionary_learning and overcomplete (run when
importable, else reported as skipped with the reason). Prints ratios; the last line is JSON with
assay_samples_per_s, best_peer, best_peer_samples_per_s, speedup, assay_fvu, best_peer_fvu,
bound_fraction (encoder-forward FLOPs per step / step time / dense-matmul FLOP/s measured here) and
peak memory (process max RSS after each method, in MiB; methods run in this order).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

D_IN, D_SAE, K = 576, 4608, 32


def make_data(batch: int, n_batches: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sparse combinations of 4·d_in random unit directions + noise (an SAE-learnable stream)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(4 * D_IN, D_IN, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)

    def one():
        idx = torch.randint(0, dirs.shape[0], (batch, 24), generator=g)
        vals = torch.rand(batch, 24, generator=g) * 2
        x = torch.nn.functional.embedding_bag(idx, dirs, per_sample_weights=vals, mode="sum")
        return x + 0.05 * torch.randn(batch, D_IN, generator=g)

    return [one() for _ in range(n_batches)], one()


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    from assay.evaluate.reconstruction import reconstruction_metrics

    return reconstruction_metrics(x, x_hat).fvu


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(step, batches, steps) -> list[float]:
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(batches[i % len(batches)])
        times.append(time.perf_counter() - t)
    return times


def run_assay(batches, held, steps):
    from assay.dictionaries.base import topk_lr
    from assay.dictionaries.registry import build_sae
    from assay.dictionaries.trainer import SAETrainer, TrainConfig

    sae = build_sae("topk", d_in=D_IN, d_sae=D_SAE, k=K)
    tr = SAETrainer(sae, TrainConfig(steps=10**9, lr=topk_lr(D_SAE), warmup_steps=0, normalize_inputs=False))
    times = timed(tr.train_step, batches, steps)
    with torch.no_grad():
        return times, fvu(held, sae.decode_codes(sae.encode_codes(held)))


def run_sparsify(batches, held, steps):
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(D_IN, SparseCoderConfig(k=K, num_latents=D_SAE))
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (D_SAE / 2**14) ** 0.5)
    since = torch.zeros(D_SAE, dtype=torch.long)
    first = [True]

    def step(x):
        if first[0]:  # sparsify initialises b_dec at the first batch's mean
            sae.b_dec.data = x.mean(0).to(sae.dtype)
            first[0] = False
        dead = since >= 10 * x.shape[0]
        out = sae(x, dead_mask=dead)
        loss = out.fvu + 1 / 32 * out.auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
        fired = torch.bincount(out.latent_indices.flatten(), minlength=D_SAE)
        since.add_(x.shape[0])
        since[fired > 0] = 0

    times = timed(step, batches, steps)
    with torch.no_grad():
        return times, fvu(held, sae(held).sae_out)


def run_saelens(batches, held, steps):
    import sae_lens  # noqa: F401  (SAETrainer.fit on TopKTrainingSAE; see docs/peers in specs)

    raise RuntimeError("sae_lens imported but the SAETrainer driver is not written yet")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches, held = make_data(args.batch, 4)
    a = torch.randn(args.batch, D_IN)
    w = torch.randn(D_IN, D_SAE)
    mm = statistics.median(timed(lambda _: a @ w, [None], 5))
    flops = 2 * args.batch * D_IN * D_SAE
    mm_rate = flops / mm
    print(f"dense matmul [{args.batch}x{D_IN}]@[{D_IN}x{D_SAE}]: {mm * 1e3:.1f} ms, {mm_rate / 1e9:.1f} GFLOP/s")
    results, skipped, peaks = {}, {}, {}
    runners = {"assay": run_assay, "sparsify": run_sparsify, "sae_lens": run_saelens,
               "dictionary_learning": None, "overcomplete": None}
    for name, fn in runners.items():
        if fn is None:
            try:
                __import__(name)
                skipped[name] = "importable but no driver written"
            except Exception as e:  # noqa: BLE001
                skipped[name] = f"not importable: {type(e).__name__}: {e}"[:160]
            continue
        try:
            times, f = fn(batches, held, args.steps)
        except Exception as e:  # noqa: BLE001
            skipped[name] = f"{type(e).__name__}: {e}"[:160]
            continue
        step = statistics.median(times[2:])
        results[name] = {"samples_per_s": args.batch / step, "step_s": step, "fvu": f}
        peaks[name] = peak_mib()
        print(f"{name:>20}: {args.batch / step:9.0f} samples/s  step {step * 1e3:7.1f} ms  FVU {f:.4f}  "
              f"peak RSS {peaks[name]:.0f} MiB")
    for name, why in skipped.items():
        print(f"{name:>20}: skipped ({why})")
    peers = {k: v for k, v in results.items() if k != "assay"}
    best = max(peers, key=lambda k: peers[k]["samples_per_s"]) if peers else None
    ours = results["assay"]
    summary = {
        "assay_samples_per_s": round(ours["samples_per_s"], 1),
        "best_peer": best,
        "best_peer_samples_per_s": round(peers[best]["samples_per_s"], 1) if best else None,
        "speedup": round(ours["samples_per_s"] / peers[best]["samples_per_s"], 3) if best else None,
        "assay_fvu": round(ours["fvu"], 4),
        "best_peer_fvu": round(peers[best]["fvu"], 4) if best else None,
        "bound_fraction": round((flops / ours["step_s"]) / mm_rate, 3),
        "peak_rss_mib": {k: round(v) for k, v in peaks.items()},
        "steps": args.steps, "batch": args.batch, "skipped": sorted(skipped),
    }
    for name, v in peers.items():
        print(f"assay / {name}: {ours['samples_per_s'] / v['samples_per_s']:.2f}x")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
