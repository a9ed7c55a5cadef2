"""Sharded TRAK and influence functions: training examples split across ``torch.distributed`` ranks.

Park, Georgiev, Ilyas, Leclerc & Madry 2023, "TRAK: Attributing Model Behavior at Scale" (ICML 2023), run on
PyTorch's own engine (``torch.distributed``, started by ``torchrun``; Li et al. 2020, "PyTorch Distributed").
TRAK's train side is a sum over examples, so it splits by rows. With rank r holding the contiguous block B_r of
train rows (:func:`assay.store.ranks.rank_block`), per model k:

    Φ_k[B_r], Q_k[B_r]                    featurised by rank r only (resumable, on disk)
    X_k = Σ_r Φ_k[B_r]ᵀ Φ_k[B_r]          one all-reduce of the stacked float64 kernels of all K models
    S[B_r] = mean_k Φ_k[B_r] Xinv_k G_kᵀ ⊙ mean_k Q_k[B_r]      (:func:`assay.data_attribution.trak.trak_finalize`)

and the score rows are summed into one ``[n, m]`` matrix on every rank (each rank adds its rows to zeros, so the
sum is exact). The target features G_k are computed by every rank (targets are few; no communication). Scores
equal single-process :func:`assay.data_attribution.trak.trak` to float rounding: only the order of the float64
kernel sum and the batching of the featurisation differ.

**Files and resume.** ``out_dir/meta.json`` records the run (world size, n, models' fingerprints, data hash,
projection); ``out_dir/model_<k>/rank_<r>/`` is rank r's :class:`~assay.data_attribution.featstore.FeatureStore`
for model k, with per-example done flags set after each batch is flushed. Re-running the same command resumes:
each rank computes only its batches not yet done. A different world size is refused (each rank's block depends
on it), and so is a different model, data set or projection.

**Failures.** After setup and after featurisation every rank reports its status to rank 0
(:func:`assay.store.ranks.exchange_status`), so a rank that died or hangs past the group's timeout is named and
every live rank raises one :class:`ShardedError`; the features finished so far are kept.

**Influence functions** (Koh & Liang 2017, "Understanding Black-box Predictions via Influence Functions";
:mod:`assay.data_attribution.influence`) split the same way: H of the mean training loss is Σ_r (n_r/n) H_r over
the ranks' blocks, so :func:`influence_sharded` reduces the weighted block Hessians once (explicit solver) or
the weighted block Hessian-vector products once per conjugate-gradient iteration, solves for the targets on
every rank, and each rank scores its own train rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from assay.artifact import atomic_write_text
from assay.config import to_dict
from assay.data_attribution.featstore import FeatureStore
from assay.data_attribution.featurize import Method, check_inputs
from assay.data_attribution.grads import per_example_grads, select_parameters
from assay.data_attribution.influence import (
    influence_scores,
    loss_hessian,
    make_hvp,
    solve_cg,
    solve_explicit,
)
from assay.data_attribution.projection import ProjectionConfig
from assay.data_attribution.trak import trak_featurize, trak_finalize, trak_kernel, trak_scores
from assay.store.ranks import exchange_status, rank_block, run_status
from assay.store.writer import model_fingerprint

__all__ = ["ShardedError", "ShardedTrak", "trak_sharded", "influence_sharded", "META_FILE"]

META_FILE = "meta.json"
"""The run record of a sharded TRAK folder."""


class ShardedError(RuntimeError):
    """A sharded TRAK or influence run failed on some rank (named in the message), or a TRAK folder belongs to
    another run."""


class ShardedTrak(NamedTuple):
    """Sharded TRAK's result on one rank."""

    scores: torch.Tensor
    """TRAK scores ``[n_train, n_targets]``, the same on every rank."""
    resumed_rows: int
    """Feature rows (summed over models) of this rank's block found already done on disk."""
    computed_rows: int
    """Feature rows (summed over models) this rank featurised in this run."""


def _tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _start(out: Path, meta: dict[str, Any]) -> None:
    """Rank 0: record a new run, or check that ``out`` holds this run's features."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / META_FILE
    if not path.exists():
        atomic_write_text(path, json.dumps(meta, indent=1, sort_keys=True))
        return
    old = json.loads(path.read_text())
    if old.get("world_size") != meta["world_size"]:
        raise ShardedError(
            f"{out} holds sharded TRAK features from a run of {old.get('world_size')} ranks; this run has "
            f"{meta['world_size']}. Each rank's block of rows depends on the number of ranks: resume with "
            f"`torchrun --nproc-per-node {old.get('world_size')}` (or as many ranks), or use another out_dir")
    diff = [f"{key}: folder has {old.get(key)!r}, this run {value!r}" for key, value in meta.items()
            if old.get(key) != value]
    if diff:
        raise ShardedError(f"{out} holds features of a different run; use another out_dir:\n  " + "\n  ".join(diff))


def _featurize(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor],
               out: Path, rank: int, rows: range, width: int, kw: dict[str, Any]):
    """This rank's features of its block for every model (resuming), its kernels, and the target features."""
    phis, qs, kernels, gs, resumed, computed = [], [], [], [], 0, 0
    for k, model in enumerate(models):
        store = FeatureStore(out / f"model_{k:05d}" / f"rank_{rank:05d}", n=len(rows), k=width,
                             identity={"model": k, "rows": [rows.start, rows.stop]})
        done = int(store.done.sum())
        phi, q = trak_featurize(model, x, y, store=store, **kw)
        resumed, computed = resumed + done, computed + len(rows) - done
        phis.append(phi)
        qs.append(q)
        kernels.append(trak_kernel(phi))
        gs.append(trak_featurize(model, *target, **kw)[0])
    return phis, qs, torch.stack(kernels), gs, resumed, computed


def _check(verdict: str, out: Path) -> None:
    if verdict:
        raise ShardedError(f"sharded TRAK in {out} failed: {verdict}. Re-run the same command with the same number "
                               "of processes to resume (finished features are kept)")


def trak_sharded(
    models: Sequence[nn.Module],
    train: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    *,
    projection: ProjectionConfig,
    out_dir: str | Path,
    params: Sequence[str] | None = None,
    lambda_reg: float = 0.0,
    method: Method = "auto",
    batch_size: int = 256,
    group: Any = None,
) -> ShardedTrak:
    """:func:`assay.data_attribution.trak.trak` with the train rows split over the ranks of ``group`` (``None``:
    the default process group, which must be initialised; gloo, or a gloo side group of an NCCL job, e.g. from
    :func:`assay.store.ranks.torchrun_group`). Call it on every rank with the same arguments; rank r featurises
    only its block of ``train`` into ``out_dir`` (resumable) and every rank returns the full scores."""
    import torch.distributed as dist

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    out = Path(out_dir)
    n = int(train[0].shape[0])
    rows = rank_block(n, rank, world)
    kw = dict(projection=projection, params=params, method=method, batch_size=batch_size)
    status = ""
    try:
        if not models:
            raise ValueError("need at least one model")
        if n < world:
            raise ValueError(f"{n} train examples cannot be split over {world} ranks; use at most {n} ranks")
        check_inputs(target[0], tuple(train[0].shape[1:]), "target inputs")
        sel = select_parameters(models[0], params)
        width = projection.dim if projection.dim is not None else sel.numel
        if rank == 0:
            meta = {"world_size": world, "n_train": n, "width": width, "projection": to_dict(projection),
                    "params": list(sel.names), "method": method, "models": [model_fingerprint(m) for m in models],
                    "train_sha256": _tensor_digest(*train)}
            _start(out, meta)
    except Exception as e:  # noqa: BLE001 - reported to every rank by exchange_status
        status = f"{type(e).__name__}: {e}"
    _check(exchange_status(status, group), out)
    x, y = train[0][rows.start : rows.stop], train[1][rows.start : rows.stop]
    done, status = run_status(_featurize, models, x, y, target, out, rank, rows, width, kw)
    _check(exchange_status(status, group), out)
    phis, qs, kernels, gs, resumed, computed = done
    dist.all_reduce(kernels, group=group)  # the one reduction of the kernels, all K models at once
    cks = [trak_finalize(phi, q, lambda_reg=lambda_reg, kernel=kernel) for phi, q, kernel in zip(phis, qs, kernels)]
    scores = torch.zeros(n, target[0].shape[0], dtype=phis[0].dtype)
    scores[rows.start : rows.stop] = trak_scores(cks, gs)
    dist.all_reduce(scores, group=group)  # each rank adds its rows to zeros: exact
    return ShardedTrak(scores, resumed, computed)


def influence_sharded(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    *,
    solver: Literal["explicit", "cg"] = "explicit",
    damping: float = 0.0,
    l2: float = 0.0,
    params: Sequence[str] | None = None,
    max_iter: int = 100,
    group: Any = None,
) -> torch.Tensor:
    """Influence scores ``[n_train, n_targets]`` = G_train (H + λI)⁻¹ G_targetᵀ (H: the Hessian of the mean training
    loss + (l2/2)‖θ‖², as :func:`assay.data_attribution.influence.objective_fn`), with the train rows split over the
    ranks of ``group``; every rank returns the full scores. ``solver="explicit"`` all-reduces the weighted block
    Hessians once (tiny models), ``"cg"`` all-reduces the weighted block Hessian-vector products once per
    iteration (every rank runs the same iterations on the same reduced values)."""
    import torch.distributed as dist

    if solver not in ("explicit", "cg"):
        raise ValueError(f"solver must be 'explicit' or 'cg' (LiSSA samples batches: not sharded), got {solver!r}")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    n = int(train[0].shape[0])
    rows = rank_block(n, rank, world)
    weight = len(rows) / n
    x, y = train[0][rows.start : rows.stop], train[1][rows.start : rows.stop]
    prepared, status = None, ""
    try:
        if n < world:
            raise ValueError(f"{n} train examples cannot be split over {world} ranks; use at most {n} ranks")
        check_inputs(target[0], tuple(train[0].shape[1:]), "target inputs")
        sel = select_parameters(model, params)
        prepared = (sel, per_example_grads(model, x, y, params=sel), per_example_grads(model, *target, params=sel).T)
    except Exception as e:  # noqa: BLE001 - reported to every rank by exchange_status
        status = f"{type(e).__name__}: {e}"
    verdict = exchange_status(status, group)
    if verdict:
        raise ShardedError(f"sharded influence failed: {verdict}")
    sel, g_train, b = prepared
    if solver == "explicit":
        h = loss_hessian(model, x, y, params=sel, l2=l2) * weight
        dist.all_reduce(h, group=group)  # the one reduction of the Hessian
        solved = solve_explicit(h, b, damping=damping)
    else:
        local = make_hvp(model, x, y, params=sel, l2=l2)

        def hvp(v: torch.Tensor) -> torch.Tensor:
            out = local(v) * weight
            dist.all_reduce(out, group=group)
            return out

        solved = solve_cg(hvp, b, damping=damping, max_iter=max_iter)
    scores = torch.zeros(n, b.shape[1], dtype=g_train.dtype)
    scores[rows.start : rows.stop] = influence_scores(g_train, solved)
    dist.all_reduce(scores, group=group)  # each rank adds its rows to zeros: exact
    return scores
