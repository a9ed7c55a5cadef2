"""Train one SAE on a site of an activation store and evaluate it end to end: the function behind
``assay sae train`` (and the quickstart's SAE step).

Recipe: the SAE trainer of :mod:`assay.dictionaries.trainer` (Gao et al. 2024, "Scaling and
evaluating sparse autoencoders", for the TopK defaults) on the store's rows, minus BOS/padding rows
(position −1 in the store; their norms are outliers, SAELens#333) and minus the last
``holdout_windows`` windows, which are kept for evaluation:

- reconstruction (FVU as a ratio of global sums) and sparsity (L0, dead fraction) on the held-out
  rows, via :mod:`assay.evaluate.reconstruction` / :mod:`assay.evaluate.sparsity`;
- with the model, CE loss recovered (CE_zero − CE_sae)/(CE_zero − CE_clean) and the KL score on the
  held-out windows, the reconstruction spliced in at every position but the BOS
  (:mod:`assay.evaluate.spliced`).

A transcoder (``architecture="topk_transcoder"`` / ``"jumprelu_transcoder"``, Dunefsky et al. 2024) is
trained the same way on two sites cached together in the store (``output_site``, read at the same rows);
its held-out FVU is that of the output site and its splice replaces the output site by the transcoder's
map of the input site.

Store rows are window-major (row = window · T + t), so a held-out window is a contiguous block.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from assay.config import ConfigError, check_int_fields
from assay.dictionaries.base import SAE
from assay.dictionaries.trainer import TrainResult
from assay.evaluate.reconstruction import ReconstructionMetrics
from assay.evaluate.sparsity import SparsityMetrics
from assay.evaluate.spliced import SplicedMetrics
from assay.precision import AutocastDtype

__all__ = ["StoreSAEConfig", "StoreSAEResult", "train_sae_on_store", "build_store_sae", "trainer_config", "layout"]

Architecture = Literal["relu", "topk", "batchtopk", "jumprelu", "matryoshka", "archetypal", "mp", "spade",
                       "topk_transcoder", "jumprelu_transcoder", "crosscoder", "temporal"]
K_ARCHITECTURES = ("topk", "batchtopk", "matryoshka", "archetypal", "mp", "topk_transcoder", "temporal")
"""Architectures that take ``k`` (active latents per token; a crosscoder only with ``crosscoder_topk``)."""


@dataclass(frozen=True, kw_only=True)
class StoreSAEConfig:
    """How to train and evaluate an SAE on one store site. Reconstruction loss: sum over d, mean over tokens."""

    architecture: Architecture = "topk"
    """SAE architecture."""
    expansion: int = 8
    """d_sae = expansion × d_in (a crosscoder: × one source's width)."""
    k: int = 32
    """Active latents per token (TopK family, RA-SAE, MP, TopK transcoder, TopK crosscoder, temporal SAE)."""
    skip: bool = False
    """Transcoders: add the affine skip term (a skip-transcoder, Paulo et al. 2025)."""
    resample_every: int | None = None
    """Resample latents dead over the last half of every this many steps (Anthropic 2023; None: never)."""
    steps: int = 1000
    """Optimizer steps (epochs over the store as needed)."""
    batch_size: int = 4096
    """Store rows drawn per step (BOS/padding and held-out rows are then dropped from the batch)."""
    lr: float | None = None
    """Learning rate (None: the architecture's default, else the width-scaled TopK rule)."""
    warmup_steps: int = 1000
    """Linear lr warmup (capped at steps/10)."""
    decay_fraction: float = 0.0
    """Decay the lr linearly to 0 over this last fraction of the steps (0: constant after warmup, as
    ``SAETrainConfig``; evidence for 0 in docs/dictionaries.md, "Defaults")."""
    normalize_inputs: bool = True
    """Scale inputs so E‖s·x‖ = √d during training (folded into the weights at the end)."""
    seed: int = 0
    """Seed of the data order and the weight initialisation."""
    holdout_windows: int = 16
    """Last windows of the store kept out of training, for evaluation (0: evaluate nothing)."""
    exclude_special: bool = True
    """Drop BOS and padding rows (store position −1) from training and evaluation."""
    checkpoint_every: int | None = None
    """Checkpoint every this many steps when a checkpoint folder is given (None: only at the end)."""
    eval_batch_windows: int = 4
    """Windows per model forward pass in the spliced evaluation."""
    progress: bool = True
    """Show a progress bar with loss, L0, FVU and dead fraction."""
    autocast_dtype: AutocastDtype | None = None
    """Train with the SAE's forward pass under torch.autocast in this dtype (weights and Adam stay float32)."""
    l1_coef: float | None = None
    """Crosscoders: λ of the L1 of per-source decoder norms (None: 1.0; ReLU crosscoder only)."""
    crosscoder_topk: bool = False
    """Crosscoders: keep the k latents of largest decoder-scaled code per row, no L1 (Minder et al. 2025)."""
    temporal_context: int | None = None
    """Temporal SAE: past codes a token attends to (None: its whole window); windows must be this long."""
    heads: int | None = None
    """Temporal SAE: attention heads (None: 4); must divide d_sae."""
    dense_context: bool = False
    """Temporal SAE: the reference's dense context code ReLU(λ(x − b)E) (slower; exports to SAELens for any k).
    False: TopK_k, assay's faster default."""

    def __post_init__(self) -> None:
        check_int_fields(self)
        for name in ("expansion", "k", "steps", "batch_size", "eval_batch_windows"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.holdout_windows < 0:
            raise ConfigError(f"holdout_windows must be >= 0, got {self.holdout_windows}")
        if not 0.0 <= self.decay_fraction < 1.0:
            raise ConfigError(f"decay_fraction must lie in [0, 1), got {self.decay_fraction}")
        if self.skip and not self.architecture.endswith("_transcoder"):
            raise ConfigError(f"skip=True is a transcoder option; architecture {self.architecture!r} is an SAE")
        for arch, names in (("crosscoder", ("l1_coef", "crosscoder_topk")), ("temporal", ("temporal_context", "heads",
                                                                                          "dense_context"))):
            given = [n for n in names if getattr(self, n) not in (None, False)]
            if given and self.architecture != arch:
                raise ConfigError(f"{', '.join(given)} {'is a' if len(given) == 1 else 'are'} {arch} option(s); "
                                  f"architecture is {self.architecture!r} (use --architecture {arch})")
        if self.architecture == "temporal" and not self.exclude_special:
            raise ConfigError("a temporal SAE always masks the BOS and padding out of its loss and figures (it reads "
                              "whole windows); drop exclude_special=False (--no-exclude-special)")
        if self.l1_coef is not None and self.crosscoder_topk:
            raise ConfigError("l1_coef is the ReLU crosscoder's penalty; a crosscoder_topk crosscoder has no L1 term")


class StoreSAEResult(NamedTuple):
    """What :func:`train_sae_on_store` returns."""

    sae: SAE
    """The trained SAE (takes raw activations; the input scale is folded in)."""
    train: TrainResult
    """Steps, input scale and the last training step's loss, FVU, L0 and dead fraction."""
    reconstruction: ReconstructionMetrics | None
    """Held-out reconstruction metrics (None when ``holdout_windows`` = 0)."""
    sparsity: SparsityMetrics | None
    """Held-out sparsity metrics (None when ``holdout_windows`` = 0)."""
    spliced: SplicedMetrics | None
    """CE/KL recovered on the held-out windows (None without a model or held-out windows)."""
    train_seconds: float
    """Wall-clock seconds of training."""
    eval_seconds: float
    """Wall-clock seconds of evaluation."""


def build_store_sae(cfg: StoreSAEConfig, d_in: int, d_out: int | None = None) -> SAE:
    """The untrained SAE ``cfg`` describes for inputs of width ``d_in`` (a transcoder also needs ``d_out``,
    the output site's width)."""
    from assay.dictionaries.registry import build_sae

    if cfg.architecture in ("crosscoder", "temporal"):
        raise ValueError(f"a {cfg.architecture} is trained by "
                         + ("assay.dictionaries.store_crosscoder.train_crosscoder_on_store (several sites)"
                            if cfg.architecture == "crosscoder" else
                            "assay.dictionaries.store_temporal.train_temporal_on_store (whole windows)"))
    kw: dict[str, Any] = {"d_in": d_in, "d_sae": cfg.expansion * d_in, "seed": cfg.seed}
    if cfg.architecture in K_ARCHITECTURES:
        kw["k"] = cfg.k
    if cfg.architecture.endswith("_transcoder"):
        if d_out is None:
            raise ValueError(f"a {cfg.architecture} maps an input site to an output site: give the output site "
                             "(--output-site, e.g. blocks.0.mlp for input blocks.0.ln2)")
        kw |= {"d_out": d_out, "skip": cfg.skip}
    elif d_out is not None:
        raise ValueError(f"an output site was given but {cfg.architecture!r} is an SAE (it reconstructs its input); "
                         "use --architecture topk_transcoder or jumprelu_transcoder")
    return build_sae(cfg.architecture, **kw)


def trainer_config(cfg: StoreSAEConfig) -> Any:
    """The :class:`~assay.dictionaries.trainer.SAETrainConfig` of ``cfg``'s optimisation fields."""
    from assay.dictionaries.trainer import SAETrainConfig

    return SAETrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, decay_fraction=cfg.decay_fraction,
                          normalize_inputs=cfg.normalize_inputs, resample_every=cfg.resample_every,
                          checkpoint_every=cfg.checkpoint_every, progress=cfg.progress,
                          autocast_dtype=cfg.autocast_dtype)


def layout(store: Any, cfg: StoreSAEConfig) -> tuple[int, int]:
    """(window length T, first held-out row)."""
    t = int(store.config.get("context_length", 0))
    if t <= 0 or store.n_rows % t:
        raise ValueError(f"{store.path}: cannot recover the window layout (context_length={t}, rows={store.n_rows})")
    n_windows = store.n_rows // t
    if cfg.holdout_windows >= n_windows:
        raise ValueError(f"holdout_windows={cfg.holdout_windows} leaves no training window of the store's {n_windows}")
    return t, (n_windows - cfg.holdout_windows) * t


def train_sae_on_store(
    store: Any,
    site: str,
    cfg: StoreSAEConfig,
    *,
    sae: SAE | None = None,
    model: nn.Module | None = None,
    out: str | Path | None = None,
    checkpoint: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    output_site: str | None = None,
) -> StoreSAEResult:
    """Train an SAE on ``site`` of ``store`` (an :class:`assay.store.ActivationStore` or its folder),
    evaluate it on the held-out windows and (with ``out``) save it as an assay artifact.

    ``sae``: a prebuilt untrained SAE (default: :func:`build_store_sae`); its d_in must equal the
    site's width. ``model``: the model the store was cached from, for CE loss recovered.
    ``checkpoint``: a folder for exact resume (a finished run resumed takes no further steps).
    ``log``: called with a line before and after each evaluation step (what runs, then its figures and
    seconds), e.g. ``print``; the evaluation can take minutes on a real model. ``output_site``: train a
    transcoder from ``site`` to this site (both cached in ``store``).
    """
    from assay.dictionaries.registry import save_sae
    from assay.dictionaries.trainer import train_saes
    from assay.store import ActivationStore

    if not hasattr(store, "batch_rows"):
        store = ActivationStore.open(store)
    d = store.d(site)
    sae = sae if sae is not None else build_store_sae(cfg, d, None if output_site is None else store.d(output_site))
    if sae.d_in != d:
        raise ValueError(f"store site {site!r} has d={d} but the SAE expects d_in={sae.d_in}; "
                         "build the SAE with d_in equal to the store's width")
    t, cut = layout(store, cfg)

    t0 = time.perf_counter()
    trained, result = train_saes(sae, trainer_config(cfg), store, site=site, output_site=output_site, batch_size=cfg.batch_size,
                                 seed=cfg.seed, checkpoint=checkpoint, exclude_special=cfg.exclude_special,
                                 keep_rows=lambda rows: rows < cut)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = spars = spliced = None
    say = log or (lambda line: None)
    if cfg.holdout_windows > 0:
        n_win = cfg.holdout_windows
        say(f"held-out metrics: FVU, L0 and dead fraction on the last {n_win} windows ...")
        t1 = time.perf_counter()
        rec, spars, mean = _heldout_metrics(trained, store, site, cut, cfg.exclude_special, output_site)
        say(f"held-out metrics: FVU {rec.fvu:.4f}, L0 {spars.l0:.2f}, dead {spars.dead_fraction:.2%} on "
            f"{rec.n_tokens} tokens ({time.perf_counter() - t1:.1f} s)")
        if model is not None:
            say(f"CE loss recovered: the model on {n_win} windows clean, with the SAE spliced in, zero- and "
                "mean-ablated ...")
            t1 = time.perf_counter()
            spliced = _spliced(trained, model, store, site, cut, t, cfg, mean, output_site)
            say(f"CE loss recovered: {spliced.ce_recovered:.4f} (CE clean {spliced.ce_clean:.4f}, with the SAE "
                f"{spliced.ce_sae:.4f}), KL score {spliced.kl_score:.4f} ({time.perf_counter() - t1:.1f} s)")
    eval_s = time.perf_counter() - t0
    if out is not None:
        meta: dict[str, Any] = {"store": str(store.path), "site": site, "output_site": output_site,
                                "model": store.config.get("model"), "output_scale": result.output_scale,
                                "steps": result.steps, "input_scale": result.input_scale, "last": result.last[0],
                                "heldout_fvu": rec.fvu if rec else None, "heldout_l0": spars.l0 if spars else None,
                                "ce_recovered": spliced.ce_recovered if spliced else None}
        save_sae(out, trained, meta=meta)
    return StoreSAEResult(trained, result, rec, spars, spliced, train_s, eval_s)


@torch.no_grad()
def _heldout_metrics(sae: SAE, store: Any, site: str, cut: int, exclude_special: bool,
                     output_site: str | None = None, chunk: int = 4096
                     ) -> tuple[ReconstructionMetrics, SparsityMetrics, Tensor]:
    """Held-out FVU and sparsity, and the mean of what is reconstructed (for mean ablation); a transcoder
    is scored on its output site."""
    from assay.evaluate.reconstruction import ReconstructionAccumulator
    from assay.evaluate.sparsity import SparsityAccumulator

    rec, spars = ReconstructionAccumulator(), SparsityAccumulator(sae.d_sae)
    total = torch.zeros(sae.d_out, dtype=torch.float64)
    n = 0
    for a in range(cut, store.n_rows, chunk):
        b = min(a + chunk, store.n_rows)
        keep = store.positions[a:b] >= 0 if exclude_special else slice(None)
        x = store.read(site, a, b)[keep]
        y = x if output_site is None else store.read(output_site, a, b)[keep]
        if x.shape[0] == 0:
            continue
        z = sae.encode(x)
        rec.update(y, sae.decode(z) if output_site is None else sae.transcode(x))  # type: ignore[operator]
        spars.update(z)
        total += y.double().sum(0)
        n += x.shape[0]
    if n == 0:
        raise ValueError("the held-out windows hold no rows to evaluate (all BOS/padding?)")
    return rec.result(), spars.result(), (total / n).float()


def _spliced(sae: SAE, model: nn.Module, store: Any, site: str, cut: int, t: int, cfg: StoreSAEConfig,
             mean: Tensor, output_site: str | None = None) -> SplicedMetrics:
    from assay.evaluate.spliced import spliced_metrics

    tokens = store.tokens[cut:store.n_rows].reshape(-1, t)
    positions = store.positions[cut:store.n_rows].reshape(-1, t)
    mask = positions >= 0 if cfg.exclude_special else torch.ones_like(tokens, dtype=torch.bool)
    dev = next(model.parameters()).device
    batches = [(tokens[i:i + cfg.eval_batch_windows].to(dev), mask[i:i + cfg.eval_batch_windows].to(dev))
               for i in range(0, tokens.shape[0], cfg.eval_batch_windows)]
    sae = sae.to(dev)

    def reconstruct(h: Tensor) -> Tensor:
        return sae.decode(sae.encode(h.float())) if output_site is None else sae.transcode(h.float())  # type: ignore[operator]

    return spliced_metrics(model, site if output_site is None else output_site, batches, reconstruct,
                           mean_activation=mean.to(dev), keep_first=1 if cfg.exclude_special else 0,
                           input_site=None if output_site is None else site)
