"""``assay circuit``'s up-front memory estimate against the measured peak of the graph, per prompt length, on SmolLM2-135M.

Attribution graphs after Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in Language Models";
the estimate is :func:`assay.bench.circuit_real.prompt_memory` (:mod:`assay.circuits.graph.memory`). Each
measurement runs in its own process on one thread: SmolLM2 loaded and run once on the prompt (its weights paged in),
random-init TopK transcoders (d_sae 1024, k 16: the graph's cost does not depend on training) on the chosen MLPs,
then the graph stage of ``assay circuit`` (:func:`graph_stage`: the graph, its scores, its pruned JSON). Measured:
the growth of the process's peak resident memory over the stage (``VmHWM`` after a reset, minus ``VmRSS`` before)
against the estimate's ``resident``, and the most bytes of tensors alive at once (torch's allocator events,
:func:`live_peak`) against its ``live``.

    PYTHONPATH=. flock /tmp/assay-bench.lock nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python \\
        benchmarks/circuit_memory.py [--lengths 6 16 32 64] [--batches 8 32] [--all-layers-lengths 6 16]

The last line is JSON (one record per measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def live_peak(fn) -> int:
    """Most bytes of tensors alive at once while ``fn`` runs (torch's CPU allocator events: no allocator slack)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak


def graph_stage(model, prompt: torch.Tensor, bases, settings, **sites):
    """What ``assay circuit`` does with a prompt before its interventions: the graph, its scores, its pruned JSON.
    ``sites``: the replacement model's ``embed_site`` / ``final_site``. Returns the graph."""
    from assay.circuits.graph import GraphConfig, attribute, graph_json, graph_scores

    g = attribute(model, prompt, bases, GraphConfig(batch_size=settings.graph_batch, max_n_logits=settings.max_n_logits),
                  unembed=model.lm_head.weight, norms=settings.norms, attention=settings.attention, **sites)
    n = g.adjacency.shape[0]
    errors, tokens = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    errors[g.slices()[1]] = True
    tokens[g.slices()[2]] = True
    graph_scores(g.adjacency, g.logit_weights(), errors, tokens)
    graph_json(g, slug="memory", prompt_tokens=[str(int(t)) for t in prompt], node_threshold=settings.node_threshold,
               edge_threshold=settings.edge_threshold)
    return g


def _status(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(args) -> dict:
    """One measurement (in its own process)."""
    import gc

    from assay import corpora
    from assay.bench.circuit_real import CircuitSettings, llama_sites, prompt_memory
    from assay.circuits.graph.memory import HEAP
    from assay.circuits.learned import transcoder_basis
    from assay.dictionaries.registry import build_sae
    from assay.models import load

    torch.set_num_threads(1)
    loaded = load("smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    n_layers, d = model.config.num_hidden_layers, model.config.hidden_size
    layers = tuple(range(n_layers)) if args.all_layers else (3, 9, 15)
    s = CircuitSettings(layers=layers, graph_batch=args.batch)
    prompt = corpora.token_windows(tok, corpora.load_corpus("bundled"), args.tokens).tokens[0]
    bases = [transcoder_basis(build_sae("topk_transcoder", d_in=d, d_out=d, d_sae=s.d_sae, k=s.k, seed=s.seed + i),
                              layer=i, input_site=llama_sites(i)[0], output_site=llama_sites(i)[1]) for i in layers]
    with torch.no_grad():
        model(prompt[None])
    gc.collect()
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    g = graph_stage(model, prompt, bases, s, embed_site="model.embed_tokens", final_site="model.norm")
    seconds = time.perf_counter() - t0
    resident = _status("VmHWM") - before
    est = prompt_memory(model, args.tokens, s).need_gb * 2**30
    out = {"tokens": args.tokens, "graph_batch": args.batch, "transcoders": len(layers), "n_features": g.n_features,
           "n_nodes": g.adjacency.shape[0], "seconds": seconds, "resident": resident, "resident_estimate": est}
    del g
    gc.collect()
    if args.live:
        out["live"] = live_peak(lambda: graph_stage(model, prompt, bases, s, embed_site="model.embed_tokens",
                                                    final_site="model.norm"))
        out["live_estimate"] = est / HEAP
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="*", default=[6, 16, 32, 64], help="prompt lengths, MLPs 3, 9, 15")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32], help="graph_batch values")
    ap.add_argument("--all-layers-lengths", type=int, nargs="*", default=[6, 16],
                    help="prompt lengths with a transcoder on all 30 MLPs (graph_batch 32)")
    ap.add_argument("--no-live", dest="live", action="store_false", help="skip the live-tensor measurement")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--all-layers", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args)))
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    runs = [(t, b, False) for t in args.lengths for b in args.batches] + [(t, 32, True) for t in args.all_layers_lengths]
    gib = 2**30
    print(f"{'tokens':>6s} {'batch':>5s} {'MLPs':>4s} {'nodes':>6s} {'est GiB':>8s} {'RSS GiB':>8s} {'est/RSS':>7s} "
          f"{'live est':>8s} {'live':>8s} {'est/live':>8s} {'graph s':>7s}", flush=True)
    records = []
    for t, b, all_layers in runs:
        cmd = [sys.executable, __file__, "--one", "--tokens", str(t), "--batch", str(b)] + \
            (["--all-layers"] if all_layers else []) + ([] if args.live else ["--no-live"])
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        records.append(r)
        live = (f"{r['live_estimate'] / gib:8.3f} {r['live'] / gib:8.3f} {r['live_estimate'] / r['live']:8.2f}"
                if "live" in r else f"{'':8s} {'':8s} {'':8s}")
        print(f"{t:6d} {b:5d} {r['transcoders']:4d} {r['n_nodes']:6d} {r['resident_estimate'] / gib:8.3f} "
              f"{r['resident'] / gib:8.3f} {r['resident_estimate'] / r['resident']:7.2f} {live} {r['seconds']:7.1f}",
              flush=True)
    print(json.dumps(records))


if __name__ == "__main__":
    main()
