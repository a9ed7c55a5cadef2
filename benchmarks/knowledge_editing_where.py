"""Where can an edit of one MLP's output rewrite a fact of the knowledge-graph model? (subject vs relation token)

Diagnostic behind the ROME key position of the ``knowledge_editing`` phenomenon (Nishi et al. 2025,
"Representation Shattering in Transformers", ICML 2025, arXiv 2410.17194; ROME: Meng et al. 2022). For
the default tiny model of the cyclic knowledge graph (``--layers`` blocks, seed 0, cached under ``--out``)
and two facts rewritten to a counterfactual object, an unconstrained vector δ is added to the output of
block ℓ's MLP at the subject token or at the relation token and trained by Adam (lr 0.5, 100 steps) on
−log P(new object); prints the P(new object) reached and ‖δ‖ for every (ℓ, position). ROME assumes the
subject token works; a model that reads the subject's embedding through its first attention layer
leaves the subject-token δ powerless.

    flock /tmp/assay-bench.lock nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/knowledge_editing_where.py \\
        [--layers 2] [--out /tmp/assay-bench-kg/seed-0]
"""

from __future__ import annotations

import argparse

import torch

from assay.bench.phenomena.knowledge_editing import FULL, counterfactual_object, edit_request
from assay.hooks import patch
from assay.models.zoo import world_model
from assay.worlds.base import make_generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--out", default="/tmp/assay-bench-kg/seed-0", help="model cache folder")
    args = ap.parse_args()
    wm = world_model("knowledge_graph", world_overrides={"seed": 0}, seed=0, cache_dir=args.out, progress=False,
                     model_overrides={"n_layers": args.layers} if args.layers != 2 else None)
    model, world = wm.model, wm.world
    print(f"{args.layers} layers, fact accuracy {wm.metrics['fact_acc']:.3f}")
    g = make_generator(1)
    for e, r, d in ((5, 3, 2), (20, 14, 1)):
        req = edit_request(world, e, r, counterfactual_object(world, e, r, d), FULL, g)
        subject = req.tokens.shape[1] - 2
        for layer in range(args.layers):
            for where, pos in (("subject", subject), ("relation", subject + 1)):
                delta = torch.zeros(model.config.d_model, requires_grad=True)
                opt = torch.optim.Adam([delta], lr=0.5)

                def add(h: torch.Tensor, pos: int = pos, delta: torch.Tensor = delta) -> torch.Tensor:
                    h = h.clone()
                    h[:, pos] = h[:, pos] + delta
                    return h

                for _ in range(100):
                    with patch(model, {f"blocks.{layer}.mlp": add}):
                        logp = torch.log_softmax(model(req.tokens)[:, -1], -1)[:, req.target]
                    (delta.grad,) = torch.autograd.grad(-logp.mean(), [delta])
                    opt.step()
                print(f"fact ({e}, {world.relation_names[r]}) d={d}, block {layer} MLP, {where} token: "
                      f"P(new object) {logp.exp().mean().item():.2g}, |δ| {delta.norm().item():.1f}")


if __name__ == "__main__":
    main()
