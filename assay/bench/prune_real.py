"""The experiment behind ``assay prune``: prune a real model over sparsities and measure what it costs and saves.

Models: the digits MLP of the pruning spec (64→128→64→10 on scikit-learn's 8×8 digits, trained here in
seconds: :func:`assay.bench.pruning_worlds.digits_mlp`), the digits CNN of the classifier zoo
(:func:`assay.models.classifier_zoo.world_classifier`, signal–distractor digits), and SmolLM2-135M's MLP
neurons (a share of each block's ``mlp.down_proj`` inputs, removed with ``gate_proj``/``up_proj`` rows).

Per sparsity: *structured* removes that share of every hidden layer's units (group magnitude, Fang et
al. 2023, "DepGraph"; :func:`assay.pruning.structured.remove_units` — the model gets physically smaller);
*unstructured* masks that share of all Linear/Conv weights by global magnitude (Zhu & Gupta 2017) — the
dense kernels do the same work. Reported: accuracy (classifiers; before and after a short fine-tune) or
perplexity on the bundled corpus (SmolLM2), parameters (all, and non-zero), MACs of one example
(:func:`assay.evaluate.cost.count_macs`: linear and convolution layers; attention's matrix products are
not counted) and **measured** latency (:func:`assay.evaluate.cost.measure_latency`, the median after
warm-up) at each batch size. Blalock et al. 2020 ("What is the State of Neural Network Pruning?") ask for
exactly this: sparsity alone says nothing about speed.

Outputs in ``out_dir``: ``results.json``, ``plots/prune.svg``, the report section and, for unstructured
pruning, the masks of each sparsity (``masks/sparsity-S``, :func:`assay.pruning.masks.save_masks`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from assay.config import ConfigError, check_choice, to_dict

if TYPE_CHECKING:  # torch is imported inside the functions, so the command line starts fast
    import torch
    from torch import nn

__all__ = ["PruneRealConfig", "PruneRealResult", "prune_model", "run_prune"]

MODELS = ("digits_mlp", "digits_cnn", "smollm2")


@dataclass(frozen=True, kw_only=True)
class PruneRealConfig:
    """Prune one real model at several sparsities."""

    model: Literal["digits_mlp", "digits_cnn", "smollm2"] = "digits_mlp"
    """digits_mlp (64→128→64→10, trained here), digits_cnn (the classifier zoo's) or smollm2 (MLP neurons only)."""
    sparsities: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    """Shares to prune, each in [0, 1): of every hidden layer's units (structured) or of all weights."""
    mode: Literal["structured", "unstructured"] = "structured"
    """structured: remove whole neurons/channels physically; unstructured: mask single weights (classifiers only)."""
    importance: Literal["magnitude", "random"] = "magnitude"
    """Which units or weights go first: lowest group magnitude / |θ| (global), or random (the control)."""
    finetune_steps: int = 200
    """Adam steps fine-tuning each pruned classifier (0: none; SmolLM2 is never fine-tuned)."""
    train_steps: int = 1500
    """Steps training the digits MLP before pruning."""
    n_windows: int = 16
    """Windows of the bundled corpus for SmolLM2's perplexity."""
    context: int = 64
    """Tokens per perplexity window."""
    latency_batches: tuple[int, ...] = (1, 64)
    """Batch sizes at which latency is measured."""
    latency_runs: int | None = None
    """Timed calls per latency (median reported); None: 20 for classifiers, 3 for SmolLM2."""
    latency_warmup: int | None = None
    """Untimed calls before timing; None: 5 for classifiers, 1 for SmolLM2."""
    latency_tokens: int = 16
    """Sequence length of SmolLM2's latency inputs."""
    seed: int = 0
    """Seed of training, fine-tuning batches and inputs."""
    out_dir: Path = Path("runs/prune")
    """Where results.json, the plot and the report section go."""

    def __post_init__(self) -> None:
        from assay.pruning.masks import check_sparsity

        check_choice("model", self.model, MODELS)
        check_choice("mode", self.mode, ("structured", "unstructured"))
        check_choice("importance", self.importance, ("magnitude", "random"))
        if not self.sparsities:
            raise ConfigError("give at least one --sparsities")
        for s in self.sparsities:
            check_sparsity(s, "each of sparsities")
        if self.model == "smollm2" and self.mode != "structured":
            raise ConfigError("SmolLM2 is pruned structurally (MLP neurons) only; use --mode structured")
        if min(self.n_windows, self.context, self.train_steps, self.latency_tokens, *self.latency_batches) < 1 \
                or self.finetune_steps < 0:
            raise ConfigError("n_windows, context, train_steps, latency_tokens and latency_batches must be >= 1 and "
                              "finetune_steps >= 0")


class PruneRealResult(NamedTuple):
    """What :func:`run_prune` returns."""

    model: str
    """The model pruned."""
    rows: list[dict[str, Any]]
    """One row per sparsity: sparsity, quality metrics, params, nonzero_params, macs, latency_b{n} (seconds)."""
    plot: Path
    """The plot of quality and latency against sparsity."""


class _Subject(NamedTuple):
    model: nn.Module
    train: tuple[torch.Tensor, torch.Tensor] | None
    test: Any
    example: Any
    latency_input: Any


def _subject(cfg: PruneRealConfig, lm: Any) -> _Subject:
    import torch

    from assay.worlds.base import make_generator

    g = make_generator(cfg.seed + 3)
    if cfg.model == "digits_mlp":
        from assay.bench.pruning_worlds import digits_mlp

        d = digits_mlp(cfg.seed, steps=cfg.train_steps)
        return _Subject(d.model, d.train, d.test, d.test[0][:1], lambda b: torch.rand(b, 64, generator=g))
    if cfg.model == "digits_cnn":
        from dataclasses import replace

        from assay.models.classifier_zoo import world_classifier
        from assay.worlds.digits import SignalDistractorDigits

        wc = world_classifier("digits", seed=cfg.seed)
        tr = wc.world.sample(2000, generator=g)
        te = SignalDistractorDigits(replace(wc.world.config, split="test")).sample(1000, generator=g)
        return _Subject(wc.model, (tr.inputs, tr.targets), (te.inputs, te.targets), te.inputs[:1],
                        lambda b: torch.rand(b, *te.inputs.shape[1:], generator=g))
    from assay.corpora import load_corpus, token_windows
    from assay.models.offline import load

    lm = lm or load("smollm2-135m")
    windows = token_windows(lm.tokenizer, load_corpus("bundled"), cfg.context)
    if len(windows.tokens) < cfg.n_windows:
        raise ConfigError(f"the bundled corpus gives {len(windows.tokens)} windows of {cfg.context} tokens; "
                          f"ask for at most that many --n-windows")
    ids = windows.tokens[torch.randperm(len(windows.tokens), generator=g)[: cfg.n_windows]]
    vocab = lm.model.config.vocab_size
    return _Subject(lm.model, None, ids, ids[:1], lambda b: torch.randint(vocab, (b, cfg.latency_tokens), generator=g))


def _quality(model: nn.Module, subject: _Subject, lm: bool) -> dict[str, float]:
    if lm:
        import torch

        from assay.evaluate.intervention import perplexity

        with torch.no_grad():
            logits = torch.cat([model(input_ids=subject.test[i : i + 8]).logits
                                for i in range(0, len(subject.test), 8)])
        return {"perplexity": perplexity(logits, subject.test)}
    from assay.models.fit import accuracy

    return {"accuracy": accuracy(model, *subject.test)}


def prune_model(model: nn.Module, s: float, cfg: PruneRealConfig) -> tuple[nn.Module, dict[str, torch.Tensor] | None]:
    """The copy of ``model`` that ``assay prune`` measures at sparsity ``s`` (``cfg``'s mode, importance and
    seed; ``model`` is unchanged) and, when unstructured, its masks (for a fixed-mask fine-tune). Structured:
    ``s`` of every removable layer's units go (SmolLM2: of each block's gated-MLP neurons)."""
    import torch

    from assay.pruning.magnitude import magnitude_masks, prune_lowest
    from assay.pruning.masks import apply_masks, materialize, prunable_layers
    from assay.pruning.structured import dependency_groups, remove_units, structured_keep
    from assay.worlds.base import make_generator

    if s == 0:
        return copy.deepcopy(model), None
    g = make_generator(cfg.seed + 11)
    if cfg.mode == "structured":
        if cfg.importance == "magnitude":
            keep = structured_keep(model, s)
        else:
            scores = {n: torch.rand(gr.n_units, generator=g) for n, gr in dependency_groups(model).items()}
            keep = prune_lowest(scores, s, scope="layer")
        return remove_units(model, keep), None
    weights = {n: model.get_submodule(n).weight for n in prunable_layers(model)}
    if cfg.importance == "magnitude":
        masks = magnitude_masks(weights, s)
    else:
        masks = prune_lowest({n: torch.rand(w.shape, generator=g) for n, w in weights.items()}, s)
    return materialize(apply_masks(copy.deepcopy(model), masks)), masks


def run_prune(cfg: PruneRealConfig, lm: Any = None, *, log: Any = None) -> PruneRealResult:
    """Prune ``cfg.model`` at each sparsity, measure it, write results, plot and report section."""
    from assay.artifact import atomic_write_text
    from assay.bench.pruning_methods import finetune_masked
    from assay.bench.pruning_worlds import train_steps
    from assay.evaluate.cost import count_macs, count_parameters, measure_latency
    from assay.pruning.masks import save_masks
    from assay.worlds.base import make_generator

    say = log or (lambda m: None)
    is_lm = cfg.model == "smollm2"
    runs = cfg.latency_runs if cfg.latency_runs is not None else (3 if is_lm else 20)
    warmup = cfg.latency_warmup if cfg.latency_warmup is not None else (1 if is_lm else 5)
    subject = _subject(cfg, lm)
    out = Path(cfg.out_dir)
    rows = []
    for s in cfg.sparsities:
        pruned, masks = prune_model(subject.model, s, cfg)
        pruned.eval()
        row: dict[str, Any] = {"sparsity": s, **_quality(pruned, subject, is_lm)}
        if not is_lm and cfg.finetune_steps:  # the unpruned model too, so the comparison is fair
            g = make_generator(cfg.seed + 5)
            kw = {"steps": cfg.finetune_steps, "lr": 1e-3, "batch_size": 64, "generator": g}
            if masks is not None:
                tuned = finetune_masked(subject.model, masks, subject.train, "cross_entropy", **kw)
            else:
                tuned = copy.deepcopy(pruned)
                train_steps(tuned, subject.train, "cross_entropy", **kw)
            row["accuracy_finetuned"] = _quality(tuned, subject, False)["accuracy"]
        if masks is not None:  # the mask artifact (spec §8), for re-applying with assay.pruning.masks.load_masks
            save_masks(out / "masks" / f"sparsity-{s}", masks, meta={"model": cfg.model, "sparsity": s,
                                                                     "importance": cfg.importance})
        macs = count_macs(pruned, subject.example)
        row.update(params=count_parameters(pruned), nonzero_params=sum(int((p != 0).sum()) for p in pruned.parameters()),
                   macs=macs.macs, nonzero_macs=macs.nonzero_macs)
        for b in cfg.latency_batches:
            row[f"latency_b{b}"] = measure_latency(pruned, subject.latency_input(b), runs=runs, warmup=warmup)
        say(", ".join(f"{k} {v:.4g}" for k, v in row.items()))
        rows.append(row)
        del pruned
    plot = _plot(rows, cfg, out / "plots" / "prune.svg")
    atomic_write_text(out / "results.json", json.dumps({"config": to_dict(cfg), "rows": rows}, indent=1, default=str))
    _section(rows, cfg, plot, runs, warmup)
    return PruneRealResult(cfg.model, rows, plot)


def _plot(rows: list[dict[str, Any]], cfg: PruneRealConfig, path: Path) -> Path:
    from assay.report import new_figure, save_figure

    fig = new_figure(figsize=(9, 3.4))
    xs = [r["sparsity"] for r in rows]
    ax = fig.add_subplot(131)
    quality = "perplexity" if cfg.model == "smollm2" else "accuracy"
    ax.plot(xs, [r[quality] for r in rows], "o-", label="pruned")
    if any("accuracy_finetuned" in r for r in rows):
        ax.plot([r["sparsity"] for r in rows if "accuracy_finetuned" in r],
                [r["accuracy_finetuned"] for r in rows if "accuracy_finetuned" in r], "s--", label="fine-tuned")
        ax.legend(fontsize=8)
    ax.set(xlabel="sparsity", ylabel=quality, title=quality)
    if quality == "perplexity":
        ax.set_yscale("log")
    ax = fig.add_subplot(132)
    ax.plot(xs, [r["params"] for r in rows], "o-", label="parameters")
    ax.plot(xs, [r["nonzero_params"] for r in rows], "s--", label="non-zero parameters")
    ax.plot(xs, [r["nonzero_macs"] for r in rows], "^:", label="non-zero MACs / example")
    ax.set(xlabel="sparsity", title="size", yscale="log")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(133)
    for b in cfg.latency_batches:
        ax.plot(xs, [1e3 * r[f"latency_b{b}"] for r in rows], "o-", label=f"batch {b}")
    ax.set(xlabel="sparsity", ylabel="ms (median)", title="measured latency", yscale="log")
    ax.legend(fontsize=8)
    fig.suptitle(f"{cfg.model}, {cfg.mode} pruning by {cfg.importance}")
    fig.tight_layout()
    return save_figure(fig, path)


def _section(rows: list[dict[str, Any]], cfg: PruneRealConfig, plot: Path, runs: int, warmup: int) -> None:
    from assay.report import Plot, Section, Table, write_section

    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = Table(f"{cfg.model}: {cfg.mode} pruning by {cfg.importance}", cols,
                  [[f"{r[c]:.4g}" if isinstance(r.get(c), float) else r.get(c, "–") for c in cols] for r in rows])
    what = (f"the share of every hidden layer's units removed physically (by {cfg.importance} group importance)"
            if cfg.mode == "structured" else
            f"the share of all Linear/Conv weights masked (by {cfg.importance}, one global ranking; the dense kernels "
            "still run)")
    notes = [f"sparsity: {what}. latency_bN: median seconds of {runs} forward passes after {warmup} warm-up calls at "
             "batch N on this machine (compare within one run only).",
             "MACs count the linear and convolution layers for one example (attention's matrix products are not "
             "counted); nonzero_macs counts only non-zero weights, what a sparse kernel would pay."]
    if cfg.model == "smollm2":
        notes.append(f"Perplexity on {cfg.n_windows} windows of {cfg.context} tokens of the bundled corpus; "
                     f"latency inputs are {cfg.latency_tokens} random tokens per sequence.")
    elif cfg.finetune_steps:
        notes.append(f"accuracy_finetuned: after {cfg.finetune_steps} Adam steps (lr 1e-3, batch 64) with the "
                     "structure (or the mask) fixed; sparsity 0 is fine-tuned the same way, as the reference.")
    write_section(cfg.out_dir, Section(f"Pruning {cfg.model} ({cfg.mode}, {cfg.importance})", [table], [Plot("quality, size and latency", plot)],
                                       notes))
