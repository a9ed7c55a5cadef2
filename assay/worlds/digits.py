"""Signal–distractor digits: a real digit on a cluttered canvas, with its true attribution mask.

Design after the Hard-MNIST world of Bhalla, Srinivas & Lakkaraju 2023, "Discriminative Feature
Attributions: Bridging Post Hoc Explainability and Inherent Interpretability" (DiET)
[code: AI4LIFE-GROUP/DiET], rebuilt from scikit-learn's bundled 8×8 digits (1,797 images,
values 0–16, offline):

- a 3×32×32 canvas of a random dark background colour (channels in [0, 0.5]), with 0–2 horizontal and 0–2 vertical bands
  (width 1–6 px, random colour, Gaussian noise σ = 0.1);
- the *signal* digit upscaled ×2 (16×16, nearest) in a random bright foreground colour (channels in
  [0.5, 1]) at a uniform random position; pixel = bg·(1 − v) + fg·v with v = intensity/16;
- a *decoy* 8×8 digit of a different class in its own bright colour, not overlapping the signal;
- optional shortcut: with probability ``spurious_rho`` the decoy class is (y + 1) mod 10.

The label is the signal digit's class; ``signal_mask`` (pixels of the upscaled digit with v > 0) is
the ground-truth attribution. The digit images are split 70/30 *before* compositing (fixed split
seed), so test composites use unseen digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
import torch

from assay.config import ConfigError
from assay.worlds.base import Batch

__all__ = ["DigitsConfig", "SignalDistractorDigits", "digit_split"]

CANVAS = 32
SIGNAL = 16
DECOY = 8


@dataclass(frozen=True, kw_only=True)
class DigitsConfig:
    """Signal–distractor digit composites."""

    split: Literal["train", "test"] = "train"
    """Which 70/30 split of the 1,797 digit images to draw signal and decoy digits from."""
    max_bands: int = 2
    """At most this many horizontal and this many vertical noise bands (0 disables them)."""
    decoy: bool = True
    """Paste a decoy digit of another class."""
    spurious_rho: float = 0.0
    """Probability that the decoy's class is (y + 1) mod 10 — a shortcut a model can learn."""
    band_noise: float = 0.1
    """Standard deviation of the Gaussian noise inside bands."""
    split_seed: int = 0
    """Seed of the 70/30 split of the digit images."""

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {self.split!r}")
        if self.max_bands < 0:
            raise ConfigError(f"max_bands must be >= 0, got {self.max_bands}")
        if not 0.0 <= self.spurious_rho <= 1.0:
            raise ConfigError(f"spurious_rho must be in [0, 1], got {self.spurious_rho}")
        if self.band_noise < 0:
            raise ConfigError(f"band_noise must be >= 0, got {self.band_noise}")


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits world needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def digit_split(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 70/30 split of sklearn's digits: images ``[m, 8, 8]`` in [0, 1] and labels ``[m]``."""
    images, labels = _digits()
    perm = np.random.default_rng(seed).permutation(len(labels))
    cut = int(0.7 * len(labels))
    idx = perm[:cut] if split == "train" else perm[cut:]
    return images[idx], labels[idx]


def _colour(rng: np.random.Generator, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return (low + (high - low) * rng.random(3)).astype(np.float32)


class SignalDistractorDigits:
    """Composites of a signal digit, a decoy digit and noise bands, with per-pixel ground truth."""

    def __init__(self, config: DigitsConfig | None = None) -> None:
        self.config = config or DigitsConfig()
        self.images, self.classes = digit_split(self.config.split, self.config.split_seed)
        self._by_class = [np.flatnonzero(self.classes == k) for k in range(10)]

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        """Draw ``n`` composites; ``inputs`` are ``[n, 3, 32, 32]`` in [0, 1]."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        cfg = self.config
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        x = np.empty((n, 3, CANVAS, CANVAS), np.float32)
        signal = np.zeros((n, CANVAS, CANVAS), bool)
        decoy = np.zeros((n, CANVAS, CANVAS), bool)
        bands = np.zeros((n, CANVAS, CANVAS), bool)
        y = np.empty(n, np.int64)
        y_decoy = np.full(n, -1, np.int64)
        for i in range(n):
            j = rng.integers(len(self.classes))
            y[i] = self.classes[j]
            bg = _colour(rng, 0.0, 0.5)
            canvas = np.broadcast_to(bg[:, None, None], (3, CANVAS, CANVAS)).copy()
            for axis in (0, 1):
                for _ in range(rng.integers(0, cfg.max_bands + 1)):
                    w = rng.integers(1, 7)
                    s = rng.integers(0, CANVAS - w + 1)
                    region = (slice(None), slice(s, s + w), slice(None)) if axis == 0 else \
                             (slice(None), slice(None), slice(s, s + w))
                    noise = cfg.band_noise * rng.standard_normal(canvas[region].shape).astype(np.float32)
                    canvas[region] = np.clip(_colour(rng)[:, None, None] + noise, 0, 1)
                    bands[i][region[1:]] = True
            r, c = rng.integers(0, CANVAS - SIGNAL + 1, size=2)
            v = np.kron(self.images[j], np.ones((2, 2), np.float32))
            fg = _colour(rng, 0.5, 1.0)
            box = (slice(None), slice(r, r + SIGNAL), slice(c, c + SIGNAL))
            canvas[box] = canvas[box] * (1 - v) + fg[:, None, None] * v
            signal[i, r : r + SIGNAL, c : c + SIGNAL] = v > 0
            if cfg.decoy:
                k = (y[i] + 1) % 10 if rng.random() < cfg.spurious_rho else \
                    (y[i] + rng.integers(1, 10)) % 10
                y_decoy[i] = k
                dj = self._by_class[k][rng.integers(len(self._by_class[k]))]
                while True:  # a decoy position whose box does not overlap the signal's
                    r2, c2 = rng.integers(0, CANVAS - DECOY + 1, size=2)
                    if r2 + DECOY <= r or r2 >= r + SIGNAL or c2 + DECOY <= c or c2 >= c + SIGNAL:
                        break
                dv = self.images[dj]
                dbox = (slice(None), slice(r2, r2 + DECOY), slice(c2, c2 + DECOY))
                canvas[dbox] = canvas[dbox] * (1 - dv) + _colour(rng, 0.5, 1.0)[:, None, None] * dv
                decoy[i, r2 : r2 + DECOY, c2 : c2 + DECOY] = dv > 0
            x[i] = canvas
        bands &= ~(signal | decoy)
        return Batch(
            inputs=torch.from_numpy(x),
            targets=torch.from_numpy(y),
            labels={
                "signal_mask": torch.from_numpy(signal),
                "decoy_mask": torch.from_numpy(decoy),
                "band_mask": torch.from_numpy(bands),
                "y_decoy": torch.from_numpy(y_decoy),
            },
        )
