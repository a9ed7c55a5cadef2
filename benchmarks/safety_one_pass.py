"""One-pass suffix-mode erase-and-check with a probe filter vs the (d + 1)-pass check.

Erase-and-check: Kumar, Agarwal, Srinivas, Li, Feizi & Lakkaraju 2024, "Certifying LLM Safety against
Adversarial Prompting" (arXiv 2309.02705). Filter: a logistic probe on SmolLM2-135M-Instruct's residual
stream (``model.layers.15``), trained with the spec's recipe on the bundled template prompts
(:mod:`assay.safety.prompts`, full prompts + the d prefixes of each safe prompt). Each checked prompt is
a bundled prompt plus a random 20-token suffix (so every one of the d + 1 = 21 prefixes exists).

Three ways to check the same prompts, timed in the same run, round-robin per prompt:
- ``one-pass``: :func:`one_pass_suffix_check` — one forward pass, d + 1 dot products;
- ``d+1 passes``: :func:`erase_and_check` with batch_size 1 — one pass per prefix, as the repo does;
- ``batched``: :func:`erase_and_check` with batch_size 64 — the d + 1 prefixes as one right-padded batch.
The order rotates per prompt (a shape's first forward pass is slower). Verdicts and witnesses must be
identical (asserted). Prints per-prompt latencies and ratios; last line JSON.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/safety_one_pass.py [--n-prompts 24] [--d 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from assay.models.offline import load
from assay.safety.certificate import EraseConfig, erase_and_check
from assay.safety.classifier import tokenize
from assay.safety.probe_filter import fit_probe_filter, one_pass_suffix_check
from assay.safety.prompts import prompt_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-prompts", type=int, default=24)
    ap.add_argument("--d", type=int, default=20)
    ap.add_argument("--site", default="model.layers.15")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    lm = load("smollm2-135m")
    tok = lm.tokenizer
    start = tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(args.seed)
    data = prompt_set(generator=g)
    ids = tokenize(tok, data.texts)
    n_train = len(ids) - args.n_prompts
    harm = [ids[i] for i in range(n_train) if data.harmful[i]]
    safe = [ids[i] for i in range(n_train) if not data.harmful[i]]
    t0 = time.perf_counter()
    flt = fit_probe_filter(lm.model, args.site, harm, safe, start_ids=start, d=args.d, context_length=2000)
    fit_s = time.perf_counter() - t0

    cfg = EraseConfig(mode="suffix", d=args.d)
    ways = {"one-pass": lambda p: one_pass_suffix_check(p, flt, cfg),
            "d+1 passes": lambda p: erase_and_check(p, flt, EraseConfig(mode="suffix", d=args.d, batch_size=1)),
            "batched": lambda p: erase_and_check(p, flt, EraseConfig(mode="suffix", d=args.d, batch_size=64))}
    times: dict[str, list[float]] = {w: [] for w in ways}
    harmful_verdicts, lengths = 0, []
    with torch.no_grad():
        ways["one-pass"](ids[0] + (1,))  # warm-up
        for i in range(n_train, len(ids)):
            suffix = tuple(torch.randint(200, 40000, (20,), generator=g).tolist())
            p = ids[i] + suffix
            lengths.append(len(p))
            certs = {}
            names = list(ways)
            for w in names[i % 3:] + names[: i % 3]:  # rotate who runs first: a new shape's first call is slower
                t = time.perf_counter()
                certs[w] = ways[w](p)
                times[w].append(time.perf_counter() - t)
            ref = certs["d+1 passes"]
            for w, c in certs.items():
                assert (c.harmful, c.witness) == (ref.harmful, ref.witness), (w, c, ref)
            harmful_verdicts += ref.harmful
    med = {w: statistics.median(v) for w, v in times.items()}
    print(f"probe fitted in {fit_s:.1f} s; {len(lengths)} prompts of {min(lengths)}-{max(lengths)} tokens, d={args.d}; "
          f"verdicts identical in all three ({harmful_verdicts} harmful)")
    for w, v in med.items():
        print(f"  {w:11s} median {1000 * v:8.1f} ms/prompt   ({med['d+1 passes'] / v:5.1f}x vs d+1 passes)")
    print(json.dumps({"d": args.d, "n_prompts": len(lengths), "ms_one_pass": round(1000 * med["one-pass"], 2),
                      "ms_d_plus_1_passes": round(1000 * med["d+1 passes"], 2),
                      "ms_batched": round(1000 * med["batched"], 2),
                      "speedup_vs_passes": round(med["d+1 passes"] / med["one-pass"], 2),
                      "speedup_vs_batched": round(med["batched"] / med["one-pass"], 2),
                      "verdicts_identical": True, "harmful_verdicts": harmful_verdicts}))


if __name__ == "__main__":
    main()
