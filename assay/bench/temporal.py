"""The temporal family: does a temporal SAE's code predicted from the past track a slow hidden state?

Lubana, Rager, Hindupur et al. 2025, "Priors in Time: Missing Inductive Biases for Language Model
Interpretability" (arXiv 2511.01836). On the ``slow_state`` world (:mod:`assay.worlds.slow_state`: a sticky
hidden state shown per token with decoys, plus fast features) a temporal SAE
(:class:`assay.dictionaries.temporal.TemporalSAE`) and a TopK SAE of the same width and k are trained on the
same windows (the world's activations, no model) and scored on held-out windows:

- ``state_auroc``: mean over states of the best single latent's AUROC for "the hidden state is s"
  (:func:`assay.evaluate.detection.latent_detection`) — of the predicted code ẑ for the temporal SAE (attention
  over past codes), of the codes for TopK; ``state_auroc_zp``: the same for the temporal SAE's z_p = s_t·ẑ;
- ``fvu``, ``l0`` (:mod:`assay.evaluate.reconstruction`; the temporal SAE's L0 counts its novel code);
- ``predictable_share`` and ``tortuosity`` (:mod:`assay.evaluate.temporal`; tortuosity of z_p, or of the TopK
  codes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from assay.bench.runner import BenchResult, RunContext, check_params, expand_with, summary_rows
from assay.bench.spec import SpecRun, parameter_defaults, parse_world_spec
from assay.config import ConfigError

__all__ = ["TemporalSettings", "TemporalFamily", "FAMILY"]

METHOD_PARAMS: dict[str, dict[str, Any]] = {"temporal": {"k": 4, "n_heads": 4, "dense_context": False},
                                            "topk": {"k": 4}}
"""Method name → its parameters and their defaults."""


@dataclass(frozen=True, kw_only=True)
class TemporalSettings:
    """The run budget of a temporal bench."""

    steps: int = 200
    """Training steps per SAE."""
    windows: int = 8
    """Windows per training step."""
    n_eval: int = 64
    """Held-out windows."""
    expansion: int = 4
    """Latents per input dimension (n = expansion · d)."""
    lr: float = 3e-3
    """Learning rate of the temporal SAE (the TopK SAE uses its width rule, ≈ 3.2e-3 at n = 64)."""

    def __post_init__(self) -> None:
        if min(self.steps, self.windows, self.n_eval, self.expansion) <= 0 or self.lr <= 0:
            raise ConfigError("steps, windows, n_eval, expansion and lr must be positive")


class _World(NamedTuple):
    train: list[torch.Tensor]
    """Training windows, one ``[windows, T, d]`` tensor per step."""
    test: Any
    """Held-out :class:`assay.worlds.base.Batch` (inputs ``[n_eval, T, d]``, label ``state``)."""
    d: int


def _method(run: SpecRun) -> dict[str, Any]:
    p = check_params(run, METHOD_PARAMS[run.name])
    if not isinstance(p["k"], int) or p["k"] <= 0 or not isinstance(p.get("n_heads", 1), int) or p.get("n_heads", 1) <= 0:
        raise ConfigError(f"{run.name}: k and n_heads must be positive integers; got {p}")
    if not isinstance(p.get("dense_context", False), bool):
        raise ConfigError(f"{run.name}: dense_context must be true or false; got {p['dense_context']!r}")
    return p


class TemporalFamily:
    """Temporal SAE vs TopK SAE on the slow-state world (module docstring)."""

    name = "temporal"
    title = "Temporal SAE: tracking a slow hidden state"
    worlds = ("slow_state",)
    methods = ("temporal", "topk")
    metrics = ("state_auroc", "state_auroc_zp", "fvu", "l0", "predictable_share", "tortuosity")
    settings_type = TemporalSettings

    def world_names(self) -> dict[str, dict[str, Any]]:
        from assay.worlds.slow_state import SlowStateConfig

        return {"slow_state": parameter_defaults(SlowStateConfig, exclude=("seed",))}

    def method_names(self) -> tuple[str, ...]:
        return tuple(METHOD_PARAMS)

    def expand(self, spec: str) -> list[SpecRun]:
        runs = expand_with(METHOD_PARAMS)(spec)
        for run in runs:
            _method(run)
        return runs

    def prepare(self, world: str, seed: int, settings: TemporalSettings) -> _World:
        from assay.config import from_dict
        from assay.worlds.base import make_generator
        from assay.worlds.slow_state import SlowStateConfig, SlowStateWorld

        _, params = parse_world_spec(world, self.world_names())
        w = SlowStateWorld(from_dict(SlowStateConfig, {"seed": seed, **params}))
        g = make_generator(1000 + seed)
        train = [w.sample(settings.windows, generator=g).inputs for _ in range(settings.steps)]
        return _World(train, w.sample(settings.n_eval, generator=make_generator(2000 + seed)), w.config.d_model)

    def score(self, prepared: _World, run: SpecRun, ctx: RunContext) -> dict[str, float]:
        from assay.dictionaries.trainer import SAETrainConfig, SAETrainer
        from assay.evaluate.detection import latent_detection, one_hot_concepts
        from assay.evaluate.reconstruction import reconstruction_metrics
        from assay.evaluate.temporal import mean_tortuosity, predictable_share

        s: TemporalSettings = ctx.settings
        p = _method(run)
        d, n = prepared.d, s.expansion * prepared.d
        x = prepared.test.inputs
        y, _ = one_hot_concepts({"state": prepared.test.labels["state"]})

        def auroc(z: torch.Tensor) -> float:
            return latent_detection(z.reshape(-1, n), y, probe_ks=()).mean_auroc

        if run.name == "temporal":
            from assay.dictionaries.temporal import TemporalConfig, TemporalSAE

            trainer = SAETrainer(TemporalSAE(TemporalConfig(d_in=d, d_sae=n, k=p["k"], n_heads=p["n_heads"],
                                                            dense_context=p["dense_context"], seed=ctx.seed)),
                                 SAETrainConfig(steps=s.steps, warmup_steps=20, lr=s.lr))
            trainer.fit(iter(prepared.train))
            c = trainer.finalize()[0].codes(x)
            return {"state_auroc": auroc(c.predicted), "state_auroc_zp": auroc(c.predictable),
                    "fvu": reconstruction_metrics(x.reshape(-1, d), c.recon.reshape(-1, d)).fvu,
                    "l0": float((c.novel != 0).sum(-1).float().mean()),
                    "predictable_share": predictable_share(c.predictable_recon, c.novel_recon),
                    "tortuosity": mean_tortuosity(c.predictable)}
        from assay.dictionaries.topk import TopKConfig, TopKSAE

        trainer = SAETrainer(TopKSAE(TopKConfig(d_in=d, d_sae=n, k=p["k"], seed=ctx.seed)),
                             SAETrainConfig(steps=s.steps, warmup_steps=20))
        trainer.fit(b.reshape(-1, d) for b in prepared.train)
        sae = trainer.finalize()[0]
        with torch.no_grad():
            z = sae.encode(x)
            fvu = reconstruction_metrics(x.reshape(-1, d), sae.decode(z).reshape(-1, d)).fvu
        return {"state_auroc": auroc(z), "fvu": fvu, "l0": float((z != 0).sum(-1).float().mean()),
                "tortuosity": mean_tortuosity(z)}

    def section(self, result: BenchResult) -> Any:
        from assay.report import Section, Table

        columns, rows = summary_rows(result, self.metrics)
        s = result.settings
        seeds = sorted({r["seed"] for r in result.runs})
        notes = [
            f"{s.steps} training steps of {s.windows} windows per SAE (n = {s.expansion}·d), {s.n_eval} held-out "
            f"windows; cells are means over seeds ({', '.join(map(str, seeds))}) with a 95% Student-t interval.",
            "state_auroc: mean over hidden states of the best single latent's AUROC for 'the state is s' — the "
            "temporal SAE's code predicted from past codes (ẑ), the TopK SAE's codes. A single token is weak "
            "evidence (decoys), so ≈ ½ + (f − (1 − f)/(K − 1))/2 (0.73 at the defaults) bounds any per-token code.",
            "state_auroc_zp: the same for z_p = s_t·ẑ, whose per-token scale s_t is fitted to the current token "
            "(and may be negative). predictable_share: Σ‖z_p D‖² / (Σ‖z_p D‖² + Σ‖z_n D‖²); tortuosity: arc length "
            "over chord of the code trajectory through a window (of z_p for the temporal SAE).",
        ]
        return Section(self.title, [Table("Temporal SAE vs TopK SAE", columns, rows)], [], notes)


FAMILY = TemporalFamily()
"""The temporal family for :func:`assay.bench.runner.run_family`."""
