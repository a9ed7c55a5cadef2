"""One trainer for every SAE: streams activation batches (from a store, any iterator of tensors, or
live from a model hook) into one or several SAEs in lockstep, with exact resume.

Recipe (Gao et al. 2024, "Scaling and evaluating sparse autoencoders";
Bricken et al. 2023; Anthropic "Circuits Updates — April 2024"), per step t on a batch x:

    x ← s·x  (s = √d / mean‖x‖ from the first batch; folded into the weights at the end)
    L = mean_b‖x − x̂‖² + min(1, t/T_sparsity)·L_sparsity + L_aux(dead latents)
    g_W_dec ← g − (g·ŵ)ŵ;  clip ‖g‖ ≤ 1;  Adam(β₁, β₂) at lr(t) (linear warmup, optional linear decay);
    renormalise atoms.

A transcoder (:mod:`assay.dictionaries.transcoder`) trains in the same loop on (x, y) pairs — the loss
target is the output site y, scaled by its own s_out = √d_out / mean‖y‖ — from an iterator of pairs or
from two sites of one store read at the same rows. A latent is dead after ``dead_window`` tokens without
firing. Under ``torch.distributed`` each rank
takes an equal slice of every global batch and gradients are averaged with ``all_reduce`` (gloo on
CPU, NCCL on GPU), so W ranks give the same weights as one process on the same global batches.
Checkpoints (assay artifacts) hold weights, Adam state, step, input scale and dead-latent counters;
the data position is the step, so a resumed run is bit-identical to an uninterrupted one. An
``on_step(step, saes)`` callback watches training (e.g. feature recovery over steps): it gets finalized
copies, so it cannot disturb the run. ``autocast_dtype`` runs the SAEs' forward pass in bfloat16 (mixed
precision, :mod:`assay.precision`). From a store, BOS and padding rows (position −1; outlier norms, SAELens#333) are left out by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from assay.artifact import ArtifactError, load_artifact, save_artifact
from assay.config import ConfigError, check_int_fields, to_dict
from assay.dictionaries.base import SAE, topk_lr
from assay.dictionaries.batches import store_batches
from assay.dictionaries.threads import one_thread
from assay.dictionaries.transcoder import is_transcoder
from assay.precision import AutocastDtype, autocast, check_autocast_dtype
from assay.store.ranks import rank_and_world
from assay.store.sequence_reader import SequenceBatch

__all__ = ["SAETrainConfig", "TrainResult", "SAETrainer", "NonFiniteActivationsError", "lr_at", "train_saes",
           "StepCallback", "ProgressBar"]


class NonFiniteActivationsError(RuntimeError):
    """A training batch held NaN or inf; the run stopped before that step, checkpoints untouched."""


@dataclass(frozen=True, kw_only=True)
class SAETrainConfig:
    """How to train SAEs. Reconstruction loss: sum over d, mean over tokens (never scales with batch)."""

    steps: int
    """Total optimizer steps (batches)."""
    lr: float | None = None
    """Learning rate (None: the architecture's default, else the width-scaled TopK rule 2e-4/√(n/2¹⁴))."""
    warmup_steps: int = 1000
    """Linear lr warmup from 0 over this many steps (capped at steps/10)."""
    decay_fraction: float = 0.0
    """Decay the lr linearly to 0 over this last fraction of the steps (0: constant after warmup)."""
    sparsity_warmup_steps: int = 0
    """Linear warmup of the sparsity coefficient from 0 over this many steps."""
    grad_clip: float | None = 1.0
    """Global gradient-norm clip per SAE (None: no clipping)."""
    normalize_inputs: bool = True
    """Scale inputs so E‖s·x‖ = √d (s from the first batch); folded into the weights by ``finalize``. On by
    default (the L1/L0 coefficients are set for that scale); its measured cost on small-norm worlds is in
    docs/dictionaries.md, "Defaults and the evidence for them"."""
    dead_window: int | None = None
    """Tokens without firing after which a latent counts as dead (None: 10 × the batch size)."""
    resample_every: int | None = None
    """Every this many steps, resample the latents that did not fire in the last half of the period
    (:mod:`assay.dictionaries.resample`, Bricken et al. 2023; None: never)."""
    checkpoint_every: int | None = None
    """Save a checkpoint every this many steps (and at the end) when a checkpoint path is given."""
    progress: bool = False
    """Show a rich progress bar with loss, L0, FVU and dead fraction."""
    autocast_dtype: AutocastDtype | None = None
    """Run the SAEs' forward pass under torch.autocast in this dtype (:mod:`assay.precision`; CPU or GPU); the
    weights, gradients and Adam state stay float32. None: no autocast."""

    def __post_init__(self) -> None:
        check_int_fields(self)
        check_autocast_dtype(self.autocast_dtype)
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be positive or None, got {self.lr}")
        if self.warmup_steps < 0 or self.sparsity_warmup_steps < 0:
            raise ConfigError("warmup_steps and sparsity_warmup_steps must be >= 0")
        if not 0.0 <= self.decay_fraction < 1.0:
            raise ConfigError(f"decay_fraction must lie in [0, 1), got {self.decay_fraction}")
        if self.checkpoint_every is not None and self.checkpoint_every <= 0:
            raise ConfigError(f"checkpoint_every must be positive or None, got {self.checkpoint_every}")
        if self.resample_every is not None and self.resample_every < 2:
            raise ConfigError(f"resample_every must be >= 2 steps or None, got {self.resample_every}")

    @property
    def decay_start(self) -> int | None:
        """The step from which the lr decays, ⌊steps · (1 − decay_fraction)⌋ (None: no decay)."""
        start = int(self.steps * (1 - self.decay_fraction))
        return start if self.decay_fraction > 0 and start < self.steps else None


def lr_at(step: int, base: float, *, warmup: int, decay_start: int | None, total: int) -> float:
    """lr at ``step`` (0-based): linear warmup (step+1)/warmup, constant, linear decay to 0 from decay_start."""
    f = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if decay_start is not None and step >= decay_start:
        f *= max(0.0, (total - step) / (total - decay_start))
    return base * f


RESUME_FREE_FIELDS = ("progress", "checkpoint_every")
"""SAETrainConfig fields that may change across a resume (they do not change the result); a change of any
other field, or of the data order (site, batch size, seed), is refused."""


class TrainResult(NamedTuple):
    """What :meth:`SAETrainer.fit` returns."""

    steps: int
    """Steps done in total (including those before a resume)."""
    input_scale: float
    """The input scale s (1.0 when not normalising)."""
    last: list[dict[str, float]]
    """Per SAE, the last step's loss, FVU, L0 and dead fraction."""
    output_scale: float = 1.0
    """A transcoder's output (target) scale s_out; equal to ``input_scale`` for SAEs."""


StepCallback = Callable[[int, list[SAE]], None]
"""``on_step(step, saes)``: called after optimizer step ``step`` (1-based: steps done so far) with finalized
copies of the SAEs as they are then (input scale folded in, eval mode; see :meth:`SAETrainer.finalize`)."""


def _due(on_step_at: int | Collection[int]) -> Callable[[int], bool]:
    """Which steps (1-based, steps done) an ``on_step`` callback runs at: every ``n`` steps, or the given ones."""
    if isinstance(on_step_at, int):
        if on_step_at <= 0:
            raise ValueError(f"on_step_at must be a positive step interval or a collection of steps, got {on_step_at}")
        return lambda step: step % on_step_at == 0
    steps = frozenset(int(t) for t in on_step_at)
    if any(t <= 0 for t in steps):
        raise ValueError(f"on_step_at steps count the steps done, so they start at 1; got {sorted(steps)}")
    return steps.__contains__


def _all_finite(t: Tensor) -> bool:
    """Whether every entry of ``t`` is finite, in one pass (min and max propagate NaN; ±inf is an extreme)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _sum_sq_deviations(t: Tensor) -> Tensor:
    """Σ_b ‖t_b − t̄‖² of a batch ``t [B, d]`` (= B · Σ_d Var_b(t), as ``t.var(0, correction=0).sum() · B``): the
    column means, then one fused squared-difference sum (``var``'s strided reduction took 10× as long)."""
    return F.mse_loss(t, t.mean(0).expand_as(t), reduction="sum")


class SAETrainer:
    """Trains ``saes`` (one or several, in lockstep on the same batches) under ``cfg``."""

    def __init__(self, saes: SAE | list[SAE], cfg: SAETrainConfig) -> None:
        self.saes = [saes] if isinstance(saes, SAE) else list(saes)
        if not self.saes:
            raise ValueError("give at least one SAE to train")
        d = {(s.d_in, s.d_out) for s in self.saes}
        if len(d) != 1:
            raise ValueError(f"SAEs trained in lockstep must share d_in and d_out; got {sorted(d)}")
        kinds = {is_transcoder(s) for s in self.saes}
        if len(kinds) != 1:
            raise ValueError("SAEs and transcoders cannot train in lockstep (one reads x → x, the other x → y); "
                             "train them separately")
        self.paired = kinds.pop()
        """Transcoders: batches are (x, y) pairs and the loss target is y."""
        self.cfg = cfg
        self.d_in, self.d_out = d.pop()
        kinds = {s.reads_sequences for s in self.saes}
        if len(kinds) != 1:
            raise ValueError("SAEs trained in lockstep must all read token rows or all read sequences")
        self.reads_sequences = kinds.pop()
        """The SAEs train on windows [B, T, d] (see :meth:`train_step`)."""
        self.step = 0
        self.input_scale = 1.0
        self.output_scale = 1.0
        self.data_identity: dict[str, Any] | None = None
        """What fixes the data order (site, batch size, seed) when known; checked on resume."""
        self.since_fired = [torch.zeros(s.d_sae, dtype=torch.long) for s in self.saes]
        if cfg.resample_every is not None:
            from assay.dictionaries.resample import can_resample

            bad = [s.architecture for s in self.saes if not can_resample(s)]
            if bad:
                raise ConfigError(f"resample_every needs explicit W_enc [d_in, n] / b_enc / W_dec parameters; {bad} "
                                  "derive their decoder, have no encoder (MP, SpaDE, RA-SAE) or a block encoder (CLTs): "
                                  "train them with resample_every=None")
        self.resampled = [0 for _ in self.saes]
        """Latents resampled so far, per SAE."""
        self.lrs = [cfg.lr or s.default_lr or topk_lr(s.d_sae) for s in self.saes]
        self.opts = [self._adam(s, lr) for s, lr in zip(self.saes, self.lrs)]
        self.last: list[dict[str, float]] = [{} for _ in self.saes]

    @staticmethod
    def _adam(sae: SAE, lr: float) -> torch.optim.Adam:
        betas = getattr(sae, "adam_betas", (0.9, 0.999))
        dev = next(sae.parameters()).device.type
        return torch.optim.Adam(sae.parameters(), lr=lr, betas=betas, fused=dev in ("cpu", "cuda"))

    # ----- one step ---------------------------------------------------------------------------
    @staticmethod
    def _windows(x: Tensor | SequenceBatch) -> tuple[Tensor, Tensor | None]:
        acts, mask = (x.acts, x.mask) if isinstance(x, SequenceBatch) else (x, None)
        if acts.dim() != 3:
            raise ValueError(f"this SAE trains on windows [batch, pos, d]; got a batch of shape {tuple(acts.shape)}. "
                             "Read whole sequences with assay.store.SequenceReader")
        return acts, mask

    def _check(self, x: Tensor, y: Tensor | None, where: Callable[[Tensor], str] | None) -> None:
        if x.shape[-1] != self.d_in:
            raise ValueError(f"activations have dimension {x.shape[-1]} but the SAE(s) expect d_in={self.d_in}; "
                             "train on the site the SAE was built for, or build it with the right d_in")
        if self.paired and y is None:
            raise ValueError("transcoders train on (input, output) pairs: give batches of (x, y) tensors, or a "
                             "store with output_site=")
        if not self.paired and y is not None:
            raise ValueError("an SAE reconstructs its input: give batches of x alone (build a transcoder, e.g. "
                             "'topk_transcoder', to map an input site to an output site)")
        if y is not None and (y.shape[-1] != self.d_out or y.shape[0] != x.shape[0]):
            raise ValueError(f"output batch has shape {tuple(y.shape)} but the transcoder(s) expect "
                             f"[{x.shape[0]}, d_out={self.d_out}] (one output row per input row)")
        if not all(_all_finite(t) for t in (x, y) if t is not None):
            bad = ~torch.isfinite(x).all(dim=-1)
            if y is not None:
                bad |= ~torch.isfinite(y).all(dim=-1)
            loc = where(bad) if where is not None else ""
            raise NonFiniteActivationsError(
                f"non-finite activations (NaN/inf) in {int(bad.sum())} row(s) of the batch for step {self.step}"
                f"{loc}; stopped before this step, checkpoints untouched")

    def train_step(self, x: Tensor | SequenceBatch, *, target: Tensor | None = None,
                   where: Callable[[Tensor], str] | None = None) -> None:
        """One optimizer step of every SAE on the global batch ``x [B, d]`` (transcoders: with ``target``
        y ``[B, d_out]``, the output site) — or, for SAEs that read sequences, windows ``[B, T, d]`` or a
        :class:`~assay.store.SequenceBatch` (only its masked-in tokens count: input scale, statistics, dead
        latents)."""
        x, mask = self._windows(x) if self.reads_sequences else (x.reshape(-1, x.shape[-1]), None)
        y = None if target is None else target.reshape(-1, target.shape[-1])
        rows = x.reshape(-1, x.shape[-1]) if mask is None else x[mask]
        self._check(rows, y, where)
        rank, world = rank_and_world()
        if self.step == 0:
            if self.cfg.normalize_inputs:
                self.input_scale = math.sqrt(self.d_in) / rows.float().norm(dim=-1).mean().item()
                self.output_scale = (self.input_scale if y is None
                                     else math.sqrt(self.d_out) / y.float().norm(dim=-1).mean().item())
            for s in self.saes:
                if y is None:
                    s.init_from_batch(rows * self.input_scale)
                else:
                    s.init_from_batch(rows * self.input_scale, y * self.output_scale)
        if world > 1:
            if x.shape[0] % world:
                raise ValueError(f"global batch of {x.shape[0]} rows does not split evenly over {world} ranks")
            per = x.shape[0] // world
            x = x[rank * per : (rank + 1) * per]
            mask = None if mask is None else mask[rank * per : (rank + 1) * per]
            y = None if y is None else y[rank * per : (rank + 1) * per]
        x = x * self.input_scale if self.input_scale != 1.0 else x
        if y is not None and self.output_scale != 1.0:
            y = y * self.output_scale
        rows = x.reshape(-1, x.shape[-1]) if mask is None else x[mask]
        extra = ({} if mask is None else {"mask": mask}) | ({} if y is None else {"target": y})
        t = rows if y is None else y
        B_global = rows.shape[0] * world
        window = self.cfg.dead_window or 10 * B_global
        sp = min(1.0, (self.step + 1) / self.cfg.sparsity_warmup_steps) if self.cfg.sparsity_warmup_steps else 1.0
        warm = min(self.cfg.warmup_steps, max(1, self.cfg.steps // 10))
        spread = _sum_sq_deviations(t)  # the FVU's denominator, B·Σ_d Var_b(t)
        for i, (sae, opt) in enumerate(zip(self.saes, self.opts)):
            dead = self.since_fired[i] >= window
            with autocast(x.device, self.cfg.autocast_dtype):
                out = sae(x, dead=dead, sparsity_scale=sp, **extra)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            with nullcontext() if out.codes.is_dense else one_thread():  # sparse codes: O(B·k) bookkeeping
                fired = out.codes.fired()
                l0 = out.codes.l0().sum().float()
            stats = torch.stack([out.rec_loss * rows.shape[0], spread, l0])
            if world > 1:
                import torch.distributed as dist

                for p in sae.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad.div_(world)
                dist.all_reduce(fired)
                dist.all_reduce(stats)
            sae.before_step()
            if self.cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(sae.parameters(), self.cfg.grad_clip)
            lr = lr_at(self.step, self.lrs[i], warmup=warm, decay_start=self.cfg.decay_start, total=self.cfg.steps)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            sae.after_step()
            sae.observe(out.codes, self.step)
            self.since_fired[i] += B_global
            self.since_fired[i][fired.cpu() > 0] = 0
            every = self.cfg.resample_every
            if every is not None and (self.step + 1) % every == 0:
                from assay.dictionaries.resample import resample_dead

                g = torch.Generator().manual_seed(self.step)  # depends on the step only: resume stays exact
                gone = self.since_fired[i] >= (every // 2) * B_global
                if world > 1:
                    raise ValueError("resample_every is not supported under torch.distributed yet (each rank would "
                                     "resample from its own slice); train with resample_every=None")
                self.resampled[i] += resample_dead(sae, gone.to(x.device), x, t, out.recon.detach(), opt,
                                                   generator=g)
                self.since_fired[i][gone] = 0
            self.last[i] = {"loss": out.loss.item(), "fvu": (stats[0] / stats[1]).item(),
                            "l0": (stats[2] / B_global).item(), "dead": dead.float().mean().item()}
        self.step += 1

    # ----- loops ------------------------------------------------------------------------------
    def fit(self, batches: Iterable[Tensor], *, checkpoint: str | Path | None = None,
            where: Callable[[int, Tensor], str] | None = None, on_step: StepCallback | None = None,
            on_step_at: int | Collection[int] = 1) -> TrainResult:
        """Train until ``cfg.steps`` on ``batches`` (tensors; for transcoders (x, y) pairs), which must start at batch ``self.step``: after a
        resume, pass the data from that position). ``where(step, bad_rows)`` names the data source
        of a non-finite batch (e.g. its shards). ``on_step(step, saes)`` (:data:`StepCallback`) runs
        after every ``on_step_at``-th step, or after the steps in ``on_step_at`` when it is a collection
        (steps done, 1..``cfg.steps``; on every rank); it sees copies, so the trained weights and a resume
        are exactly as without it. After a resume it runs for the remaining steps only."""
        due = _due(on_step_at)
        it = iter(batches)
        bar = ProgressBar(self.cfg.steps, self.step) if self.cfg.progress and rank_and_world()[0] == 0 else None
        try:
            while self.step < self.cfg.steps:
                try:
                    x = next(it)
                except StopIteration:
                    raise ValueError(f"the data ran out after {self.step} of {self.cfg.steps} steps") from None
                step = self.step
                x, y = (x, None) if isinstance(x, (Tensor, SequenceBatch)) else x
                self.train_step(x, target=y, where=(lambda bad, step=step: where(step, bad)) if where else None)
                if bar:
                    bar.update(self.last[0])
                if on_step is not None and due(self.step):
                    on_step(self.step, self.finalize())
                every = self.cfg.checkpoint_every
                if checkpoint is not None and every and self.step % every == 0 and self.step < self.cfg.steps:
                    self.save_checkpoint(checkpoint)
        finally:
            if bar:
                bar.close()
        if checkpoint is not None:
            self.save_checkpoint(checkpoint)
        return TrainResult(self.step, self.input_scale, [dict(d) for d in self.last], self.output_scale)

    def finalize(self) -> list[SAE]:
        """Copies of the SAEs with the input scale folded in: they take raw activations."""
        import copy

        out = []
        for s in self.saes:
            c = copy.deepcopy(s)
            if self.paired:
                c.fold_scales(self.input_scale, self.output_scale)  # type: ignore[operator]
            elif self.input_scale != 1.0:
                c.fold_input_scale(self.input_scale)
            out.append(c.eval())
        return out

    # ----- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> Path:
        """Save weights, Adam state, step, input scale and dead counters (rank 0 writes)."""
        if rank_and_world()[0] != 0:
            return Path(path)
        files: dict[str, dict[str, Tensor]] = {}
        groups = []
        for i, (s, opt) in enumerate(zip(self.saes, self.opts)):
            files[f"sae{i}"] = {k: v.contiguous() for k, v in s.state_dict().items()}
            sd = opt.state_dict()
            files[f"opt{i}"] = {f"{p}.{k}": v.contiguous() for p, st in sd["state"].items() for k, v in st.items()}
            files[f"opt{i}"]["_since_fired"] = self.since_fired[i]
            groups.append({k: v for k, v in sd["param_groups"][0].items() if k != "params"})
        meta = {"step": self.step, "input_scale": self.input_scale, "output_scale": self.output_scale,
                "param_groups": groups,
                "saes": [{"architecture": s.architecture, "config": to_dict(s.cfg)} for s in self.saes],
                "data": self.data_identity}
        return save_artifact(path, kind="sae-checkpoint", config=self.cfg, tensors=files, meta=meta)

    def load_checkpoint(self, path: str | Path, *, settings_must_match: bool = True) -> None:
        """Restore the state saved by :meth:`save_checkpoint`. The SAEs must match in architecture and
        config; with ``settings_must_match`` (for a resume) so must the training settings and data order
        (:data:`RESUME_FREE_FIELDS` excepted); pass False only to inspect a checkpoint."""
        art = load_artifact(path, kind="sae-checkpoint")
        meta = art.meta
        saved = meta.get("saes", [])
        mine = [{"architecture": s.architecture, "config": to_dict(s.cfg)} for s in self.saes]
        if saved != mine:
            raise ArtifactError(f"{path}: the checkpoint holds SAEs {saved}, but the trainer has {mine}")
        now = to_dict(self.cfg)
        changed = [f"{k}: {art.config.get(k)!r} in the checkpoint, {now[k]!r} now" for k in now
                   if settings_must_match and k not in RESUME_FREE_FIELDS and art.config.get(k) != now[k]]
        saved_data = meta.get("data")
        if settings_must_match and saved_data is not None and self.data_identity is not None:
            changed += [f"{k}: {saved_data.get(k)!r} in the checkpoint, {v!r} now"
                        for k, v in self.data_identity.items() if saved_data.get(k) != v]
        if changed:
            raise ArtifactError(
                f"{path}: resuming with changed settings would make a hybrid run, not the promised identical "
                f"result ({'; '.join(changed)}). Resume with the checkpoint's settings, or use a new "
                "checkpoint folder to start afresh.")
        for i, (s, opt) in enumerate(zip(self.saes, self.opts)):
            with torch.no_grad():
                for k, v in s.state_dict().items():
                    v.copy_(art.tensors[f"sae{i}"][k])
            t = dict(art.tensors[f"opt{i}"])
            self.since_fired[i] = t.pop("_since_fired").clone()
            state: dict[int, dict[str, Tensor]] = {}
            for key, v in t.items():
                p, name = key.split(".", 1)
                state.setdefault(int(p), {})[name] = v
            group = dict(meta["param_groups"][i])
            group["betas"] = tuple(group["betas"])
            group["params"] = list(range(len(opt.param_groups[0]["params"])))
            opt.load_state_dict({"state": state, "param_groups": [group]})
            for p in opt.param_groups[0]["params"]:  # state must share the parameter's memory layout
                st = opt.state[p]  # (fused Adam walks raw memory; W_enc is stored transposed)
                for name, v in st.items():
                    if v.shape == p.shape and v.stride() != p.stride():
                        st[name] = torch.empty_like(p).copy_(v)
        self.step = int(meta["step"])
        self.input_scale = float(meta["input_scale"])
        self.output_scale = float(meta.get("output_scale", self.input_scale))


class ProgressBar:
    """The training progress bar (rich): steps, time left, and the last step's loss, L0, FVU and dead share."""

    def __init__(self, total: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("sae"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          TextColumn("{task.fields[info]}"))
        self.p.start()
        self.task = self.p.add_task("train", total=total, completed=done, info="")

    def update(self, last: dict[str, float]) -> None:
        info = f"loss {last['loss']:.4g}  L0 {last['l0']:.1f}  FVU {last['fvu']:.3f}  dead {last['dead']:.1%}"
        self.p.update(self.task, advance=1, info=info)

    def close(self) -> None:
        self.p.stop()


@overload
def train_saes(saes: SAE, cfg: SAETrainConfig, data: Any, *, site: str | None = None, output_site: str | None = None,
               batch_size: int | None = None, seed: int = 0, checkpoint: str | Path | None = None,
               resume: bool = True, exclude_special: bool = True,
               keep_rows: Callable[[Tensor], Tensor] | None = None, on_step: StepCallback | None = None,
               on_step_at: int | Collection[int] = 1, data_identity: dict[str, Any] | None = None) -> tuple[SAE, TrainResult]: ...


@overload
def train_saes(saes: list[SAE], cfg: SAETrainConfig, data: Any, *, site: str | None = None,
               output_site: str | None = None,
               batch_size: int | None = None, seed: int = 0, checkpoint: str | Path | None = None,
               resume: bool = True, exclude_special: bool = True,
               keep_rows: Callable[[Tensor], Tensor] | None = None, on_step: StepCallback | None = None,
               on_step_at: int | Collection[int] = 1, data_identity: dict[str, Any] | None = None) -> tuple[list[SAE], TrainResult]: ...


def train_saes(saes: SAE | list[SAE], cfg: SAETrainConfig, data: Any, *, site: str | None = None,
               output_site: str | None = None,
               batch_size: int | None = None, seed: int = 0, checkpoint: str | Path | None = None,
               resume: bool = True, exclude_special: bool = True,
               keep_rows: Callable[[Tensor], Tensor] | None = None, on_step: StepCallback | None = None,
               on_step_at: int | Collection[int] = 1, data_identity: dict[str, Any] | None = None) -> tuple[SAE | list[SAE], TrainResult]:
    """Train ``saes`` (one SAE, or a list trained in lockstep on the same batches) on ``data``:

    - an :class:`assay.store.ActivationStore`, with ``site``, ``batch_size``, ``seed``: batches in the
      store's seeded order, as many epochs as ``cfg.steps`` needs (:func:`~assay.dictionaries.batches.store_batches`); transcoders
      also need ``output_site`` (read at the same rows). BOS and
      padding rows (store position −1) are left out unless ``exclude_special=False``; ``keep_rows``
      drops more rows;
    - a callable ``start_batch -> iterator of [B, d] tensors`` (transcoders: of (x, y) pairs);
    - an iterable of ``[B, d]`` tensors or (x, y) pairs (batches already consumed before a resume are
      skipped).

    These last two carry no positions: leave BOS rows out of them yourself (:func:`~assay.dictionaries.batches.live_batches` does).
    ``on_step(step, saes)`` watches training at the steps ``on_step_at`` picks (:meth:`SAETrainer.fit`).
    ``data_identity``: what a callable or iterable yields (JSON values, e.g. the stores and sites it reads), recorded
    in checkpoints and checked on resume like a store's site and seed (a store records its own).
    Resumes from ``checkpoint`` when it exists. Returns the finalized (input-scale-folded) SAE(s) and
    the result: one SAE in, one SAE out; a list in, a list out (in the same order).
    """
    trainer = SAETrainer(saes, cfg)
    from_store = hasattr(data, "batches") and hasattr(data, "batch_rows")
    if from_store:
        trainer.data_identity = {"site": site, "batch_size": batch_size, "seed": seed,
                                 "exclude_special": exclude_special}
        if output_site is not None:
            trainer.data_identity["output_site"] = output_site
    elif data_identity is not None:
        trainer.data_identity = dict(data_identity)
    if checkpoint is not None and resume and (Path(checkpoint) / "config.json").exists():
        trainer.load_checkpoint(checkpoint)
    start = trainer.step
    where = None
    if from_store:
        if site is None or batch_size is None:
            raise ValueError("training from a store needs site= and batch_size=")
        if data.d(site) != trainer.d_in:
            raise ValueError(f"store site {site!r} has d={data.d(site)} but the SAE(s) expect d_in={trainer.d_in}; "
                             "build the SAE with d_in equal to the store's width")
        if trainer.paired != (output_site is not None):
            raise ValueError("a transcoder needs output_site= (its target site in the same store); an SAE takes "
                             "none" if trainer.paired else
                             f"output_site={output_site!r} was given but the model(s) are SAEs; build a transcoder "
                             "(e.g. 'topk_transcoder') to map one site to another")
        if output_site is not None:
            if output_site == site:
                raise ValueError(f"input and output site are both {site!r}: a transcoder maps one site to another "
                                 "(for x → x train an SAE)")
            if data.d(output_site) != trainer.d_out:
                raise ValueError(f"store site {output_site!r} has d={data.d(output_site)} but the transcoder(s) "
                                 f"expect d_out={trainer.d_out}; build them with d_out equal to that width")
        store = data
        per_epoch = store.n_batches(batch_size)
        if per_epoch == 0:
            raise ValueError(f"batch_size={batch_size} exceeds the store's {store.n_rows} rows")
        n_batches = max(cfg.steps, start)
        batches, rows_of = store_batches(store, site, batch_size=batch_size, seed=seed, start_batch=start,
                                         n_batches=n_batches, exclude_special=exclude_special, keep_rows=keep_rows,
                                         output_site=output_site)

        def where(step: int, bad: Tensor) -> str:
            rows = rows_of(step)
            shards = sorted({int(r) // store.shard_rows for r in rows[bad]})
            return f" (store {store.path}, site {site!r}, shard(s) {shards}, store rows {rows[bad][:5].tolist()})"
    elif callable(data):
        batches = data(start)
    else:
        import itertools

        batches = itertools.islice(iter(data), start, None)
    result = trainer.fit(batches, checkpoint=checkpoint, where=where, on_step=on_step, on_step_at=on_step_at)
    trained = trainer.finalize()
    return (trained[0] if isinstance(saes, SAE) else trained), result
