"""Slow state + fast features: activation sequences whose slowly varying hidden state is a planted direction.

The ground truth for temporal dictionaries (Lubana, Rager, Hindupur et al. 2025, "Priors in Time: Missing
Inductive Biases for Language Model Interpretability", arXiv 2511.01836): language-model activations mix
context that persists over many tokens with per-token content. Here, per sequence of T tokens,

    s_1 ~ U{0..K−1},  s_{t+1} = s_t with probability 1 − p_switch, else uniform over the other K − 1 states
    shown_t = s_t with probability f (faithfulness), else uniform over the other K − 1 states (a decoy)
    x_t = α · M_{shown_t} + Σ_i a_{t,i} G_i + ε_t

with M ∈ ℝ^{K×d} unit state directions, the fast part Σ_i a_{t,i} G_i + ε_t drawn independently per token
from the toy-superposition world (Elhage et al. 2022, "Toy Models of Superposition";
:class:`assay.worlds.superposition.SuperpositionWorld`, constant firing probability, isotropic noise ε).
Every token shows one clean state direction (easy for any dictionary to learn), but one token says only
so much about s_t: a single-token detector of state s fires on a fraction f of the state's tokens and on
(1 − f)/(K − 1) of the others (best AUROC ≈ ½ + (f − (1 − f)/(K − 1))/2, 0.73 at the defaults), while the
recent past says a lot (the state lasts 1/p_switch tokens on average, most of them showing it): a code
that pools the past should track s better than any single-token code.

Labels: ``state`` [n, T] (s_t), ``shown`` [n, T], ``fast_acts`` [n, T, n_fast] (the a_{t,i}). Static truth:
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
    faithfulness: float = 0.6
    """Probability that a token shows its own state's direction; otherwise it shows one of the other states'
    (uniformly): per-token evidence that only the recent past makes reliable."""
    length: int = 32
    """Tokens per sequence T."""
    d_model: int = 16
    """Activation dimension d."""
    n_fast: int = 16
    """Number of fast planted features."""
    fast_probability: float = 0.02
    """Firing probability of each fast feature per token."""
    fast_magnitude: tuple[float, float] = (0.5, 1.5)
    """(lo, hi) of the fast features' uniform magnitudes."""
    noise_std: float = 0.1
    """Standard deviation of the isotropic per-token noise."""
    seed: int = 0
    """Seed of the static structure (state and feature directions)."""

    def __post_init__(self) -> None:
        if self.n_states < 2:
            raise ConfigError(f"n_states must be at least 2 (a state that never changes is no signal), got {self.n_states}")
        if not 0.0 <= self.switch_probability <= 1.0:
            raise ConfigError(f"switch_probability must lie in [0, 1], got {self.switch_probability}")
        if not 0.0 <= self.faithfulness <= 1.0:
            raise ConfigError(f"faithfulness must lie in [0, 1], got {self.faithfulness}")
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
        decoy = torch.rand(n, cfg.length, generator=generator) >= cfg.faithfulness
        other = (state + torch.randint(1, cfg.n_states, state.shape, generator=generator)) % cfg.n_states
        shown = torch.where(decoy, other, state)
        x = fast.inputs.view(n, cfg.length, cfg.d_model) + cfg.state_scale * self.state_directions[shown]
        return Batch(inputs=x, labels={"state": state, "shown": shown,
                                       "fast_acts": fast.labels["acts"].view(n, cfg.length, -1)})
