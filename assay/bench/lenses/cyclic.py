"""The lenses family's trained world: a tiny transformer on cyclic weekday arithmetic, scored against the world.

World (:mod:`assay.worlds.cyclic`; after Engels et al. 2024 and Wurgaft et al. 2026): the 42 prompts
``<bos> c_z + k =`` whose answer is c_{(z+k) mod 7}. The model is the zoo's 2-layer transformer
(:func:`assay.models.zoo.world_model`, trained through :func:`assay.models.train.train` and cached as an
artifact), trained on all 42 prompts. Concept t (one per weekday) is "the answer is t"; its label on a
prompt is the world's answer == t.

The prompts are split in two folds (seeded, half of each answer's six prompts in each); a method is fitted for concept t on one fold's activations at
the site and the ``=`` position, and scored on the other fold (then the folds swap), following Bhalla,
Srinivas, Ghandeharioun & Lakkaraju 2024, "Towards Unifying Interpretability and Control":

- read-out: the encoded concept at ``=`` on the held-out prompts against the world's label;
- intervention: the edit at every prompt position; success when the model's answer at ``=`` becomes t, on
  the held-out prompts whose world answer is not t;
- coherence cost: KL(unedited ‖ edited) of the next-token distributions at the prompt's other positions
  (``<bos>``, c_z, ``+``, k: they predict the task's format), on the same held-out prompts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from assay.bench.lenses.family import Outcome
from assay.config import ConfigError
from assay.worlds.base import make_generator

__all__ = ["EQ", "CyclicModelWorld", "prepare_cyclic"]

EQ = 4
"""Position of ``=`` in ``<bos> c_z + k =`` (the answer is predicted there)."""


class CyclicModelWorld:
    """A prepared cyclic world (a :class:`~assay.bench.lenses.family.LensWorld`): the trained model, its prompts,
    their answers, activations and folds."""

    applies = frozenset({"diff_means", "probe", "pca", "random", "sae", "logit_lens", "tuned_lens", "prompting"})
    """Methods that apply to this world."""

    def __init__(self, model: Any, world: Any, site: str, seed: int, *, description: str) -> None:
        from assay.hooks import capture

        self.model, self.world, self.site, self.description = model, world, site, description
        n, tid = world.n, world.token_id
        self.first_concept = 4
        """Token id of concept 0 (concept tokens are consecutive)."""
        prompts = [(z, k) for z in range(n) for k in range(1, n)]
        self.ids = torch.tensor([[1, self.first_concept + z, tid("+"), tid(str(k)), tid("=")] for z, k in prompts])
        self.answer = torch.tensor([(z + k) % n for z, k in prompts])
        with torch.no_grad(), capture(model, [site]) as cap:
            self.base_logits = model(self.ids)
        self.h = cap[site].detach()
        self.model_acc = float((self.base_logits[:, EQ].argmax(-1) - self.first_concept == self.answer).double().mean())
        """The trained model's answer accuracy on the 42 prompts."""
        g = make_generator(seed + 1)
        halves: tuple[list[Tensor], list[Tensor]] = ([], [])
        for a in range(n):  # stratified: half of each answer's 6 prompts in each fold
            rows = (self.answer == a).nonzero()[:, 0]
            rows = rows[torch.randperm(len(rows), generator=g)]
            halves[0].append(rows[: len(rows) // 2])
            halves[1].append(rows[len(rows) // 2:])
        first, second = torch.cat(halves[0]).sort().values, torch.cat(halves[1]).sort().values
        self.folds = ((first, second), (second, first))
        """(fit rows, held-out rows) of each fold: each answer's prompts split in half (seeded)."""
        self.n_concepts = n
        self.norm, self.unembed = model.ln_f, model.unembed
        self.memo: dict[Any, Any] = {}
        """Fitted objects shared by the strengths of a method (keyed by method, parameters, fold, concept)."""

    @property
    def d_model(self) -> int:
        return int(self.h.shape[-1])

    def concept_token(self, t: int) -> int:
        """Vocabulary id of weekday ``t``."""
        return self.first_concept + t

    def fit_pairs(self, fold: int, t: int) -> tuple[Tensor, Tensor]:
        """Paired activations at ``=`` of the fit rows: every prompt with answer t against every other ``[n, d]``."""
        fit, _ = self.folds[fold]
        x, y = self.h[fit, EQ], self.answer[fit] == t
        pos, neg = x[y], x[~y]
        return pos.repeat_interleave(len(neg), 0), neg.repeat(len(pos), 1)

    def fit_labelled(self, fold: int, t: int) -> tuple[Tensor, Tensor]:
        """Activations at ``=`` of the fit rows ``[n, d]`` and the world's label ``answer == t`` ``[n]``."""
        fit, _ = self.folds[fold]
        return self.h[fit, EQ], self.answer[fit] == t

    def readout(self, fold: int, t: int) -> tuple[Tensor, Tensor]:
        """Held-out activations at ``=`` ``[n, d]`` and the world's label ``answer == t`` ``[n]``."""
        _, ev = self.folds[fold]
        return self.h[ev, EQ], self.answer[ev] == t

    def fit_tokens(self, fold: int) -> tuple[Tensor, Tensor]:
        """Activations at every position of the fit prompts ``[n·5, d]`` and the model's logits there ``[n·5, V]``
        (unsupervised training data of SAEs and tuned lenses)."""
        fit, _ = self.folds[fold]
        return self.h[fit].reshape(-1, self.d_model), self.base_logits[fit].reshape(-1, self.base_logits.shape[-1])

    def edited(self, fold: int, t: int, lens: Any, edit: Any) -> Outcome:
        """Apply ``edit`` to ``lens``'s concepts at the site, every position, on the held-out prompts."""
        from assay.evaluate.intervention import mean_kl
        from assay.lenses.intervene import intervene

        _, ev = self.folds[fold]
        with torch.no_grad(), intervene(self.model, self.site, lens, edit, record=False):
            logits = self.model(self.ids[ev])
        return self._outcome(ev, t, logits[:, EQ], mean_kl(self.base_logits[ev, :EQ], logits[:, :EQ]))

    def prompted(self, fold: int, t: int, copies: int) -> Outcome:
        """The prompting baseline: ``copies`` target-weekday tokens before each held-out prompt."""
        from assay.evaluate.intervention import mean_kl

        context = self.model.config.context
        if not 1 <= copies <= context - self.ids.shape[1]:
            raise ConfigError(f"prompting:strength is the number of prefix tokens, 1..{context - self.ids.shape[1]} "
                              f"for this model's context of {context}; got {copies}")
        _, ev = self.folds[fold]
        prefix = torch.full((len(ev), copies), self.concept_token(t))
        with torch.no_grad():
            logits = self.model(torch.cat([prefix, self.ids[ev]], 1))
        kl = mean_kl(self.base_logits[ev, :EQ], logits[:, copies:copies + EQ])
        return self._outcome(ev, t, logits[:, -1], kl)

    def _outcome(self, ev: Tensor, t: int, answer_logits: Tensor, kl: float) -> Outcome:
        predicted = answer_logits.argmax(-1) - self.first_concept
        return Outcome(predicted, torch.full_like(predicted, t), self.answer[ev] != t, kl)


def prepare_cyclic(site: str, seed: int, settings: Any) -> CyclicModelWorld:
    """Train (or load from the zoo's cache) the cyclic world model for ``seed`` and prepare it."""
    from assay.hooks import SiteError, resolve
    from assay.models.zoo import world_model

    wm = world_model("cyclic", world_overrides={"split": "all"},
                     model_overrides={"n_layers": settings.n_layers, "n_heads": 2, "d_model": settings.d_model,
                                      "context": 8},
                     train_overrides={"steps": settings.model_steps, "batch_size": 64, "lr": 3e-3, "min_lr": 3e-4,
                                      "warmup": 20, "eval_every": None, "eval_size": 64},
                     seed=seed, progress=False)
    try:
        resolve(wm.model, site)
    except SiteError as e:
        raise ConfigError(f"cyclic world: {e}; the sites of the {settings.n_layers}-layer model are embed and "
                          f"blocks.0..blocks.{settings.n_layers - 1}") from None
    desc = (f"{settings.n_layers}-layer d={settings.d_model} transformer, {settings.model_steps} steps (zoo, seed {seed})")
    return CyclicModelWorld(wm.model, wm.world, site, seed, description=desc)
