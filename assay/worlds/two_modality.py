"""A two-modality embedding world with planted sparse concept codes: the ground truth for SpLiCE.

Built for Bhalla, Oesterling, Srinivas, Calmon & Lakkaraju 2024, "Interpreting CLIP with Sparse Linear
Concept Embeddings (SpLiCE)" (NeurIPS 2024, arXiv 2402.10376), whose centring step exists because image
and text embeddings of CLIP occupy different cones (the *modality gap*, Liang et al. 2022, "Mind the Gap").
Static structure (seeded by ``config.seed``): c unit concept vectors v_i ∈ ℝ^d (isotropic), and two offset
vectors, m_q (query modality) and m_n (name modality), of norms ``query_offset`` and ``name_offset``.

    query:       z = Σ_{j∈S} a_j v_j + m_q + σ ε,     |S| = k uniform,  a_j ∼ U(a_min, a_max),  ε ∼ N(0, I/d)
    concept name: e_i = v_i + m_n + σ_n ε_i            (the concept "embedded from the other modality")

``sample`` returns queries as inputs with their planted ``support [n, c]`` (bool) and ``weights [n, c]``;
:attr:`name_embeddings` are the concept-side embeddings a dictionary is built from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from assay.config import ConfigError
from assay.worlds.base import Batch, make_generator

__all__ = ["TwoModalityConfig", "TwoModalityWorld"]


@dataclass(frozen=True, kw_only=True)
class TwoModalityConfig:
    """Planted sparse nonnegative queries in one modality, concept names embedded in another."""

    d: int = 64
    """Embedding dimension."""
    n_concepts: int = 200
    """Number of planted concepts c."""
    k: int = 3
    """Active concepts per query."""
    a_min: float = 0.5
    """Smallest planted weight."""
    a_max: float = 1.5
    """Largest planted weight."""
    query_offset: float = 2.0
    """‖m_q‖: how far the query modality's cone sits from the origin (the modality gap)."""
    name_offset: float = 2.0
    """‖m_n‖: the same for the concept-name modality (a different, random direction)."""
    noise: float = 0.1
    """σ: query noise (ε ∼ N(0, I/d), so ‖σε‖ ≈ σ)."""
    name_noise: float = 0.1
    """σ_n: noise of each concept's name embedding."""
    seed: int = 0
    """Seed of the static structure (concept vectors, offsets, name noise)."""

    def __post_init__(self) -> None:
        if self.d < 2 or self.n_concepts < 2:
            raise ConfigError(f"need d >= 2 and n_concepts >= 2, got d={self.d}, n_concepts={self.n_concepts}")
        if not 1 <= self.k <= self.n_concepts:
            raise ConfigError(f"k must be in [1, n_concepts={self.n_concepts}], got {self.k}")
        if not 0 <= self.a_min <= self.a_max or self.a_max <= 0:
            raise ConfigError(f"need 0 <= a_min <= a_max and a_max > 0, got {self.a_min}, {self.a_max}")
        if min(self.query_offset, self.name_offset, self.noise, self.name_noise) < 0:
            raise ConfigError("offsets and noise levels must be >= 0")


class TwoModalityWorld:
    """Queries z (inputs ``[n, d]``) with labels ``support`` and ``weights`` ``[n, c]`` (module docstring)."""

    def __init__(self, config: TwoModalityConfig) -> None:
        self.config = config
        g = make_generator(config.seed)
        d, c = config.d, config.n_concepts
        self.concepts = torch.nn.functional.normalize(torch.randn(c, d, generator=g), dim=1)
        """Planted unit concept vectors v_i ``[c, d]``."""
        self.query_offset = config.query_offset * torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
        """m_q ``[d]``."""
        self.name_offset = config.name_offset * torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
        """m_n ``[d]``."""
        eps = torch.randn(c, d, generator=g) / math.sqrt(d)
        self.name_embeddings = self.concepts + self.name_offset + config.name_noise * eps
        """Concept embeddings from the name modality e_i ``[c, d]``."""
        self.names = tuple(f"concept_{i}" for i in range(c))
        """Concept names."""

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        cfg = self.config
        c = cfg.n_concepts
        order = torch.rand(n, c, generator=generator).argsort(dim=1)[:, : cfg.k]
        a = cfg.a_min + (cfg.a_max - cfg.a_min) * torch.rand(n, cfg.k, generator=generator)
        weights = torch.zeros(n, c).scatter_(1, order, a)
        z = weights @ self.concepts + self.query_offset
        z = z + cfg.noise * torch.randn(n, cfg.d, generator=generator) / math.sqrt(cfg.d)
        return Batch(inputs=z, labels={"support": weights > 0, "weights": weights})
