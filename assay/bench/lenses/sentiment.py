"""The lenses family's optional real-model world: SmolLM2-135M and the bundled Pang & Lee sentiment sentences.

The same encoder–decoder comparison as the cyclic world (:mod:`assay.bench.lenses.family`; Bhalla,
Srinivas, Ghandeharioun & Lakkaraju 2024), with one concept — positive sentiment — at one residual layer.
Methods are fitted on the BOS-free mean residuals of the training sentences (the data of ``assay steer``,
:mod:`assay.bench.lenses.sentiment_steering`) and scored on held-out ones:

- read-out: the encoded concept of each held-out sentence against its label;
- intervention (every position): each held-out (positive, negative) pair continues a neutral prompt; the
  model's *answer* is the continuation it finds likelier (per-token mean log-likelihood); success when the
  answer becomes the positive one, among the pairs whose unedited answer was the negative one;
- coherence cost: KL(unedited ‖ edited) per token on held-out ``lee`` documents.

Prompting replaces the neutral prompt by an increasingly explicit positive one (strength 1, 2, 3); its
cost is the KL on the ``lee`` documents with that prompt before them. No SAE or tuned lens is bundled for
SmolLM2, so those two methods do not apply here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from assay.bench.lenses.family import Outcome
from assay.config import ConfigError
from assay.lenses.text import TokenBatch

__all__ = ["NEUTRAL_PROMPT", "POSITIVE_PROMPTS", "SentimentWorld", "prepare_sentiment"]

NEUTRAL_PROMPT = "Here is my review of the film:"
"""The prompt every continuation follows (as ``assay steer``)."""

POSITIVE_PROMPTS = ("Here is my positive review of the film:",
                    "Here is my glowing, enthusiastic review of a film I loved:",
                    "I loved this film. It was wonderful, brilliant and moving. Here is my glowing review of the film:")
"""The prompting baseline's prompts, strength 1, 2, 3."""

CONCEPT_WORD = " good"
"""The token the logit lens edits for the concept (one token in SmolLM2's vocabulary)."""


class SentimentWorld:
    """A prepared SmolLM2 sentiment world (a :class:`~assay.bench.lenses.family.LensWorld`)."""

    applies = frozenset({"diff_means", "probe", "pca", "random", "logit_lens", "prompting"})
    """Methods that apply to this world."""
    n_concepts = 1
    folds = ((None, None),)
    """One split: the training sentences fit, the held-out ones score."""
    model_acc = None

    def __init__(self, lm: Any, site: str, seed: int, settings: Any) -> None:
        from assay.bench.lenses.sentiment_steering import (
            continuation_batches,
            continuation_scores,
            heldout_batch,
            sentiment_split,
        )
        from assay.lenses.sweep import collect_features
        from assay.lenses.text import batches

        self.lm, self.model, self.tok, self.site, self.settings = lm, lm.model, lm.tokenizer, site, settings
        split = sentiment_split(settings.n_train, settings.n_eval, seed)
        k, bs = settings.n_train // 2, settings.batch_size

        def pooled(texts: list[str]) -> Tensor:
            return collect_features(self.model, [site], batches(self.tok, texts, bs), pooling="mean",
                                    skip_first=True)[site]

        train = pooled(split.train_pos + split.train_neg)
        self.pos, self.neg = train[:k], train[k:]
        self.train_labels = torch.cat([torch.ones(k, dtype=torch.bool), torch.zeros(k, dtype=torch.bool)])
        self.eval_x = pooled(split.eval_pos + split.eval_neg)
        self.eval_labels = torch.arange(len(self.eval_x)) < len(split.eval_pos)
        self.texts = split.eval_pos + split.eval_neg
        self.n_pairs = len(split.eval_pos)
        self._batches, self._scores, self._held = continuation_batches, continuation_scores, heldout_batch
        self.cont = continuation_batches(self.tok, NEUTRAL_PROMPT, self.texts, bs)
        self.held = heldout_batch(self.tok, settings.n_heldout, settings.heldout_tokens)
        with torch.no_grad():
            self.base_pref = self._preferences(self.cont)
            self.base_held = self._held_logits(self.held)
        self.norm, self.unembed = self.model.model.norm, self.model.lm_head
        ids = self.tok(CONCEPT_WORD, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(f"the concept word {CONCEPT_WORD!r} is {len(ids)} tokens in {lm.name}'s vocabulary")
        self.token = int(ids[0])
        self.memo: dict[Any, Any] = {}

    @property
    def d_model(self) -> int:
        return int(self.pos.shape[-1])

    def concept_token(self, t: int) -> int:
        return self.token

    def fit_pairs(self, fold: int, t: int) -> tuple[Tensor, Tensor]:
        """Training positives and negatives, paired by index ``[k, d]``."""
        return self.pos, self.neg

    def fit_labelled(self, fold: int, t: int) -> tuple[Tensor, Tensor]:
        return torch.cat([self.pos, self.neg]), self.train_labels

    def readout(self, fold: int, t: int) -> tuple[Tensor, Tensor]:
        return self.eval_x, self.eval_labels

    def fit_tokens(self, fold: int) -> tuple[Tensor, Tensor]:
        raise ConfigError("the smollm2 world has no token-level training data for SAEs or tuned lenses")

    def _preferences(self, cont: list[Any]) -> Tensor:
        ll, _ = self._scores(self.model, cont)
        return (ll[: self.n_pairs] > ll[self.n_pairs:]).long()

    def _held_logits(self, held: Any) -> Tensor:
        return self.model(input_ids=held.input_ids, attention_mask=held.attention_mask).logits

    def _outcome(self, pref: Tensor, kl: float) -> Outcome:
        return Outcome(pref, torch.ones_like(pref), self.base_pref == 0, kl)

    def edited(self, fold: int, t: int, lens: Any, edit: Any) -> Outcome:
        from assay.evaluate.intervention import mean_kl
        from assay.lenses.intervene import intervene

        with torch.no_grad(), intervene(self.model, self.site, lens, edit, record=False):
            pref = self._preferences(self.cont)
            held = self._held_logits(self.held)
        return self._outcome(pref, mean_kl(self.base_held, held, self.held.attention_mask))

    def prompted(self, fold: int, t: int, strength: int) -> Outcome:
        from assay.bench.lenses.sentiment_steering import drop_first
        from assay.evaluate.intervention import mean_kl

        if not 1 <= strength <= len(POSITIVE_PROMPTS):
            raise ConfigError(f"prompting:strength picks one of the {len(POSITIVE_PROMPTS)} positive prompts, "
                              f"1..{len(POSITIVE_PROMPTS)}; got {strength}")
        prompt = POSITIVE_PROMPTS[strength - 1]
        with torch.no_grad():
            pref = self._preferences(self._batches(self.tok, prompt, self.texts, self.settings.batch_size))
            logits = self._held_logits(self._prefixed(prompt))
        m = self.held.input_ids.shape[1] - 1  # both batches are left-padded: the document tokens end each row
        mask = drop_first(self.held.attention_mask)[:, -m:]
        return self._outcome(pref, mean_kl(self.base_held[:, -m:], logits[:, -m:], mask))

    def _prefixed(self, prompt: str) -> TokenBatch:
        """The held-out documents with ``prompt``'s tokens between the BOS and the document (the same
        document tokens, left-padded, so they end every row as in ``self.held``)."""
        p = list(self.tok(prompt, add_special_tokens=False)["input_ids"])
        rows = [[int(r[0]), *p, *r[1:].tolist()] for r in (row[m.bool()] for row, m in
                                                               zip(self.held.input_ids, self.held.attention_mask))]
        T = max(len(r) for r in rows)
        pad = int(self.held.input_ids[~self.held.attention_mask.bool()][0]) if (self.held.attention_mask == 0).any() else 0
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, T - len(r):], mask[i, T - len(r):] = torch.tensor(r), 1
        return TokenBatch(ids, mask)


def prepare_sentiment(layer: int, seed: int, settings: Any) -> SentimentWorld:
    """Load SmolLM2-135M (converted once into ``$ASSAY_CACHE``) and prepare the sentiment world at ``layer``."""
    from assay.bench.lenses.lm import layer_sites
    from assay.models.offline import load

    lm = load("smollm2-135m")
    (site,) = layer_sites(lm, (layer,))
    return SentimentWorld(lm, site, seed, settings)
