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

``--finetune``: accuracy after the same fine-tuning instead. The trained digits CNN of the classifier zoo
(``world_classifier("digits", seed=0)``: SmallCNN (16, 32, 64) with BatchNorm on the signal–distractor
composites of the 8×8 digits) is pruned by both at each of ``--ratios`` (0.25 and 0.5 keep the same
counts under both rounding rules, ⌊n(1 − p)⌋ and n − round(p·n), on widths 16/32/64); each pruned model is
fine-tuned ``--steps`` Adam steps (lr 1e-3, batch 64, the same 2,000 training composites) with batches
drawn from ``make_generator(seed)`` for each of ``--seeds`` seeds — the same data order for both — and
tested on 1,000 held-out composites. Reported per ratio: widths, parameters, output shapes, accuracy before
fine-tuning, and after it the mean with its 95% t-interval over seeds (``assay.stats.t_interval``) for
each and for the paired difference. Last line: JSON.

    make bench-peers && .venv/bin/python benchmarks/pruning_structured.py [--ratio 0.25] [--reps 20]
    .venv/bin/python benchmarks/pruning_structured.py --finetune [--ratios 0.25,0.5] [--seeds 3] [--steps 100]
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


def _arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


RATIO = float(_arg("--ratio", "0.25"))
REPS = int(_arg("--reps", "20"))


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


def run_assay(model: SmallCNN, ratio: float = RATIO) -> torch.nn.Module:
    return remove_units(model, structured_keep(model, ratio))


def run_tp(model: SmallCNN, example: torch.Tensor, ratio: float = RATIO) -> torch.nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model)  # Torch-Pruning edits in place; assay copies inside remove_units
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2, bias=True),
                                       pruning_ratio=ratio, ignored_layers=[model.fc])
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


def _interval(values: list[float]) -> list[float]:
    from assay.stats import t_interval

    m = t_interval(values)
    return [round(m.mean, 4), round(m.low, 4), round(m.high, 4)]


def main_finetune() -> None:
    """Accuracy of both pruned digits CNNs before and after the same fine-tuning (module docstring)."""
    from dataclasses import replace

    import torch_pruning as tp

    from assay.bench.pruning_worlds import train_steps
    from assay.models.classifier_zoo import world_classifier
    from assay.models.fit import accuracy
    from assay.worlds.base import make_generator
    from assay.worlds.digits import SignalDistractorDigits

    ratios = [float(r) for r in _arg("--ratios", "0.25,0.5").split(",")]
    seeds = range(int(_arg("--seeds", "3")))
    steps = int(_arg("--steps", "100"))
    wc = world_classifier("digits", seed=0)
    g = make_generator(3)
    tr = wc.world.sample(2000, generator=g)
    te = SignalDistractorDigits(replace(wc.world.config, split="test")).sample(1000, generator=g)
    model = wc.model.eval()
    result = {"torch_pruning_version": tp.__version__, "steps": steps, "seeds": len(seeds),
              "params_dense": n_params(model), "accuracy_dense": accuracy(model, te.inputs, te.targets), "rows": []}
    for ratio in ratios:
        pruned = {"assay": run_assay(model, ratio), "torch_pruning": run_tp(model, te.inputs[:1], ratio)}
        row = {"ratio": ratio}
        for name, m in pruned.items():
            m.eval()
            with torch.no_grad():
                shape = list(m(te.inputs[:64]).shape)
            row[name] = {"widths": [m.get_submodule(f"conv{i}").out_channels for i in range(model.n_stages)],
                         "params": n_params(m), "output_shape": shape,
                         "accuracy": accuracy(m, te.inputs, te.targets), "finetuned": []}
            for seed in seeds:
                tuned = copy.deepcopy(m)
                train_steps(tuned, (tr.inputs, tr.targets), "cross_entropy", steps=steps, lr=1e-3, batch_size=64,
                            generator=make_generator(seed))
                row[name]["finetuned"].append(accuracy(tuned, te.inputs, te.targets))
            row[name]["finetuned_ci"] = _interval(row[name]["finetuned"])
        diff = [a - b for a, b in zip(row["assay"]["finetuned"], row["torch_pruning"]["finetuned"])]
        row["difference_ci"] = _interval(diff)
        result["rows"].append(row)
        print(json.dumps(row))
    print(json.dumps(result))


if __name__ == "__main__":
    main_finetune() if "--finetune" in sys.argv else main()
