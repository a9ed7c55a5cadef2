"""Overhead of caching activations with assay vs a bare forward pass stopped at the same layer.

SmolLM2-135M, site ``model.layers.3``, the same windows of the bundled corpus in the same batches,
measured in the same run and interleaved (bare, assay, bare, assay, ...):

- **bare**: ``torch.no_grad()`` forward with one forward hook that raises after layer 3 — the least
  work that produces the activations, which are then dropped;
- **assay**: :func:`assay.store.write_store` into a fresh folder — the same forward passes (plus its
  one-window probe), conversion to the on-disk dtype, the finiteness check, shard files written,
  hashed and fsynced on the background thread, and the manifest.

Prints per-repeat times and, as its last line, a JSON object with ``assay_tokens_per_s``,
``bare_tokens_per_s`` (from the fastest of the repeats of each: on a shared machine other jobs
only ever add time, so the minimum is the least noisy estimate; medians are printed too) and
``overhead`` = bare / assay (goal: <= 1.10).

    .venv/bin/python benchmarks/cache_overhead.py [--windows 48] [--repeats 3] [--dtype float32] [--device cpu]

With ``--device cuda`` the model runs on the GPU (the store writer takes its device from the weights) and
each bare run ends with a ``torch.cuda.synchronize()``, so both times include the GPU work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SITE = "model.layers.3"


class _Stop(Exception):
    pass


def bare_run(model, tokens: torch.Tensor, batch_size: int) -> float:
    layer = model.get_submodule(SITE)

    def stop(module, args, output):
        raise _Stop

    handle = layer.register_forward_hook(stop)
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, tokens.shape[0], batch_size):
                try:
                    model(tokens[i : i + batch_size])
                except _Stop:
                    pass
        if tokens.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0
    finally:
        handle.remove()


def assay_run(model, windows, batch_size: int, dtype: str, root: Path) -> float:
    from assay.store import write_store

    out = root / "store"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    write_store(out, model, [SITE], windows, batch_size=batch_size, shard_rows=4096, dtype=dtype,
                model_name="smollm2-135m")
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", type=int, default=48, help="windows of 128 tokens to cache per run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where the model runs, e.g. cuda")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from assay import corpora, models

    loaded = models.load("smollm2-135m")
    windows = corpora.token_windows(loaded.tokenizer, corpora.load_corpus("bundled"), 128)
    windows = type(windows)(*(t[: args.windows] for t in windows))
    loaded.model.to(args.device)
    n_tokens = windows.tokens.numel()
    print(f"SmolLM2-135M @ {SITE}: {args.windows} windows x 128 = {n_tokens} tokens, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, dtype {args.dtype}, device {args.device}")
    bare_tokens = windows.tokens.to(args.device)
    bare_run(loaded.model, bare_tokens[: args.batch_size], args.batch_size)  # warm-up
    bare_t, assay_t = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            bare_t.append(bare_run(loaded.model, bare_tokens, args.batch_size))
            assay_t.append(assay_run(loaded.model, windows, args.batch_size, args.dtype, Path(tmp)))
            print(f"repeat {r}: bare {bare_t[-1]:.2f} s, assay {assay_t[-1]:.2f} s, ratio {bare_t[-1] / assay_t[-1]:.3f}",
                  flush=True)
    print(f"median: bare {n_tokens / statistics.median(bare_t):.1f} tok/s, assay {n_tokens / statistics.median(assay_t):.1f} "
          f"tok/s, overhead {statistics.median(assay_t) / statistics.median(bare_t):.3f}")
    bare_tps = n_tokens / min(bare_t)
    assay_tps = n_tokens / min(assay_t)
    print(json.dumps({"assay_tokens_per_s": round(assay_tps, 1), "bare_tokens_per_s": round(bare_tps, 1),
                      "overhead": round(bare_tps / assay_tps, 4), "tokens": n_tokens, "repeats": args.repeats,
                      "device": args.device}))


if __name__ == "__main__":
    main()
