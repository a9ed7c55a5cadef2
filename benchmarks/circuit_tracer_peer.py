"""Attribution graphs: assay vs circuit-tracer on SmolLM2-135M with the same per-layer transcoders.

Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language Models"; the peer is
the open-source ``circuit-tracer`` package (0.5.0, TransformerLens backend). Both libraries build the
unpruned graph of one prompt over a JumpReLU transcoder on every one of the 30 MLPs: assay's
``jumprelu_transcoder``s, written by :func:`assay.dictionaries.circuit_tracer_format.save_circuit_tracer` in
circuit-tracer's own file format and read back by circuit-tracer's ``load_transcoders``
(:func:`~assay.dictionaries.circuit_tracer_format.circuit_tracer_replacement`, which also says why
TransformerLens cannot load SmolLM2 by name). Same logit targets, same rows per backward pass. Each side runs in
its own fresh process, so its peak memory is its own. The driver then matches nodes (features by (layer,
position, index), error nodes by (layer, position), tokens, logits) and compares the adjacency matrices.
circuit-tracer zeroes every feature at position 0 (its BOS rule); the peer run sets ``zero_positions`` to an
empty slice so both graphs hold the same nodes.

The transcoders are at initialisation with each feature's threshold θ set to the (1 − L0/d_sae) quantile of its
pre-activation over corpus tokens (about ``--l0`` active features per token, as a trained one), unless ``--steps``
trains them first; the comparison is of the graph computation, which is the same whatever the weights.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/circuit_tracer_peer.py [--batch 64] [--l0 16]

Needs ``circuit-tracer==0.5.0`` (installed with ``--no-deps`` by ``make peers``). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "The capital of France is"


def _rss_gb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _transcoders(model, tok, args) -> dict:
    """A JumpReLU transcoder per MLP, θ calibrated to about ``args.l0`` active features per token."""
    from assay import corpora, hooks
    from assay.bench.circuit_real import llama_sites
    from assay.dictionaries.registry import build_sae

    d, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    windows = corpora.token_windows(tok, corpora.load_corpus("bundled"), 64).tokens[:32]
    sites = [llama_sites(i)[0] for i in range(n_layers)]
    with torch.no_grad(), hooks.capture(model, sites) as cap:
        model(windows)
    out = {}
    for i in range(n_layers):
        tc = build_sae("jumprelu_transcoder", d_in=d, d_out=d, d_sae=args.d_sae, seed=args.seed + i)
        x = cap[sites[i]][:, 1:].reshape(-1, d).float()  # BOS rows dropped, as in training
        pre = x @ tc.W_enc + tc.b_enc
        with torch.no_grad():
            tc.set_threshold(torch.quantile(pre, 1 - args.l0 / args.d_sae, dim=0).clamp(min=1e-3))
        out[i] = tc
    return out


def _bases(tcs: dict) -> list:
    from assay.bench.circuit_real import llama_sites
    from assay.circuits.learned import transcoder_basis

    return [transcoder_basis(tcs[i], layer=i, input_site=llama_sites(i)[0], output_site=llama_sites(i)[1])
            for i in sorted(tcs)]


def run_assay(model, ids, bases, args) -> dict:
    from assay.circuits.graph import GraphConfig, attribute

    cfg = GraphConfig(batch_size=args.batch, max_n_logits=args.max_n_logits)
    rss0 = _rss_gb("VmRSS")
    t = time.perf_counter()
    g = attribute(model, ids, bases, cfg, embed_site="model.embed_tokens", final_site="model.norm",
                  unembed=model.lm_head.weight)
    seconds = time.perf_counter() - t
    feats = g.features.clone()  # (basis = layer, position, feature)
    return {"adjacency": g.adjacency.float(), "features": feats, "logit_tokens": g.logit_tokens,
            "seconds": seconds, "rss_before_gb": rss0, "peak_gb": _rss_gb("VmHWM")}


def run_peer(model, tokenizer, ids, folder, logit_tokens, args) -> dict:
    from circuit_tracer import attribute

    from assay.dictionaries.circuit_tracer_format import circuit_tracer_replacement

    rss0 = _rss_gb("VmRSS")
    t0 = time.perf_counter()
    tl = circuit_tracer_replacement(model.config._name_or_path, folder, n_ctx=64, tokenizer=tokenizer)
    tl.zero_positions = slice(0, 0)  # keep position-0 features, as assay does
    build = time.perf_counter() - t0
    with torch.no_grad():
        diff = float((tl(ids[None])[0, -1] - model(ids[None]).logits[0, -1]).abs().max())
    t = time.perf_counter()
    g = attribute(ids, tl, attribution_targets=logit_tokens, batch_size=args.batch, verbose=False)
    seconds = time.perf_counter() - t
    return {"adjacency": g.adjacency_matrix.float(), "features": g.active_features.clone(),
            "logit_tokens": torch.tensor([t.vocab_idx for t in g.logit_targets]), "seconds": seconds, "build_seconds": build, "rss_before_gb": rss0,
            "peak_gb": _rss_gb("VmHWM"), "tl_vs_hf_logit_maxdiff": diff}


def side(args) -> None:
    """One library's graph, written to ``args.out`` (a torch file of tensors and numbers we made ourselves)."""
    from assay.models import load

    torch.set_num_threads(args.threads)
    loaded = load("smollm2-135m", attn_implementation="eager")
    model, tok = loaded.model, loaded.tokenizer
    args.tokenizer = tok
    ids = torch.tensor(tok(PROMPT).input_ids)
    if args.side == "assay":
        from assay.dictionaries.circuit_tracer_format import save_circuit_tracer

        tcs = _transcoders(model, tok, args)
        save_circuit_tracer(tcs, args.transcoders)
        res = run_assay(model, ids, _bases(tcs), args)
    else:
        logit_tokens = torch.load(args.logits, weights_only=True)
        res = run_peer(model, tok, ids, args.transcoders, logit_tokens, args)
    res["n_tokens"] = len(ids)
    torch.save(res, args.out)


def compare(a: dict, p: dict) -> dict:
    """Match the peer's nodes to assay's and compare the adjacency matrices."""
    fa, fp = a["features"], p["features"]
    key = {tuple(r): i for i, r in enumerate(fp.tolist())}
    missing = [tuple(r) for r in fa.tolist() if tuple(r) not in key]
    if missing or len(fa) != len(fp):
        return {"same_nodes": False, "n_features_assay": len(fa), "n_features_peer": len(fp),
                "missing_in_peer": len(missing)}
    n_f = len(fa)
    order = torch.tensor([key[tuple(r)] for r in fa.tolist()] + list(range(n_f, p["adjacency"].shape[0])))
    pa = p["adjacency"][order][:, order]
    aa = a["adjacency"]
    diff = (aa - pa).abs()
    scale = float(aa.abs().max())
    big = aa.abs() > 1e-3 * scale
    return {"same_nodes": True, "n_nodes": aa.shape[0], "n_features": n_f, "max_abs_diff": float(diff.max()),
            "max_abs_entry": scale, "max_rel_diff_over_max": float(diff.max()) / scale,
            "median_rel_diff_large_edges": float((diff[big] / aa.abs()[big]).median()),
            "pearson": float(torch.corrcoef(torch.stack([aa.flatten(), pa.flatten()]))[0, 1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="graph rows per backward pass, both libraries")
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--l0", type=int, default=16, help="active features per token the thresholds are set for")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-n-logits", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--side", choices=("assay", "peer"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--logits", help=argparse.SUPPRESS)
    ap.add_argument("--transcoders", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        side(args)
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        common = [sys.executable, __file__, "--batch", str(args.batch), "--d-sae", str(args.d_sae), "--l0", str(args.l0),
                  "--seed", str(args.seed), "--max-n-logits", str(args.max_n_logits),
                  "--threads", str(args.threads)]
        a_path, p_path, l_path = (os.path.join(tmp, n) for n in ("assay.pt", "peer.pt", "logits.pt"))
        common += ["--transcoders", os.path.join(tmp, "transcoders")]
        subprocess.run([*common, "--side", "assay", "--out", a_path], check=True)
        a = torch.load(a_path, weights_only=True)
        torch.save(a["logit_tokens"], l_path)
        subprocess.run([*common, "--side", "peer", "--out", p_path, "--logits", l_path], check=True)
        p = torch.load(p_path, weights_only=True)
    cmp = compare(a, p)
    print(f"prompt {PROMPT!r}: {a['n_tokens']} tokens, 30 JumpReLU transcoders (d_sae {args.d_sae}, "
          f"θ set for L0 ≈ {args.l0}), "
          f"batch {args.batch}, {args.threads} thread(s)")
    print(f"TransformerLens vs Hugging Face logits, max |diff|: {p['tl_vs_hf_logit_maxdiff']:.2e}")
    print(f"{'library':16s} {'graph s':>8s} {'peak GiB':>9s} {'RSS before':>10s}")
    for name, r in (("assay", a), ("circuit-tracer", p)):
        print(f"{name:16s} {r['seconds']:8.2f} {r['peak_gb']:9.2f} {r['rss_before_gb']:10.2f}")
    print(json.dumps(cmp))
    summary = {"speedup": p["seconds"] / a["seconds"], "peak_ratio": p["peak_gb"] / a["peak_gb"],
               "assay_seconds": a["seconds"], "peer_seconds": p["seconds"], "assay_peak_gb": a["peak_gb"],
               "peer_peak_gb": p["peak_gb"], "peer_build_seconds": p["build_seconds"],
               "tl_vs_hf_logit_maxdiff": p["tl_vs_hf_logit_maxdiff"], **cmp}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
