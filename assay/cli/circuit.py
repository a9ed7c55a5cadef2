"""``assay circuit``: the attribution graph of a prompt on a real Llama-style model (default SmolLM2-135M) over
TopK transcoders trained by assay (config: :class:`CircuitCommand`; the experiment is
:func:`assay.bench.circuit_real.run_real_circuit`, after Ameisen et al. 2025, "Circuit Tracing").

Writes ``graph.json`` (circuit-tracer graph JSON of the pruned graph), ``section.json`` + ``report.html`` (the
interactive graph view, the feature-ablation table) and caches the transcoders under ``--out-dir/transcoders``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from assay.cli import command

__all__ = ["CircuitCommand", "register", "run"]


@dataclass(frozen=True, kw_only=True)
class CircuitCommand:
    """Train (or load) transcoders on a model's MLPs, build, prune and export the prompt's attribution graph and
    check it with feature ablations."""

    model: str = "smollm2-135m"
    """Offline model name or local Hugging Face folder (a Llama-style decoder)."""
    prompt: str = "The capital of France is"
    """The prompt to explain (its next-token logits are the graph's targets)."""
    layers: tuple[int, ...] = (3, 9, 15)
    """MLP layers that get a transcoder (increasing); the other MLPs are error nodes."""
    all_layers: bool = False
    """A transcoder on every MLP (overrides --layers); all train together, one forward pass per step."""
    d_sae: int = 1024
    """Features per transcoder."""
    k: int = 16
    """Active features per token (TopK)."""
    skip: bool = False
    """Skip-transcoders: each adds a linear map of its MLP input (a linear path through the MLP in the graph)."""
    steps: int = 300
    """Training steps (one forward pass each feeds every transcoder)."""
    rows: int = 256
    """Activation rows (token positions) per training step."""
    n_windows: int = 256
    """Training windows of the bundled corpus."""
    window: int = 64
    """Tokens per training window."""
    graph_batch: int = 32
    """Graph rows per backward pass (the memory knob)."""
    memory_gb: float = 4.0
    """Memory budget of the graph in GiB (what computing and pruning it may add to the process beyond the loaded
    model and transcoders, estimated up front); a longer prompt than it fits is refused, saying how long one fits."""
    n_ablate: int = 12
    """Feature ablations that check the graph."""
    n_constrained: int = 100
    """Features doubled in constrained interventions (the ablated ones, then randomly drawn others), which must move
    every target by exactly the graph's edges."""
    ablate_first: bool = False
    """Also ablate features at position 0 (the BOS, whose activations the transcoders were not trained on)."""
    ablate_fraction: float = 1.0
    """Remove this fraction of each ablated feature (small: a derivative test); changes are divided by it."""
    norms: str = "frozen"
    """RMSNorms in the graph: frozen (circuit-tracer's local replacement) or linearised (their own Jacobians)."""
    attention: str = "frozen"
    """Attention in the graph: frozen patterns (circuit-tracer's local replacement) or linearised (its own Jacobian)."""
    float64: bool = False
    """Graph, interventions and checks in float64 (the transcoders still train in float32)."""
    seed: int = 0
    """Seeds the transcoders and their training windows."""
    out_dir: Path = Path("runs/circuit")
    """Output folder (graph.json, section.json, report.html, transcoders/)."""

    def settings(self) -> Any:
        """The experiment's settings (validated)."""
        from assay.bench.circuit_real import CircuitSettings

        return CircuitSettings(layers=() if self.all_layers else self.layers, d_sae=self.d_sae, k=self.k, skip=self.skip,
                               steps=self.steps, rows=self.rows, seed=self.seed, graph_batch=self.graph_batch,
                               memory_gb=self.memory_gb, n_ablate=self.n_ablate,
                               n_constrained=self.n_constrained, ablate_first=self.ablate_first,
                               ablate_fraction=self.ablate_fraction, norms=self.norms, attention=self.attention,
                               float64=self.float64, progress=True)

    def __post_init__(self) -> None:
        self.settings()


def run(cfg: CircuitCommand) -> Any:
    """Run the experiment and print its scores."""
    from assay.bench.circuit_real import run_real_circuit

    res = run_real_circuit(cfg.model, cfg.prompt, cfg.settings(), cfg.out_dir, n_windows=cfg.n_windows,
                           window=cfg.window)
    c = res.constrained
    typer.echo(f"{res.graph.n_features} features; replacement {res.replacement:.3f}, completeness "
               f"{res.completeness:.3f}; constrained interventions: largest |measured − edge| "
               f"{float((c.measured - c.predicted).abs().max()):.1e} (largest edge {float(c.predicted.abs().max()):.1e}); ablations: predicted vs measured r = {res.correlation:.3f} "
               f"(other MLPs held: {res.correlation_frozen:.3f}; live replacement model: "
               f"{res.correlation_replacement:.3f}; attention frozen: {res.correlation_frozen_attention:.3f}; "
               f"attention and norms frozen: {res.correlation_frozen_norms:.3f}); the real model's own first-order "
               f"prediction vs measured: {res.correlation_first_order:.3f}; "
               f"wrote {cfg.out_dir / 'graph.json'} and {cfg.out_dir / 'report.html'}")
    return res


def register(app: typer.Typer) -> None:
    command(app, "circuit", CircuitCommand, run)
