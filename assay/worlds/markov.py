"""Markov-chain mixtures: sequences from one of n random chains, for studying in-context learning.

Park, Lubana, Pres, Tanaka 2025, "Competition Dynamics Shape Algorithmic Phases of In-Context
Learning" (ICLR 2025, arXiv 2412.01003) [code: cfpark00/markov-mixtures]. n chains over k states,
each row of T_c ∼ Dirichlet(α·1_k), mixture weights π_c; a sequence picks c ∼ π, x₁ ∼ start_c
(stationary or uniform), x_{s+1} ∼ T_c[x_s]. Exact chain posterior (log space)::

    P(c | x_{1:s}) ∝ π_c · start_c(x₁) · Π_{j<s} T_c[x_j, x_{j+1}]

Reference next-token distributions after s tokens (``reference_predictions``): ``bayes_true``
(T_c[x_s] for the true chain — the Bayes-optimal predictor given the chain), ``bigram_retrieval``
Σ_c P(c|x_{1:s}) T_c[x_s] (the Bayes-optimal predictor under the mixture prior),
``unigram_retrieval`` Σ_c P(c|x_{1:s}) stationary_c, ``unigram_inference`` (count_s(j) + 1)/(s + k)
and ``bigram_inference`` (count(x_s → j) + 1)/(count(x_s → ·) + k). Check values (two chains over 2
states, T₁ = [[.9,.1],[.1,.9]], T₂ = [[.1,.9],[.9,.1]], uniform prior and start, context 0,0,0):
P(c = 1) = 0.987805, bigram-retrieval P(0) = 0.890244, bigram-inference 0.75, unigram-inference
0.8, unigram-retrieval 0.5.

Rows are ``<bos> x₁ … x_L``; inputs are the first L tokens, targets x₁ … x_L (every position scored).
Per-token labels: ``chain`` (true chain id), ``state`` (state of the input token, −1 at ``<bos>``),
``posterior`` (float [n, T, n_chains], P(c | tokens so far)).

Task metrics (``evaluate``): ``loss`` (in-context cross-entropy, nats), ``bayes_loss`` (true-chain
Bayes), ``mixture_loss`` (mixture-Bayes), ``loss_ratio`` = loss / bayes_loss, ``bayes_efficiency``
= bayes_loss / loss, and ``kl_<reference>`` = KL(reference ‖ model restricted to the states).
Acceptance: in-context loss within 5% of the true-chain Bayes predictor (issue 3), i.e.
``bayes_efficiency`` ≥ 1/1.05.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from assay.config import ConfigError
from assay.worlds.base import Batch
from assay.worlds.vocab import BOS, IGNORE, PAD, check_logits, make_vocab, masked_cross_entropy

__all__ = ["MarkovConfig", "MarkovMixtureWorld", "chain_posterior", "reference_predictions", "stationary"]


@dataclass(frozen=True, kw_only=True)
class MarkovConfig:
    """A mixture of random ergodic Markov chains."""

    n_states: int = 10
    """Number of states k (tokens s0 … s{k−1})."""
    n_chains: int = 4
    """Number of chains n in the mixture (the paper sweeps 16 … 2048; CPU default 4, 16 or 64)."""
    seq_len: int = 128
    """Tokens per sequence (after ``<bos>``)."""
    alpha: float = 1.0
    """Dirichlet concentration of each transition row."""
    weights: Literal["uniform", "dirichlet"] = "uniform"
    """Mixture weights π: uniform, or drawn from Dirichlet(1)."""
    start: Literal["stationary", "uniform"] = "stationary"
    """Distribution of the first state: the chain's stationary distribution, or uniform."""
    seed: int = 0
    """Seed of the static structure (the chains and weights)."""

    def __post_init__(self) -> None:
        if self.n_states < 2:
            raise ConfigError(f"n_states must be >= 2, got {self.n_states}")
        if self.n_chains < 1:
            raise ConfigError(f"n_chains must be >= 1, got {self.n_chains}")
        if self.seq_len < 1:
            raise ConfigError(f"seq_len must be >= 1, got {self.seq_len}")
        if not self.alpha > 0:
            raise ConfigError(f"alpha (Dirichlet concentration) must be > 0, got {self.alpha}")


def stationary(transitions: torch.Tensor) -> torch.Tensor:
    """Stationary distribution of each chain ``[..., k, k]`` → ``[..., k]`` (solves πT = π, Σπ = 1)."""
    k = transitions.shape[-1]
    A = transitions.double().transpose(-1, -2) - torch.eye(k, dtype=torch.float64)
    A = torch.cat([A, torch.ones(*A.shape[:-2], 1, k, dtype=torch.float64)], dim=-2)
    b = torch.zeros(*A.shape[:-1], 1, dtype=torch.float64)
    b[..., -1, 0] = 1.0
    pi = torch.linalg.lstsq(A, b).solution.squeeze(-1)
    return pi.clamp_min(0) / pi.clamp_min(0).sum(-1, keepdim=True)


def chain_posterior(x: torch.Tensor, transitions: torch.Tensor, weights: torch.Tensor,
                    start: torch.Tensor) -> torch.Tensor:
    """P(c | x_{1:s}) for s = 0..L: states ``x`` [n, L] → ``[n, L + 1, C]`` (float64, log-space)."""
    C = transitions.shape[0]
    logT = transitions.double().clamp_min(1e-300).log().reshape(C, -1)
    k = transitions.shape[-1]
    ll = torch.zeros(x.shape[0], x.shape[1] + 1, C, dtype=torch.float64)
    ll[:, 0] = weights.double().log()
    ll[:, 1] = start.double().clamp_min(1e-300).log()[:, x[:, 0]].T
    if x.shape[1] > 1:
        step = logT[:, (x[:, :-1] * k + x[:, 1:]).reshape(-1)].reshape(C, x.shape[0], -1)  # [C, n, L-1]
        ll[:, 2:] = step.permute(1, 2, 0)
    ll = ll.cumsum(1)
    return torch.softmax(ll, -1)


def reference_predictions(x: torch.Tensor, transitions: torch.Tensor, weights: torch.Tensor,
                          start: torch.Tensor, chain: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The reference next-state distributions ``[n, L, k]`` (position s predicts x_{s+1} from x_{1:s}).

    ``x`` holds states [n, L]; ``chain`` [n] the true chains (needed for ``bayes_true``).
    """
    n, L = x.shape
    k = transitions.shape[-1]
    T = transitions.double()
    post = chain_posterior(x, T, weights, start)[:, :L]  # after 0..L-1 tokens
    prev = torch.cat([torch.zeros(n, 1, dtype=torch.long), x[:, :-1]], 1)  # x_s (dummy at s = 0)
    C = T.shape[0]
    mix = (post.reshape(n * L, C) @ T.reshape(C, k * k)).reshape(n, L, k, k)  # Σ_c P(c|·) T_c
    out = {"bigram_retrieval": mix.gather(2, prev[:, :, None, None].expand(n, L, 1, k)).squeeze(2),
           "unigram_retrieval": post @ stationary(T)}
    out["bigram_retrieval"][:, 0] = post[:, 0] @ start.double()  # s = 0: the start distribution
    if chain is not None:
        out["bayes_true"] = T[chain[:, None], prev]
        out["bayes_true"][:, 0] = start.double()[chain]
    onehot = torch.nn.functional.one_hot(x, k).double()
    counts = torch.cat([torch.zeros(n, 1, k, dtype=torch.float64), onehot.cumsum(1)[:, :-1]], 1)
    s = torch.arange(L, dtype=torch.float64)[None, :, None]
    out["unigram_inference"] = (counts + 1) / (s + k)
    # bigram counts of transitions seen before position s, from the current state x_s
    pair = torch.zeros(n, L, k, k, dtype=torch.float64)
    if L > 2:
        trans = onehot[:, :-1, :, None] * onehot[:, 1:, None, :]  # transition j → j+1 at step j
        pair[:, 2:] = trans.cumsum(1)[:, : L - 2]
    cur = pair[torch.arange(n)[:, None], torch.arange(L)[None], prev]  # [n, L, k]
    cur[:, 0] = 0.0
    out["bigram_inference"] = (cur + 1) / (cur.sum(-1, keepdim=True) + k)
    return out


class MarkovMixtureWorld:
    """Sequences from a mixture of random Markov chains; the chains are the static ground truth."""

    pad_id: int = PAD
    bos_id: int = BOS
    acceptance: tuple[str, float] = ("bayes_efficiency", 1 / 1.05)
    """Metric and threshold the reference model must reach (higher is better)."""

    def __init__(self, config: MarkovConfig | None = None) -> None:
        self.config = cfg = config or MarkovConfig()
        rng = np.random.default_rng(cfg.seed)
        k, C = cfg.n_states, cfg.n_chains
        self.transitions = torch.from_numpy(rng.dirichlet(np.full(k, cfg.alpha), size=(C, k)))
        """Transition matrices T ``[n_chains, k, k]`` (float64, rows sum to 1)."""
        w = np.full(C, 1.0 / C) if cfg.weights == "uniform" else rng.dirichlet(np.ones(C))
        self.weights = torch.from_numpy(w)
        """Mixture weights π ``[n_chains]``."""
        self.stationary = stationary(self.transitions)
        """Stationary distribution of each chain ``[n_chains, k]``."""
        self.start = self.stationary if cfg.start == "stationary" else torch.full((C, k), 1.0 / k, dtype=torch.float64)
        """Distribution of the first state per chain ``[n_chains, k]``."""
        self.vocab = make_vocab(f"s{i}" for i in range(k))

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Token ids ``[T]`` → token strings (padding dropped)."""
        return [self.vocab[i] for i in ids.tolist() if i != self.pad_id]

    def reference_model(self) -> dict[str, Any]:
        """Tiny-transformer settings (spec §3: Park et al.'s GPT, CPU default steps)."""
        return {"n_layers": 2, "n_heads": 4, "d_model": 64, "context": self.config.seq_len, "steps": 2000,
                "batch_size": 128, "lr": 6e-4, "weight_decay": 0.1, "betas": (0.9, 0.95), "pack": False}

    def sample(self, n: int, *, generator: torch.Generator) -> Batch:
        """``n`` sequences with their chain, states and chain posterior."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        cfg = self.config
        L = cfg.seq_len
        chain = torch.multinomial(self.weights, n, replacement=True, generator=generator) if n else \
            torch.zeros(0, dtype=torch.long)
        x = torch.zeros(n, L, dtype=torch.long)
        if n:
            x[:, 0] = torch.multinomial(self.start[chain], 1, generator=generator).squeeze(1)
            for s in range(1, L):
                x[:, s] = torch.multinomial(self.transitions[chain, x[:, s - 1]], 1, generator=generator).squeeze(1)
        tokens = torch.cat([torch.full((n, 1), BOS, dtype=torch.long), x + 4], 1)
        state = torch.cat([torch.full((n, 1), -1, dtype=torch.long), x[:, :-1]], 1)
        post = chain_posterior(x, self.transitions, self.weights, self.start)[:, :L].float()
        labels = {"chain": chain[:, None].expand(n, L).clone(), "state": state, "posterior": post}
        return Batch(inputs=tokens[:, :L], targets=tokens[:, 1:].clone(), labels=labels)

    def predictions(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The reference next-state distributions ``[n, T, k]`` for ``batch`` (module docstring)."""
        x = batch.targets - 4
        return reference_predictions(x, self.transitions, self.weights, self.start, batch.labels["chain"][:, 0])

    def evaluate(self, logits: torch.Tensor, batch: Batch) -> dict[str, float]:
        """In-context loss of ``logits`` [n, T, V] against the Bayes predictors (module docstring)."""
        check_logits(logits, batch)
        if (batch.targets == IGNORE).any():
            raise ValueError("Markov batches score every position; got ignored targets")
        ref = self.predictions(batch)
        x = batch.targets - 4
        loss = masked_cross_entropy(logits, batch.targets).mean()

        def ce(p: torch.Tensor) -> torch.Tensor:
            return -p.gather(-1, x.unsqueeze(-1)).clamp_min(1e-300).log().mean()

        bayes, mixture = ce(ref["bayes_true"]), ce(ref["bigram_retrieval"])
        out = {"loss": float(loss), "bayes_loss": float(bayes), "mixture_loss": float(mixture),
               "loss_ratio": float(loss / bayes), "bayes_efficiency": float(bayes / loss)}
        logq = torch.log_softmax(logits.double()[..., 4:], -1)
        for name, p in ref.items():
            kl = (p * (p.clamp_min(1e-300).log() - logq)).sum(-1).mean()
            out[f"kl_{name}"] = float(kl)
        return out
