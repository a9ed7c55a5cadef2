"""Seeded global random order of store rows, computed on the fly in O(batch) memory.

A random permutation of ``n`` rows held as an index array costs 8 bytes a row (8 GB for a
billion-token store). Instead, position ``i`` of epoch ``e`` maps to row ``π(i)``, where ``π`` is a
keyed Feistel network on ``2h`` bits (``4^h ≥ n``) made into a permutation of ``[0, n)`` by cycle
walking (Black & Rogaway, 2002, *Ciphers with Arbitrary Finite Domains*): apply the network again
while the result is ``≥ n``. Each round maps halves ``(L, R) → (R, L ⊕ F_k(R))``, which is a
bijection for any round function ``F_k``; ``F_k`` is the SplitMix64 finaliser (Steele, Lea & Flood,
2014) of ``R + k``, with round keys ``k`` derived from ``(seed, epoch)``. Every epoch visits every
row exactly once, the order depends only on ``(n, seed, epoch)``, and batch ``b`` is computed
directly, which is what makes resuming from a batch index exact.
"""

from __future__ import annotations

import numpy as np

__all__ = ["permute", "batch_rows"]

_M64 = (1 << 64) - 1
_ROUNDS = 6


def _splitmix(x: int) -> int:
    """SplitMix64 step on a Python int (used to derive round keys)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _keys(seed: int, epoch: int) -> list[np.uint64]:
    state = _splitmix((seed & _M64) ^ _splitmix(epoch & _M64))
    keys = []
    for _ in range(_ROUNDS):
        state = _splitmix(state)
        keys.append(np.uint64(state))
    return keys


def _feistel(x: np.ndarray, half: int, keys: list[np.uint64]) -> np.ndarray:
    mask = np.uint64((1 << half) - 1)
    sh = np.uint64(half)
    left, right = x >> sh, x & mask
    for k in keys:
        left, right = right, left ^ (_mix(right + k) & mask)
    return (left << sh) | right


def permute(positions: np.ndarray, n: int, *, seed: int, epoch: int = 0) -> np.ndarray:
    """Rows ``π(positions)`` of the seeded permutation of ``range(n)`` (int64 array, same shape)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    pos = np.asarray(positions, dtype=np.int64)
    if pos.size and (pos.min() < 0 or pos.max() >= n):
        raise ValueError(f"positions must lie in [0, {n})")
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    keys = _keys(seed, epoch)
    x = _feistel(pos.astype(np.uint64).ravel(), half, keys)
    out_of_range = x >= np.uint64(n)
    while out_of_range.any():  # cycle walking; the domain is < 4n, so this ends fast
        x[out_of_range] = _feistel(x[out_of_range], half, keys)
        out_of_range = x >= np.uint64(n)
    return x.astype(np.int64).reshape(pos.shape)


def batch_rows(batch: int, *, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of global batch number ``batch`` (epochs of ``n // batch_size`` batches; the last
    ``n % batch_size`` positions of each epoch are skipped, a different set of rows every epoch)."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} rows of the store")
    epoch, b = divmod(batch, per_epoch)
    pos = np.arange(b * batch_size, (b + 1) * batch_size, dtype=np.int64)
    return permute(pos, n, seed=seed, epoch=epoch)
