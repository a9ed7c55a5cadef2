"""Classical baselines as Lens-satisfying dictionaries: PCA, ICA, NMF, and a random dictionary (chance).

Every baseline has ``encode(h) -> z`` (non-negative codes), ``decode(z) -> h`` and ``atoms [n, d]``
(unit-free decoder rows) so the bench scores it exactly like an SAE.

- PCA (Pearson 1901; Hotelling 1933): top-k principal directions V of the centred training data;
  the signed coordinate u = (h − μ)Vᵀ is split into ``[ReLU(u), ReLU(−u)]`` so the codes are
  non-negative like an SAE's and each direction appears as the atom pair ±V_j (2k atoms, L0 ≤ k):
  decode(z⁺, z⁻) = (z⁺ − z⁻)V + μ.
- ICA (Hyvärinen & Oja 2000, "Independent component analysis: algorithms and applications";
  scikit-learn FastICA): u = (h − μ)Wᵀ with the unmixing W, atoms the mixing columns A, the same ±
  split; k ≤ d.
- NMF (Lee & Seung 1999, "Learning the parts of objects by non-negative matrix factorization";
  scikit-learn): activations are made non-negative by the split h ↦ [ReLU(h − μ), ReLU(μ − h)]
  (2d columns), factorised as W H; codes W (non-negative least squares per row), atoms
  H[:, :d] − H[:, d:].
- Random (chance): k-sparse codes TopK(ReLU((h − μ)Dᵀ)) on random unit atoms D, decode zD + μ —
  an untrained dictionary; every ground-truth score of a real method should beat it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["SignedLinearLens", "NMFLens", "RandomLens", "fit_pca", "fit_ica", "fit_nmf", "random_dictionary",
           "fit_baseline", "BASELINES"]

BASELINES = ("pca", "ica", "nmf", "random")
"""Names of the baselines :func:`fit_baseline` builds."""


class SignedLinearLens:
    """u = (h − μ) Wᵀ, z = [ReLU(u), ReLU(−u)];  decode(z) = (z⁺ − z⁻) A + μ;  atoms = [A; −A]."""

    def __init__(self, mean: Tensor, encoder: Tensor, decoder: Tensor) -> None:
        self.mean, self.encoder, self.decoder = mean.float(), encoder.float(), decoder.float()
        self.atoms = torch.cat([self.decoder, -self.decoder])
        """Decoder rows ``[2k, d]``."""

    def encode(self, h: Tensor) -> Tensor:
        u = (h.float() - self.mean) @ self.encoder.t()
        return torch.cat([u.relu(), (-u).relu()], -1)

    def decode(self, z: Tensor) -> Tensor:
        k = self.decoder.shape[0]
        return (z[..., :k] - z[..., k:]) @ self.decoder + self.mean


class NMFLens:
    """NMF on the sign-split activations; codes by non-negative least squares against the fitted H."""

    def __init__(self, model, mean: Tensor) -> None:
        self.model = model
        self.mean = mean.float()
        H = torch.as_tensor(model.components_, dtype=torch.float32)
        d = self.mean.shape[0]
        self.H = H
        self.atoms = H[:, :d] - H[:, d:]
        """Decoder rows ``[k, d]`` (the split folded back)."""

    def encode(self, h: Tensor) -> Tensor:
        c = h.float() - self.mean
        flat = torch.cat([c.relu(), (-c).relu()], -1).reshape(-1, 2 * c.shape[-1])
        w = torch.as_tensor(self.model.transform(flat.double().numpy()), dtype=torch.float32)
        return w.reshape(*h.shape[:-1], -1)

    def decode(self, z: Tensor) -> Tensor:
        return z.float() @ self.atoms + self.mean


class RandomLens:
    """TopK(ReLU((h − μ)Dᵀ)) on random unit atoms D; decode zD + μ (a chance-level dictionary)."""

    def __init__(self, atoms: Tensor, mean: Tensor, k: int) -> None:
        self.atoms, self.mean, self.k = atoms.float(), mean.float(), k

    def encode(self, h: Tensor) -> Tensor:
        pre = ((h.float() - self.mean) @ self.atoms.t()).relu()
        v, i = pre.topk(min(self.k, pre.shape[-1]), dim=-1)
        return torch.zeros_like(pre).scatter(-1, i, v)

    def decode(self, z: Tensor) -> Tensor:
        return z.float() @ self.atoms + self.mean


def _check(x: Tensor, k: int, what: str) -> Tensor:
    if x.ndim != 2:
        raise ValueError(f"{what} needs training activations [N, d], got shape {tuple(x.shape)}")
    if k <= 0:
        raise ValueError(f"{what} needs a positive number of components, got {k}")
    return x.detach().double().cpu()


def fit_pca(x: Tensor, k: int) -> SignedLinearLens:
    """PCA with ``k`` ≤ d components (exact SVD of the centred data)."""
    x = _check(x, k, "PCA")
    if k > x.shape[1]:
        raise ValueError(f"PCA has at most d={x.shape[1]} components, asked for {k}")
    mu = x.mean(0)
    _, _, vt = torch.linalg.svd(x - mu, full_matrices=False)
    return SignedLinearLens(mu, vt[:k], vt[:k])


def fit_ica(x: Tensor, k: int, *, seed: int = 0, max_iter: int = 400) -> SignedLinearLens:
    """FastICA with ``k`` ≤ d components (unit-variance whitening)."""
    import warnings

    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    x = _check(x, k, "ICA")
    if k > x.shape[1]:
        raise ValueError(f"ICA has at most d={x.shape[1]} components, asked for {k}")
    ica = FastICA(n_components=k, whiten="unit-variance", random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # an unconverged ICA is still a valid baseline
        ica.fit(x.numpy())
    mu = torch.as_tensor(ica.mean_)
    unmix = torch.as_tensor(ica.components_)  # [k, d]: s = (x − μ) Wᵀ
    mix = torch.as_tensor(ica.mixing_).t()  # [k, d]: x ≈ s A + μ
    return SignedLinearLens(mu, unmix, mix)


def fit_nmf(x: Tensor, k: int, *, seed: int = 0, max_iter: int = 300) -> NMFLens:
    """NMF with ``k`` components on the sign-split centred activations."""
    import warnings

    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    x = _check(x, k, "NMF")
    mu = x.mean(0)
    c = x - mu
    split = torch.cat([c.clamp(min=0), (-c).clamp(min=0)], 1)
    model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(split.numpy())
    return NMFLens(model, mu)


def random_dictionary(x: Tensor, n: int, k: int, *, seed: int = 0) -> RandomLens:
    """``n`` random unit atoms (seeded), k-sparse codes; μ from ``x``."""
    x = _check(x, n, "the random dictionary")
    # offset the seed: a plain manual_seed(seed) would draw exactly the planted directions of a world
    # built with the same seed (they are randn rows too), making "chance" perfect
    g = torch.Generator().manual_seed(1_000_003 + 7919 * int(seed))
    D = torch.randn(n, x.shape[1], generator=g, dtype=torch.float64)
    return RandomLens(D / D.norm(dim=1, keepdim=True), x.mean(0), k)


def fit_baseline(kind: Literal["pca", "ica", "nmf", "random"], x: Tensor, *, n: int, k: int | None = None,
                 seed: int = 0):
    """Fit baseline ``kind`` on training activations ``x [N, d]``: ``n`` components (atoms for the random
    dictionary, which also takes its sparsity ``k``, default n)."""
    if kind == "pca":
        return fit_pca(x, n)
    if kind == "ica":
        return fit_ica(x, n, seed=seed)
    if kind == "nmf":
        return fit_nmf(x, n, seed=seed)
    if kind == "random":
        return random_dictionary(x, n, k or n, seed=seed)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")
