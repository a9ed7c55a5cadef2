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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "The capital of France is"


def _rss_gb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _reset_peak() -> None:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux ``clear_refs`` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def _timed(fn, repeats: int):
    """Run ``fn`` ``repeats`` times; its last result, the median seconds and the peak RSS (GiB) while it ran."""
    _reset_peak()
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times), _rss_gb("VmHWM")


def prepare(args) -> None:
    """A JumpReLU transcoder per MLP, θ at the (1 − L0/d_sae) quantile of each feature's pre-activation over 32 corpus
    windows (BOS rows dropped), then moved ≥ 2·10⁻³ away from every pre-activation on the prompt, so that the
    ~3·10⁻⁵ difference between TransformerLens's and Hugging Face's forward cannot switch a feature on one side
    only. Saved as assay artifacts (``assay/layer{i}``) and in circuit-tracer's format (``circuit_tracer``)."""
    from assay import corpora, hooks
    from assay.bench.circuit_real import llama_sites
    from assay.dictionaries.circuit_tracer_format import save_circuit_tracer
    from assay.dictionaries.registry import build_sae, save_sae
    from assay.models import load

    loaded = load("smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    d, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    windows = corpora.token_windows(tok, corpora.load_corpus("bundled"), 64).tokens[:32]
    ids = torch.tensor(tok(PROMPT).input_ids)
    sites = [llama_sites(i)[0] for i in range(n_layers)]
    with torch.no_grad(), hooks.capture(model, sites) as cap:
        model(windows)
    with torch.no_grad(), hooks.capture(model, sites) as on_prompt:
        model(ids[None])
    out = {}
    for i in range(n_layers):
        tc = build_sae("jumprelu_transcoder", d_in=d, d_out=d, d_sae=args.d_sae, seed=args.seed + i)
        with torch.no_grad():
            pre = cap[sites[i]][:, 1:].reshape(-1, d).float() @ tc.W_enc + tc.b_enc
            theta = torch.quantile(pre, 1 - args.l0 / args.d_sae, dim=0).clamp(min=1e-3)
            pre_prompt = on_prompt[sites[i]][0].float() @ tc.W_enc + tc.b_enc
            for _ in range(10):
                near = ((pre_prompt - theta).abs() < 2e-3).any(0)
                if not near.any():
                    break
                theta = torch.where(near, theta + 4e-3, theta)
            tc.set_threshold(theta)
        out[i] = tc
        save_sae(Path(args.work) / "assay" / f"layer{i}", tc)
    save_circuit_tracer(out, Path(args.work) / "circuit_tracer")
    with torch.no_grad():
        torch.save({"ids": ids, "logits": model(ids[None]).logits[0, -1]}, Path(args.work) / "prompt.pt")
    (Path(args.work) / "model_dir").write_text(model.config._name_or_path)  # the converted safetensors folder


def run_assay(args) -> dict:
    from assay.bench.circuit_real import llama_sites
    from assay.circuits.graph import GraphConfig, attribute
    from assay.circuits.learned import transcoder_basis
    from assay.dictionaries.registry import load_sae
    from assay.models import load

    model = load("smollm2-135m").model
    ids = torch.load(Path(args.work) / "prompt.pt", weights_only=True)["ids"]
    n_layers = model.config.num_hidden_layers
    bases = [transcoder_basis(load_sae(Path(args.work) / "assay" / f"layer{i}"), layer=i,
                              input_site=llama_sites(i)[0], output_site=llama_sites(i)[1]) for i in range(n_layers)]
    cfg = GraphConfig(batch_size=args.batch, max_n_logits=args.max_n_logits)
    rss0 = _rss_gb("VmRSS")
    g, seconds, peak = _timed(lambda: attribute(model, ids, bases, cfg, embed_site="model.embed_tokens",
                                                final_site="model.norm", unembed=model.lm_head.weight), args.repeats)
    return {"adjacency": g.adjacency.float(), "features": g.features.clone(), "logit_tokens": g.logit_tokens,
            "seconds": seconds, "rss_before_gb": rss0, "peak_gb": peak}


def run_peer(args) -> dict:
    from circuit_tracer import attribute
    from transformers import AutoTokenizer

    from assay.dictionaries.circuit_tracer_format import circuit_tracer_replacement
    folder = (Path(args.work) / "model_dir").read_text()
    prompt = torch.load(Path(args.work) / "prompt.pt", weights_only=True)
    logit_tokens = torch.load(Path(args.work) / "logit_tokens.pt", weights_only=True)
    t0 = time.perf_counter()
    tl = circuit_tracer_replacement(folder, Path(args.work) / "circuit_tracer", n_ctx=64,
                                    tokenizer=AutoTokenizer.from_pretrained(folder))
    tl.zero_positions = slice(0, 0)  # keep position-0 features, as assay does
    build = time.perf_counter() - t0
    with torch.no_grad():
        diff = float((tl(prompt["ids"][None])[0, -1] - prompt["logits"]).abs().max())
    rss0 = _rss_gb("VmRSS")
    g, seconds, peak = _timed(lambda: attribute(prompt["ids"], tl, attribution_targets=logit_tokens,
                                                batch_size=args.batch, verbose=False), args.repeats)
    return {"adjacency": g.adjacency_matrix.float(), "features": g.active_features.clone(),
            "seconds": seconds, "build_seconds": build, "rss_before_gb": rss0, "peak_gb": peak,
            "tl_vs_hf_logit_maxdiff": diff}


def side(args) -> None:
    """One step in its own process; results go to ``args.out`` (a torch file of tensors and numbers we made)."""
    torch.set_num_threads(args.threads)
    if args.side == "prepare":
        prepare(args)
        return
    res = run_assay(args) if args.side == "assay" else run_peer(args)
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
    ap.add_argument("--repeats", type=int, default=3, help="graphs per process (median time)")
    ap.add_argument("--rounds", type=int, default=2, help="processes per library, alternating (median over rounds)")
    ap.add_argument("--side", choices=("prepare", "assay", "peer"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        side(args)
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory() as work:
        common = [sys.executable, __file__, "--batch", str(args.batch), "--d-sae", str(args.d_sae), "--l0", str(args.l0),
                  "--seed", str(args.seed), "--max-n-logits", str(args.max_n_logits), "--threads", str(args.threads),
                  "--repeats", str(args.repeats), "--work", work]
        subprocess.run([*common, "--side", "prepare"], check=True)
        runs: dict[str, list[dict]] = {"assay": [], "peer": []}
        for r in range(args.rounds):
            for name in ("assay", "peer"):
                out = os.path.join(work, f"{name}{r}.pt")
                subprocess.run([*common, "--side", name, "--out", out], check=True)
                runs[name].append(torch.load(out, weights_only=True))
                if name == "assay" and r == 0:
                    torch.save(runs["assay"][0]["logit_tokens"], os.path.join(work, "logit_tokens.pt"))
    a, p = runs["assay"][0], runs["peer"][0]
    cmp = compare(a, p)
    sec = {n: statistics.median(r["seconds"] for r in rs) for n, rs in runs.items()}
    peak = {n: statistics.median(r["peak_gb"] for r in rs) for n, rs in runs.items()}
    print(f"prompt {PROMPT!r}, 30 JumpReLU transcoders (d_sae {args.d_sae}, θ for L0 ≈ {args.l0}), batch {args.batch}, "
          f"{args.threads} thread(s); median of {args.repeats} graphs × {args.rounds} alternating processes per library")
    print(f"TransformerLens vs Hugging Face logits, max |diff|: {p['tl_vs_hf_logit_maxdiff']:.2e}")
    print(f"{'library':16s} {'graph s':>8s} {'per round':>18s} {'peak GiB':>9s} {'RSS before':>10s}")
    for name, label in (("assay", "assay"), ("peer", "circuit-tracer")):
        per = " ".join(f"{r['seconds']:.2f}" for r in runs[name])
        print(f"{label:16s} {sec[name]:8.2f} {per:>18s} {peak[name]:9.2f} {runs[name][0]['rss_before_gb']:10.2f}")
    print(json.dumps(cmp))
    summary = {"speedup": sec["peer"] / sec["assay"], "peak_ratio": peak["peer"] / peak["assay"],
               "assay_seconds": sec["assay"], "peer_seconds": sec["peer"], "assay_peak_gb": peak["assay"],
               "peer_peak_gb": peak["peer"], "peer_build_seconds": p["build_seconds"],
               "tl_vs_hf_logit_maxdiff": p["tl_vs_hf_logit_maxdiff"], **cmp}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
