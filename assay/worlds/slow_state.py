"""Slow state + fast features: activation sequences whose slowly varying hidden state is a planted direction.

The ground truth for temporal dictionaries (Lubana, Rager, Hindupur et al. 2025, "Priors in Time: Missing
Inductive Biases for Language Model Interpretability", arXiv 2511.01836): language-model activations mix
context that persists over many tokens with per-token content. Here, per sequence of T tokens,

    s_1 ~ U{0..K−1},  s_{t+1} = s_t with probability 1 − p_switch, else uniform over the other K − 1 states
    x_t = α · M_{s_t} + Σ_i a_{t,i} G_i + ε_t

with M ∈ ℝ^{K×d} unit state directions, the fast part Σ_i a_{t,i} G_i + ε_t drawn independently per token
from the toy-superposition world (Elhage et al. 2022, "Toy Models of Superposition";
:class:`assay.worlds.superposition.SuperpositionWorld`, constant firing probability, isotropic noise ε).
With α small against the fast part, one token says little about s_t, while the recent past says a lot
(the state lasts 1/p_switch tokens on average): a code that pools the past should track s better than
any single-token code.

Labels: ``state`` [n, T] (s_t), ``fast_acts`` [n, T, n_fast] (the a_{t,i}). Static truth:
``state_directions`` (M) and ``fast.directions`` (G). The world's activations are used directly (no model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from assay.config import ConfigError
from assay.worlds.base import Batch, make_generator
from assay.worlds.superposition import SuperpositionConfig, SuperpositionWorld

__all__ = ["SlowStateConfig", "SlowStateWorld"]


@dataclass(frozen=True, kw_only=True)
class SlowStateConfig:
    """A slowly switching hidden state on top of fast per-token features."""

    n_states: int = 4
    """Number of hidden states K."""
    switch_probability: float = 0.05
    """Probability per token that the state changes (mean dwell 1/p tokens)."""
    state_scale: float = 1.0
    """α: norm of the state's contribution to every token."""
    length: int = 32
    """Tokens per sequence T."""
    d_model: int = 32
    """Activation dimension d."""
    n_fast: int = 64
    """Number of fast planted features."""
    fast_probability: float = 0.08
    """Firing probability of each fast feature per token."""
    fast_magnitude: tuple[float, float] = (0.5, 1.5)
    """(lo, hi) of the fast features' uniform magnitudes."""
    noise_std: float = 0.3
    """Standard deviation of the isotropic per-token noise."""
    seed: int = 0
    """Seed of the static structure (state and feature directions)."""

    def __post_init__(self) -> None:
        if self.n_states < 2:
            raise ConfigError(f"n_states must be at least 2 (a state that never changes is no signal), got {self.n_states}")
        if not 0.0 <= self.switch_probability <= 1.0:
            raise ConfigError(f"switch_probability must lie in [0, 1], got {self.switch_probability}")
        if self.state_scale < 0 or self.length <= 0 or self.d_model <= 0:
            raise ConfigError("state_scale must be >= 0 and length, d_model positive; got "
                              f"{self.state_scale}, {self.length}, {self.d_model}")


class SlowStateWorld:
    """Samples ``[n, T, d]`` activation sequences with their hidden state per token."""

    def __init__(self, config: SlowStateConfig | None = None) -> None:
        self.config = cfg = config or SlowStateConfig()
        self.fast = SuperpositionWorld(SuperpositionConfig(
            n_features=cfg.n_fast, d_model=cfg.d_model, profile="constant", p_max=cfg.fast_probability,
            magnitude_range=cfg.fast_magnitude, noise_std=cfg.noise_std, seed=cfg.seed))
        """The fast part: a toy-superposition world sampled independently per token."""
        m = torch.randn(cfg.n_states, cfg.d_model, generator=make_generator(cfg.seed + 1))
        self.state_directions = m / m.norm(dim=1, keepdim=True)
        """Unit state directions M ``[K, d]``."""

    def states(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        """Hidden state sequences ``[n, T]``: a uniform start, then a switch to another state with p_switch."""
        cfg = self.config
        s = torch.empty(n, cfg.length, dtype=torch.long)
        s[:, 0] = torch.randint(cfg.n_states, (n,), generator=generator)
        switch = torch.rand(n, cfg.length, generator=generator) < cfg.switch_probability
        step = torch.randint(1, cfg.n_states, (n, cfg.length), generator=generator)
        for t in range(1, cfg.length):
            s[:, t] = torch.where(switch[:, t], (s[:, t - 1] + step[:, t]) % cfg.n_states, s[:, t - 1])
        return s

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        """Draw ``n`` sequences ``[n, T, d]`` with labels ``state`` and ``fast_acts``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        cfg = self.config
        state = self.states(n, generator=generator)
        fast = self.fast.sample(n * cfg.length, generator=generator)
        x = fast.inputs.view(n, cfg.length, cfg.d_model) + cfg.state_scale * self.state_directions[state]
        return Batch(inputs=x, labels={"state": state, "fast_acts": fast.labels["acts"].view(n, cfg.length, -1)})
