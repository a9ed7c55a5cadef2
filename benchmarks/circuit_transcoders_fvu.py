"""Held-out FVU of the transcoders `assay circuit` trained and cached: each layer's transcoder on corpus windows
not used for training (the last ``--held-out`` windows of the bundled corpus; training takes the first
``--n-windows``), BOS rows left out. FVU = Σ‖y − ŷ‖² / Σ‖y − ȳ‖² (Dunefsky et al. 2024 report transcoders by it).

    PYTHONPATH=. python benchmarks/circuit_transcoders_fvu.py --out-dir runs/circuit --all-layers --skip --k 32 \\
        --steps 1200 --n-windows 2828

Prints the FVU per layer, the mean, min and max; refuses windows that overlap the training windows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    from assay import corpora, hooks
    from assay.bench.circuit_real import CircuitSettings, _transcoders, llama_sites
    from assay.evaluate.reconstruction import fvu
    from assay.models import load

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--all-layers", action="store_true")
    ap.add_argument("--layers", type=int, nargs="*", default=[3, 9, 15])
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--skip", action="store_true")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n-windows", type=int, default=256)
    ap.add_argument("--held-out", type=int, default=16)
    a = ap.parse_args()
    loaded = load("smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    layers = tuple(range(model.config.num_hidden_layers)) if a.all_layers else tuple(a.layers)
    settings = CircuitSettings(layers=layers, d_sae=a.d_sae, k=a.k, skip=a.skip, steps=a.steps)
    windows = corpora.token_windows(tok, corpora.load_corpus("bundled"), 64).tokens
    if a.n_windows + a.held_out > windows.shape[0]:
        raise SystemExit(f"only {windows.shape[0]} windows: {a.n_windows} training + {a.held_out} held out overlap")
    cache = a.out_dir / "transcoders"
    missing = [i for i in layers if not any(cache.glob(f"layer{i}-d{a.d_sae}-k{a.k}{'-skip' if a.skip else ''}-"
                                                       f"steps{a.steps}-*-windows{a.n_windows}x64*"))]
    if missing:
        raise SystemExit(f"no cached transcoder for layers {missing} under {cache}: run `assay circuit` first")
    tcs = _transcoders(model, windows[:a.n_windows], settings, cache)
    held = windows[-a.held_out:]
    sites = [s for i in layers for s in llama_sites(i)]
    with torch.no_grad(), hooks.capture(model, sites) as cap:
        model(held)
    fvus = []
    for i in layers:
        x, y = (cap[s][:, 1:].reshape(-1, cap[s].shape[-1]) for s in llama_sites(i))  # BOS rows left out
        with torch.no_grad():
            y_hat = tcs[i].transcode(x)
        fvus.append(float(fvu(y, y_hat)))
        print(f"layer {i:2d}: held-out FVU {fvus[-1]:.3f}")
    print(f"mean {sum(fvus) / len(fvus):.3f} (min {min(fvus):.3f}, max {max(fvus):.3f}) over {len(fvus)} layers, "
          f"{held.shape[0]} windows of {held.shape[1]} tokens")


if __name__ == "__main__":
    main()
