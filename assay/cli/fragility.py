"""``assay fragility``: the SAE-fragility bench family on one world (config: :class:`FragilityCommand`).

The runs of ``assay bench --family sae-fragility`` (:mod:`assay.bench.sae_fragility`: PGD, token replacement
and the paper's suffix append, each against a random control) built from the flags below, cached and
resumable under ``--out-dir`` (default ``runs/fragility``): ``results.csv``, ``summary.csv``,
``plots/latent_change.svg`` and the report section (``section.json`` + ``report.html``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer

from assay.cli import command
from assay.config import ConfigError

__all__ = ["FragilityCommand", "register", "run"]


@dataclass(frozen=True, kw_only=True)
class FragilityCommand:
    """Attack an SAE trained on a tiny world model: how often a small input change rewrites its code."""

    world: Literal["dyck", "expr", "english"] = "dyck"
    """Sequence world whose tiny transformer (model zoo) and SAE are attacked."""
    site: str = "blocks.0"
    """Model site the SAE reads (embed, blocks.0, blocks.1, …)."""
    sae: Literal["relu", "topk", "batchtopk", "jumprelu", "matryoshka", "mp"] = "topk"
    """SAE architecture."""
    objective: Literal["activate", "deactivate", "untargeted"] = "activate"
    """Switch on a common latent that is off, switch off the strongest, or replace half the active set."""
    modes: tuple[Literal["pgd", "replace", "suffix"], ...] = ("pgd", "replace", "suffix")
    """Attacks to run (suffix runs once per --inits)."""
    inits: tuple[Literal["greedy", "random"], ...] = ("greedy", "random")
    """Suffix initialisations: the model's greedy continuation and/or random tokens."""
    suffix_length: int = 4
    """Tokens appended by the suffix attack."""
    iters: int = 10
    """Search iterations of the token attacks (replace, suffix)."""
    eps: float = 0.5
    """PGD radius as a fraction of the median embedding norm."""
    seeds: tuple[int, ...] = (0,)
    """Seeds (each trains the world model and SAE and draws the prompts)."""
    model_steps: int = 600
    """World-model training steps."""
    sae_steps: int = 400
    """SAE training steps."""
    n_prompts: int = 64
    """Prompts attacked per run."""
    out_dir: Path = Path("runs/fragility")
    """Output folder (cache/, results and summary tables, plots/, section.json, report.html)."""

    def __post_init__(self) -> None:
        from assay.bench.sae_fragility import FAMILY

        if not self.seeds or not self.modes:
            raise ConfigError("give at least one --seeds and one --modes")
        for spec in self.method_specs:
            FAMILY.expand(spec)
        self.settings()

    @property
    def world_spec(self) -> str:
        """The bench world spec."""
        return f"{self.world}:site={self.site},sae={self.sae}"

    @property
    def method_specs(self) -> tuple[str, ...]:
        """The bench method specs of the chosen modes."""
        specs = {"pgd": f"pgd:objective={self.objective},eps={self.eps}",
                 "replace": f"replace:objective={self.objective},iters={self.iters}",
                 "suffix": f"suffix:objective={self.objective},iters={self.iters},length={self.suffix_length},"
                           f"init={'|'.join(self.inits)}"}
        return tuple(specs[m] for m in dict.fromkeys(self.modes))

    @property
    def options(self) -> tuple[str, ...]:
        """The family's settings as ``assay bench --options``."""
        return (f"model_steps={self.model_steps}", f"sae_steps={self.sae_steps}", f"n_prompts={self.n_prompts}")

    def settings(self) -> Any:
        """The family's settings dataclass (validated)."""
        from assay.bench.runner import parse_options
        from assay.bench.sae_fragility import FAMILY

        return parse_options(FAMILY, self.options)


def run(cfg: FragilityCommand) -> Any:
    """Run the family through the bench runner and print its summary table."""
    from assay.cli.bench import run_family_command

    return run_family_command("sae-fragility", worlds=(cfg.world_spec,), methods=cfg.method_specs, seeds=cfg.seeds,
                              options=cfg.options, out_dir=cfg.out_dir)


def register(app: typer.Typer) -> None:
    command(app, "fragility", FragilityCommand, run)
