"""Which transcoders break the SmolLM2 graph's prediction of early-feature ablations: hybrid models, measured.

`assay circuit --norms linearised --attention linearised` predicts each ablation by the live replacement model's
gradient (every MLP its transcoder plus its clean error; Ameisen et al. 2025, "Circuit Tracing", with the freezing
lifted); the real model's own gradient (attribution patching: Nanda 2023; Kramár et al. 2024) predicts them far
better (docs/circuits.md, "The transcoders' Jacobians, measured"). Between the two lie hybrids: transcoders (plus
clean errors) on some MLPs, the real MLPs on the rest, everything else live. Each hybrid's gradient of the demeaned
top logit at every MLP output, dotted with an ablated feature's removed write, is its first-order prediction; its
Pearson r against the real ablations (read from the run's report table) says how much of the gap those
transcoders cause. Transcoders on every MLP must give the graph's own predictions, on none the real model's
gradient: the script checks both against the table before it reports.

    PYTHONPATH=. python benchmarks/circuit_hybrid_gradients.py --from runs/circuit_lin --all-layers --skip --k 32 \
        --steps 1200 --n-windows 2828
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    from assay.bench.circuit_interventions import first_order, pearson, replacement_logits, spliced
    from assay.bench.circuit_real import CircuitSettings, cached_transcoders, llama_bases
    from assay.models import load

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", type=Path, required=True,
                    help="an `assay circuit` run folder (section.json and transcoders/)")
    ap.add_argument("--all-layers", action="store_true")
    ap.add_argument("--layers", type=int, nargs="*", default=[3, 9, 15])
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--skip", action="store_true")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n-windows", type=int, default=256)
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--boundaries", type=int, nargs="*", default=[3, 6, 10, 15, 20, 25])
    a = ap.parse_args()
    loaded = load("smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    model.requires_grad_(False)
    n_layers = model.config.num_hidden_layers
    layers = tuple(range(n_layers)) if a.all_layers else tuple(a.layers)
    if layers != tuple(range(n_layers)):
        raise SystemExit("the hybrids need a transcoder on every MLP: pass --all-layers")
    s = CircuitSettings(layers=layers, d_sae=a.d_sae, k=a.k, skip=a.skip, steps=a.steps)
    from assay import corpora

    windows = corpora.token_windows(tok, corpora.load_corpus("bundled"), 64).tokens[:a.n_windows]
    cached = a.src / "transcoders"
    if not cached.is_dir():
        raise SystemExit(f"no transcoders under {cached}: run assay circuit with --out-dir {a.src} first")
    tcs = cached_transcoders(model, windows, s, cached)
    bases = llama_bases(tcs)
    table = json.loads((a.src / "section.json").read_text())["tables"][0]
    col = {name: k for k, name in enumerate(table["columns"])}
    feats = []
    for row in table["rows"]:
        site, rest = row[0].split("@")
        pos, idx = (int(v) for v in rest.split("#"))
        feats.append((int(site.split(".")[2]), pos, idx))
    measured = torch.tensor([row[col["measured"]] for row in table["rows"]], dtype=torch.float64)
    graph_pred = torch.tensor([row[col["predicted"]] for row in table["rows"]], dtype=torch.float64)
    real_grad = torch.tensor([row[col["real model's first-order prediction, live"]] for row in table["rows"]],
                             dtype=torch.float64)
    tokens = torch.tensor(tok(a.prompt).input_ids)
    with torch.no_grad():
        logits = model(tokens[None]).logits[0, -1]
    token_id = int(logits.argmax())
    _, clean_errors = replacement_logits(model, tokens, bases, None)
    from assay import hooks

    with torch.no_grad(), hooks.capture(model, [b.input_site for b in bases]) as cap:
        model(tokens[None])
    writes = []
    for layer, pos, idx in feats:
        b = bases[layer]
        act = b.activation(b.pre(cap[b.input_site][0]))[pos, idx]
        writes.append(-act * b.W_dec[idx])

    sites = [b.output_site for b in bases]

    def predictions(transcoded: set[int]) -> torch.Tensor:
        """The hybrid's first-order prediction of each ablation: basis j's MLP replaced by its transcoder (live,
        plus its clean error) for j in ``transcoded``, the real MLP elsewhere."""
        chosen = sorted(transcoded)
        with spliced(model, [bases[j] for j in chosen], [clean_errors[j] for j in chosen]):
            grads = first_order(model, tokens, sites, token_id)
        return torch.tensor([float(w @ grads[sites[layer]][pos]) for w, (layer, pos, _) in
                             zip(writes, feats, strict=True)], dtype=torch.float64)

    early = torch.tensor([layer <= 2 for layer, _, _ in feats])
    every, none = predictions(set(range(n_layers))), predictions(set())
    print(f"check: transcoders everywhere vs the graph's prediction: max |diff| {float((every - graph_pred).abs().max()):.2e}"
          f" (largest {float(graph_pred.abs().max()):.2e}); none vs the real model's gradient: max |diff| "
          f"{float((none - real_grad).abs().max()):.2e}")

    def line(name, pred):
        print(f"{name:<34} r all {pearson(pred, measured):6.3f} | early (n {int(early.sum())}) "
              f"{pearson(pred[early], measured[early]):6.3f} | late {pearson(pred[~early], measured[~early]):6.3f}",
              flush=True)

    line("transcoders on every MLP", every)
    line("transcoders on none (real grad.)", none)
    for m in a.boundaries:
        line(f"transcoders on layers >= {m}", predictions(set(range(m, n_layers))))
        line(f"transcoders on layers < {m}", predictions(set(range(m))))


if __name__ == "__main__":
    main()
