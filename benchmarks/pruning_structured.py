"""Structured channel pruning of assay vs Torch-Pruning (same run): shapes, parameters, outputs, time.

Peer: Torch-Pruning (Fang, Ma, Song, Mi, Wang 2023, "DepGraph: Towards Any Structural Pruning"),
``tp.pruner.MagnitudePruner`` with ``tp.importance.MagnitudeImportance(p=2, bias=True)`` (squared L2
group magnitude including biases, mean over the group — the same ranking as assay's summed group
magnitude) at channel ratio ``--ratio`` on every conv layer, the classifier ``fc`` ignored. assay:
``structured_keep(model, ratio)`` + ``remove_units(model, keep)``. Model: the classifier-zoo
``SmallCNN(3, 10, channels=(16, 32, 64), image_size=32, batch_norm=True)`` with seeded weights and
random BatchNorm statistics, in eval mode.

Checked: both pruned models have the same output shape, the same parameter count and (since the
rankings agree) the same outputs. Timed: Torch-Pruning's dependency-graph construction + removal
(pruner constructor + ``step()``) vs assay's group lookup + scores + removal, each on a fresh copy,
round-robin ``--reps`` times after a warm-up; medians. Last line: JSON with the ratio.

    make bench-peers && .venv/bin/python benchmarks/pruning_structured.py [--ratio 0.25] [--reps 20]
"""

import copy
import json
import statistics
import sys
import time

import torch

from assay.models.cnn import SmallCNN
from assay.pruning.structured import remove_units, structured_keep

torch.set_num_threads(2)
RATIO = float(sys.argv[sys.argv.index("--ratio") + 1]) if "--ratio" in sys.argv else 0.25
REPS = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 20


def build() -> SmallCNN:
    g = torch.Generator().manual_seed(0)
    model = SmallCNN(3, 10, channels=(16, 32, 64), image_size=32, batch_norm=True, generator=g)
    with torch.no_grad():
        for i in range(model.n_stages):
            bn = getattr(model, f"bn{i}")
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.weight.copy_(torch.randn(bn.num_features, generator=g))
            bn.bias.copy_(torch.randn(bn.num_features, generator=g))
    return model.eval()


def run_assay(model: SmallCNN) -> torch.nn.Module:
    return remove_units(model, structured_keep(model, RATIO))


def run_tp(model: SmallCNN, example: torch.Tensor) -> torch.nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model)  # Torch-Pruning edits in place; assay copies inside remove_units
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2, bias=True),
                                       pruning_ratio=RATIO, ignored_layers=[model.fc])
    pruner.step()
    return model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    import torch_pruning as tp

    model = build()
    example = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ours, theirs = run_assay(model), run_tp(model, example)
    with torch.no_grad():
        ya, yt = ours(x), theirs(x)
    widths = {"assay": [ours.get_submodule(f"conv{i}").out_channels for i in range(model.n_stages)],
              "torch_pruning": [theirs.get_submodule(f"conv{i}").out_channels for i in range(model.n_stages)]}
    fns = {"assay": lambda: run_assay(model), "torch_pruning": lambda: run_tp(model, example)}
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(REPS):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "ratio": RATIO, "torch_pruning_version": tp.__version__, "params_dense": n_params(model),
        "params_assay": n_params(ours), "params_torch_pruning": n_params(theirs), "widths": widths,
        "output_shape_assay": list(ya.shape), "output_shape_torch_pruning": list(yt.shape),
        "max_output_difference": float((ya - yt).abs().max()) if ya.shape == yt.shape else None,
        "assay_ms": round(1e3 * med["assay"], 3), "torch_pruning_ms": round(1e3 * med["torch_pruning"], 3),
        "speedup_vs_torch_pruning": round(med["torch_pruning"] / med["assay"], 2),
    }
    for k, v in result.items():
        print(f"{k:28s} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
