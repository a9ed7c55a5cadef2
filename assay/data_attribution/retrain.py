"""Retraining harness: train models on many random subsets and record target values (LDS ground truth).

Park et al. 2023 (TRAK) define the linear datamodeling score on models retrained on random α-subsets
of the training set. :func:`retrain` draws M seeded subsets (exactly ⌊αn⌉ points each), trains R
models per subset with ``train_eval(indices, seed) -> values [m]`` (e.g. −loss on each target),
runs them in parallel processes (every run, serial or parallel, on one intra-op thread: reproducible
timings, no oversubscription), and caches every (subset, run) result on disk atomically beside a
manifest (config, subset masks, key), so an interrupted run resumes where it stopped and a finished
one is never recomputed. Each job's seed is a function of (seed, subset, run) only (:func:`run_seed`),
so the values do not depend on the number of worker processes, and the cache is shared whatever that
number. :func:`retrain_distributed` spreads the jobs over ``torch.distributed`` ranks (``torchrun``;
Li et al. 2020, "PyTorch Distributed") with the same result. ``train_eval`` must be picklable (a
module-level function or a ``functools.partial`` of one).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from assay.artifact import atomic_write_text
from assay.config import to_dict
from assay.stats import softmax_regression
from assay.store.ranks import exchange_status, rank_block, run_status

__all__ = [
    "RetrainConfig",
    "RetrainResult",
    "subset_masks",
    "run_seed",
    "retrain",
    "retrain_distributed",
    "fit_logreg",
    "logreg_target_values",
    "fit_mlp",
    "mlp_target_values",
]

TrainEval = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class RetrainConfig:
    """How many subsets to retrain on, and how."""

    n_subsets: int = 50
    """M, the number of random training subsets."""
    fraction: float = 0.5
    """α, the fraction of training points in each subset; strictly between 0 and 1."""
    runs_per_subset: int = 1
    """R, models trained per subset (their target values are averaged)."""
    seed: int = 0
    """Seed of the subsets and of the training runs."""
    n_workers: int = 1
    """Parallel worker processes (1: run in this process)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"subset fraction must be strictly between 0 and 1, got {self.fraction}")
        if self.n_subsets < 2:
            raise ValueError(f"n_subsets must be ≥ 2 (LDS is a rank correlation over subsets), got {self.n_subsets}")
        if self.runs_per_subset < 1 or self.n_workers < 1:
            raise ValueError("runs_per_subset and n_workers must be ≥ 1")
        if self.runs_per_subset > 101:
            raise ValueError(f"runs_per_subset must be ≤ 101 (run_seed gives distinct seeds up to there), got "
                             f"{self.runs_per_subset}")


class RetrainResult(NamedTuple):
    """Retraining ground truth."""

    masks: torch.Tensor
    """``[M, n]`` bool: which training points each subset holds."""
    values: torch.Tensor
    """``[M, m]`` target values (mean over the R runs of each subset)."""


def subset_masks(n_train: int, n_subsets: int, fraction: float, seed: int) -> torch.Tensor:
    """``[M, n]`` bool masks of seeded uniformly random subsets of size round(fraction · n)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"subset fraction must be strictly between 0 and 1, got {fraction}")
    g = torch.Generator().manual_seed(int(seed))
    size = max(1, round(fraction * n_train))
    masks = torch.zeros(n_subsets, n_train, dtype=torch.bool)
    for j in range(n_subsets):
        masks[j, torch.randperm(n_train, generator=g)[:size]] = True
    return masks


def _save_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run_one(train_eval: TrainEval, idx: np.ndarray, seed: int) -> np.ndarray:
    torch.set_num_threads(1)
    return torch.as_tensor(train_eval(torch.from_numpy(idx), seed)).detach().double().numpy()


def run_seed(seed: int, subset: int, run: int) -> int:
    """The seed of run ``run`` on subset ``subset``: a function of the job alone, never of the worker or rank
    that runs it, so results do not depend on how the jobs are spread."""
    return int(seed) * 1_000_003 + subset * 101 + run


def _open(n_train: int, cfg: RetrainConfig, masks: torch.Tensor | None, cache_dir: str | Path | None,
          key: str) -> tuple[torch.Tensor, Path | None]:
    """The subset masks (drawn or checked) and the cache folder (created, or checked to be this experiment's).
    The folder's name and manifest leave out ``n_workers``: results do not depend on it."""
    if masks is None:
        masks = subset_masks(n_train, cfg.n_subsets, cfg.fraction, cfg.seed)
    elif masks.shape != (cfg.n_subsets, n_train) or masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool [{cfg.n_subsets}, {n_train}], got {tuple(masks.shape)} {masks.dtype}")
    if cache_dir is None:
        return masks, None
    mask_digest = hashlib.sha256(masks.numpy().tobytes()).hexdigest()[:16]
    config = {k: v for k, v in to_dict(cfg).items() if k != "n_workers"}
    digest = hashlib.sha256(json.dumps([key, config, n_train, mask_digest], sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / f"retrain-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"key": key, "config": config, "n_train": n_train, "masks_sha256": mask_digest}
    mf = folder / "manifest.json"
    if mf.exists() and json.loads(mf.read_text()) != manifest:
        raise ValueError(f"{mf} describes a different experiment; use another cache_dir")
    if not mf.exists():
        _save_atomic(folder / "masks.npy", masks.numpy())
        atomic_write_text(mf, json.dumps(manifest, indent=1))
    return masks, folder


def _run_jobs(train_eval: TrainEval, jobs: list[tuple[int, int]], masks: torch.Tensor, cfg: RetrainConfig,
              folder: Path | None) -> dict[tuple[int, int], np.ndarray]:
    """Every job's target values: read from ``folder`` when cached, else computed (``cfg.n_workers`` processes)
    and cached atomically as it finishes."""
    results: dict[tuple[int, int], np.ndarray] = {}
    for j, r in jobs if folder is not None else ():
        f = folder / f"subset{j:05d}_run{r:02d}.npy"
        if f.exists():
            results[(j, r)] = np.load(f, allow_pickle=False)
    todo = [jr for jr in jobs if jr not in results]
    args = [(masks[j].nonzero().squeeze(1).numpy(), run_seed(cfg.seed, j, r)) for j, r in todo]

    def store(jr: tuple[int, int], value: np.ndarray) -> None:
        results[jr] = value
        if folder is not None:
            _save_atomic(folder / f"subset{jr[0]:05d}_run{jr[1]:02d}.npy", value)

    if cfg.n_workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=cfg.n_workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_run_one, train_eval, idx, seed): jr for jr, (idx, seed) in zip(todo, args)}
            for fut, jr in futures.items():
                store(jr, fut.result())
    elif todo:
        threads = torch.get_num_threads()
        try:  # one intra-op thread per training run, as in the worker processes (_run_one)
            for jr, (idx, seed) in zip(todo, args):
                store(jr, _run_one(train_eval, idx, seed))
        finally:
            torch.set_num_threads(threads)
    return results


def _jobs(cfg: RetrainConfig) -> list[tuple[int, int]]:
    return [(j, r) for j in range(cfg.n_subsets) for r in range(cfg.runs_per_subset)]


def _values(results: dict[tuple[int, int], np.ndarray], cfg: RetrainConfig) -> torch.Tensor:
    return torch.from_numpy(np.stack(
        [np.mean([results[(j, r)] for r in range(cfg.runs_per_subset)], axis=0) for j in range(cfg.n_subsets)]))


def retrain(
    train_eval: TrainEval,
    n_train: int,
    cfg: RetrainConfig,
    *,
    cache_dir: str | Path | None = None,
    key: str = "",
    masks: torch.Tensor | None = None,
) -> RetrainResult:
    """Train on ``cfg.n_subsets`` random subsets (``cfg.runs_per_subset`` seeds each) and collect target
    values; results are cached under ``cache_dir/<hash of key and cfg>`` and reused on resume.

    ``key`` should name the data, model and training recipe so different experiments never share a cache.
    ``masks [M, n]`` replaces the random subsets (e.g. unions of groups for group LDS; M = cfg.n_subsets).
    """
    masks, folder = _open(n_train, cfg, masks, cache_dir, key)
    return RetrainResult(masks, _values(_run_jobs(train_eval, _jobs(cfg), masks, cfg, folder), cfg))


def retrain_distributed(
    train_eval: TrainEval,
    n_train: int,
    cfg: RetrainConfig,
    *,
    cache_dir: str | Path | None = None,
    key: str = "",
    masks: torch.Tensor | None = None,
    group: Any = None,
) -> RetrainResult:
    """:func:`retrain` with the (subset, run) jobs split into contiguous blocks over the ranks of ``group``
    (``None``: the default process group, which must be initialised; gloo), each rank running its block on
    ``cfg.n_workers`` processes. Call it on every rank with the same arguments; every rank returns the whole
    result, equal to :func:`retrain`'s (each job's seed is :func:`run_seed` of the job). With ``cache_dir`` on
    a filesystem every rank sees, a re-run resumes; a rank that fails or dies is named on every live rank."""
    import torch.distributed as dist

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    jobs = _jobs(cfg)
    opened, status = (None, "")
    if rank == 0:  # rank 0 creates the cache folder and its manifest before the others check them
        opened, status = run_status(_open, n_train, cfg, masks, cache_dir, key)
    _check(exchange_status(status, group))
    if rank != 0:
        opened, status = run_status(_open, n_train, cfg, masks, cache_dir, key)
    mine = {}
    if opened is not None:
        block = rank_block(len(jobs), rank, world)
        mine, status = run_status(_run_jobs, train_eval, jobs[block.start : block.stop], opened[0], cfg, opened[1])
    _check(exchange_status(status, group))
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine, group=group)
    return RetrainResult(opened[0], _values({jr: v for part in gathered for jr, v in part.items()}, cfg))


def _check(verdict: str) -> None:
    if verdict:
        raise RuntimeError(f"distributed retraining failed: {verdict}. Re-run the same command to resume (finished "
                           "runs are kept when cache_dir is given)")


def fit_logreg(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, l2: float = 1e-2, max_iter: int = 200) -> torch.nn.Linear:
    """Multinomial logistic regression minimising mean cross-entropy + (l2/2)‖W, b‖² (the objective of
    :func:`assay.data_attribution.influence.objective_fn`): :func:`assay.stats.softmax_regression` with
    C = 1/(N·l2) and the intercept penalised, from zero (deterministic; strongly convex for l2 > 0)."""
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    C = 1.0 / (x.shape[0] * l2) if l2 > 0 else math.inf
    fit = softmax_regression(x, y, n_classes, C=C, penalize_intercept=True, max_iter=max_iter)
    model = torch.nn.utils.skip_init(torch.nn.Linear, x.shape[1], n_classes, dtype=x.dtype)  # draws nothing
    with torch.no_grad():
        model.weight.copy_(fit.weight)
        model.bias.copy_(fit.bias)
    return model.eval()


def logreg_target_values(
    idx: torch.Tensor,
    seed: int,
    *,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_target: torch.Tensor,
    y_target: torch.Tensor,
    n_classes: int,
    l2: float = 1e-2,
) -> torch.Tensor:
    """A ``train_eval`` for :func:`retrain`: fit logistic regression on ``idx``, return −loss per target
    (``seed`` is unused: the fit is deterministic)."""
    model = fit_logreg(x_train[idx], y_train[idx], n_classes, l2=l2)
    with torch.no_grad():
        return -torch.nn.functional.cross_entropy(model(x_target), y_target, reduction="none")


def fit_mlp(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, seed: int, epochs: int = 30, hidden: int = 64) -> torch.nn.Module:
    """A seeded MLP ``d-hidden-n_classes`` fitted with ``assay.models.fit.fit_classifier`` (AdamW)."""
    from assay.models.fit import fit_classifier
    from assay.models.mlp import MLP

    model = MLP(x.shape[1], (hidden,), n_classes, generator=torch.Generator().manual_seed(int(seed)))
    return fit_classifier(model, x, y, epochs=epochs, batch_size=64, lr=3e-3, weight_decay=1e-4, seed=int(seed))


def mlp_target_values(
    idx: torch.Tensor,
    seed: int,
    *,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_target: torch.Tensor,
    y_target: torch.Tensor,
    n_classes: int,
    epochs: int = 30,
) -> torch.Tensor:
    """A ``train_eval`` for :func:`retrain`: fit :func:`fit_mlp` on ``idx`` with ``seed``, return −loss per target."""
    model = fit_mlp(x_train[idx], y_train[idx], n_classes, seed=seed, epochs=epochs)
    with torch.no_grad():
        return -torch.nn.functional.cross_entropy(model(x_target), y_target, reduction="none")
