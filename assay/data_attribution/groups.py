"""Groupings of training points for group attribution (GGDA).

Ley, Srinivas, Zhang, Rusak & Lakkaraju 2024, "Generalized Group Data Attribution"
(arXiv 2410.09940): attribute to K groups instead of n points. Gradient-based attributors are linear
in the per-example gradients, so a group's feature is the gradient of its summed loss,
g_G = ∇_θ Σ_{i∈G} ℓ(z_i) (see :func:`assay.data_attribution.grads.group_grads`), which costs one
batched backward pass per group instead of per-example gradients. Groupings: random, by class, by k-means on
(projected) gradients ("Grad-K-Means", the paper's most faithful), within class, or user-given.
"""

from __future__ import annotations

import torch

__all__ = ["check_groups", "random_groups", "groups_by_class", "kmeans", "groups_by_kmeans", "group_sum"]


def check_groups(groups: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """Validate a user grouping ``[n]`` of ids 0..K−1 (every group non-empty); return it and K."""
    groups = torch.as_tensor(groups)
    if groups.shape != (n,) or groups.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"groups must be an integer tensor of shape [{n}], got {tuple(groups.shape)} {groups.dtype}")
    groups = groups.long()
    if n and int(groups.min()) < 0:
        raise ValueError("group ids must be ≥ 0")
    k = int(groups.max()) + 1 if n else 0
    sizes = torch.bincount(groups, minlength=k)
    if (sizes == 0).any():
        empty = (sizes == 0).nonzero().squeeze(1).tolist()[:5]
        raise ValueError(f"group ids must be 0..K−1 with no empty group; ids {empty} are empty — relabel them")
    return groups, k


def random_groups(n: int, size: int, *, generator: torch.Generator) -> torch.Tensor:
    """``n`` points dealt at random into ⌈n / size⌉ groups whose sizes differ by at most one."""
    if n < 1 or size < 1:
        raise ValueError(f"random groups need n ≥ 1 points and size ≥ 1, got n = {n}, size = {size}")
    k = -(-n // size)
    out = torch.empty(n, dtype=torch.long)
    out[torch.randperm(n, generator=generator)] = torch.arange(n) % k
    return out


def groups_by_class(targets: torch.Tensor, *, per_class: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """One group per class (``per_class=1``), or each class split at random into ``per_class`` groups."""
    targets = torch.as_tensor(targets).long()
    classes = torch.unique(targets)
    out = torch.empty_like(targets)
    gid = 0
    for c in classes.tolist():
        idx = (targets == c).nonzero().squeeze(1)
        if per_class > 1:
            idx = idx[torch.randperm(idx.numel(), generator=generator)]
        parts = torch.tensor_split(idx, min(per_class, idx.numel()))
        for part in parts:
            out[part] = gid
            gid += 1
    return out


def kmeans(x: torch.Tensor, k: int, *, iters: int = 50, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns labels ``[n]`` relabelled 0..K'−1 (no empty group)."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 ≤ k ≤ n = {n}, got k = {k}")
    x = x.float()
    centers = [x[torch.randint(0, n, (1,), generator=generator)].squeeze(0)]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full((n,), 1.0 / n)
        c = x[torch.multinomial(probs, 1, generator=generator)].squeeze(0)
        centers.append(c)
        d2 = torch.minimum(d2, ((x - c) ** 2).sum(1))
    cent = torch.stack(centers)
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(x, cent).argmin(1)
        if torch.equal(new, labels) and _ > 0:
            break
        labels = new
        for j in range(k):
            mask = labels == j
            if mask.any():
                cent[j] = x[mask].mean(0)
    return torch.unique(labels, return_inverse=True)[1]


def groups_by_kmeans(
    features: torch.Tensor,
    k: int,
    *,
    targets: torch.Tensor | None = None,
    generator: torch.Generator,
    normalize: bool = True,
) -> torch.Tensor:
    """Grad-K-Means: cluster (projected) gradient features into ``k`` groups; with ``targets``, cluster
    within each class (k split over classes by size)."""
    f = torch.nn.functional.normalize(features, dim=1) if normalize else features
    if targets is None:
        return kmeans(f, k, generator=generator)
    targets = torch.as_tensor(targets).long()
    classes, counts = torch.unique(targets, return_counts=True)
    out = torch.empty(targets.shape[0], dtype=torch.long)
    offset = 0
    for c, cnt in zip(classes.tolist(), counts.tolist()):
        idx = (targets == c).nonzero().squeeze(1)
        kc = max(1, min(cnt, round(k * cnt / targets.shape[0])))
        lab = kmeans(f[idx], kc, generator=generator)
        out[idx] = lab + offset
        offset += int(lab.max()) + 1
    return out


def group_sum(per_point: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sum rows of ``per_point [n, ...]`` within groups → ``[K, ...]`` (a pointwise score summed per group)."""
    out = torch.zeros((n_groups, *per_point.shape[1:]), dtype=per_point.dtype)
    return out.index_add_(0, groups, per_point)
