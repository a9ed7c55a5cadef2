"""How faithfully `assay circuit`'s cached TopK (skip-)transcoders stand in for their MLPs: held-out FVU of the
outputs and the error of their Jacobians; optionally fine-tune them to match the Jacobians too (an experiment).

Held out: the last ``--held-out`` windows of the bundled corpus (training takes the first ``--n-windows``), BOS
rows left out. FVU = Σ‖y − ŷ‖² / Σ‖y − ȳ‖² per layer. Jacobian error = ‖J_mlp v − J_tc v‖² / ‖J_mlp v‖² on random
directions v (a Hutchinson estimate of the relative ‖J_tc − J_mlp‖²_F): J_mlp v by forward-mode AD through the real
MLP, J_tc v = (v W_enc) on the active TopK features decoded, plus v W_skipᵀ.

With ``--finetune-steps N > 0`` each layer is trained further on the output FVU plus ``--jacobian-coef`` × the
Jacobian error (Olah 2025, "A toy model of mechanistic (un)faithfulness", transformer-circuits.pub, suggests
Jacobian matching so that transcoders implement the MLPs' mechanism, not only their outputs; Srinivas & Fleuret
2018 match Jacobians in distillation) and written under ``--to`` with the same cache names, so
``assay circuit ... --out-dir <to>`` loads them. Run (after `assay circuit ... --out-dir runs/circuit`):

    PYTHONPATH=. python benchmarks/circuit_transcoder_fidelity.py --from runs/circuit --all-layers --skip --k 32 \
        --steps 1200 --n-windows 2828 [--finetune-steps 150 --relative-lr 1e-2 --to runs/circuit_jac]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch


def _jacobian_vp(tc, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The TopK transcoder's Jacobian at ``x`` applied to ``v`` (active set fixed; differentiable in the weights)."""
    from assay.dictionaries.sparse import sparse_decode, topk_encode

    values, indices = topk_encode(x, tc.W_enc, tc.b_enc, tc.cfg.k)
    u = (v @ tc.W_enc).gather(1, indices) * (values > 0)
    out = sparse_decode(u, indices, tc.W_dec)
    return out + v @ tc.W_skip.t() if tc.cfg.skip else out


def _errors(tc, mlp, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output FVU, normalised Jacobian-vector error) of one layer's transcoder on rows ``x`` / ``y``, JVP rows v."""
    from assay.evaluate.reconstruction import fvu

    with torch.enable_grad():
        _, jv = torch.func.jvp(mlp, (x[: v.shape[0]],), (v,))
    jv_hat = _jacobian_vp(tc, x[: v.shape[0]], v)
    return fvu(y, tc.transcode(x)), (jv - jv_hat).square().sum() / jv.square().sum()


def main() -> None:
    from assay import corpora, hooks
    from assay.bench.circuit_real import CircuitSettings, _token_batches, cached_transcoders, llama_sites
    from assay.dictionaries.registry import save_sae
    from assay.models import load

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", type=Path, required=True)
    ap.add_argument("--to", type=Path, help="where fine-tuned transcoders go (with --finetune-steps > 0)")
    ap.add_argument("--all-layers", action="store_true")
    ap.add_argument("--layers", type=int, nargs="*", default=[3, 9, 15])
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--skip", action="store_true")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n-windows", type=int, default=256)
    ap.add_argument("--finetune-steps", type=int, default=0)
    ap.add_argument("--jacobian-rows", type=int, default=64)
    ap.add_argument("--jacobian-coef", type=float, default=1.0)
    ap.add_argument("--relative-lr", type=float, default=1e-3, help="Adam lr per tensor = this × the tensor's RMS")
    ap.add_argument("--held-out", type=int, default=16)
    a = ap.parse_args()
    if a.finetune_steps > 0 and a.to is None:
        raise SystemExit("--finetune-steps > 0 writes fine-tuned transcoders: give --to <run folder>")
    torch.manual_seed(0)
    loaded = load("smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    model.requires_grad_(False)
    layers = tuple(range(model.config.num_hidden_layers)) if a.all_layers else tuple(a.layers)
    s = CircuitSettings(layers=layers, d_sae=a.d_sae, k=a.k, skip=a.skip, steps=a.steps)
    all_windows = corpora.token_windows(tok, corpora.load_corpus("bundled"), 64).tokens
    windows, held = all_windows[: a.n_windows], all_windows[-a.held_out:]
    if a.n_windows + a.held_out > all_windows.shape[0]:
        raise SystemExit("training and held-out windows overlap")
    src = a.src / "transcoders"
    tcs = cached_transcoders(model, windows, s, src)  # loads them, or trains (and caches) the missing ones as assay circuit does
    mlps = {i: model.get_submodule(f"model.layers.{i}.mlp") for i in layers}
    sites = [x for i in layers for x in llama_sites(i)]

    def rows(tokens):
        with torch.no_grad(), hooks.capture(model, sites) as cap:
            model(tokens)
        return {i: tuple(cap[x][:, 1:].reshape(-1, cap[x].shape[-1]) for x in llama_sites(i)) for i in layers}

    held_rows = rows(held)
    g = torch.Generator().manual_seed(1)
    v_held = torch.randn(a.jacobian_rows, model.config.hidden_size, generator=g)

    def report(tag):
        with torch.no_grad():
            errs = {i: _errors(tcs[i], mlps[i], *held_rows[i], v_held) for i in layers}
        f = [float(e[0]) for e in errs.values()]
        j = [float(e[1]) for e in errs.values()]
        for i, fi, ji in zip(layers, f, j, strict=True):
            print(f"{tag}: layer {i:2d}: held-out FVU {fi:.3f}, Jacobian error {ji:.3f}")
        print(f"{tag}: held-out FVU mean {sum(f) / len(f):.3f}; Jacobian error mean {sum(j) / len(j):.3f} "
              f"(layers {layers[:3]}: {[round(x, 3) for x in j[:3]]}; min {min(j):.3f}, max {max(j):.3f})", flush=True)

    report("before")
    if a.finetune_steps == 0:
        return
    opts = {i: torch.optim.Adam([{"params": [p], "lr": a.relative_lr * float(p.detach().pow(2).mean().sqrt()) + 1e-8}
                                 for p in tcs[i].parameters() if p.requires_grad]) for i in layers}
    batches = _token_batches(windows, s)
    for step in range(a.finetune_steps):
        batch = rows(next(batches))
        for i in layers:
            x, y = batch[i]
            v = torch.randn(a.jacobian_rows, x.shape[-1], generator=g)
            rec, jac = _errors(tcs[i], mlps[i], x, y, v)
            opts[i].zero_grad(set_to_none=True)
            (rec + a.jacobian_coef * jac).backward()
            opts[i].step()
        if step % 25 == 0:
            print(f"step {step}: last layer rec {rec.item():.3f} jac {jac.item():.3f}", flush=True)
    report("after")
    dst = a.to / "transcoders"
    dst.mkdir(parents=True, exist_ok=True)
    kind = "-skip" if s.skip else ""
    for i in layers:  # the cache names cached_transcoders reads
        name = f"layer{i}-d{s.d_sae}-k{s.k}{kind}-steps{s.steps}-rows{s.rows}-seed{s.seed}-windows{a.n_windows}x64"
        if (dst / name).exists():
            shutil.rmtree(dst / name)
        save_sae(dst / name, tcs[i])
    print(f"wrote {len(layers)} fine-tuned transcoders under {dst}")


if __name__ == "__main__":
    main()
