"""Classifier safety filter: a sentence encoder (MiniLM) with a logistic head, trained with the
erase-and-check recipe.

Kumar, Agarwal, Srinivas, Li, Feizi & Lakkaraju 2024, "Certifying LLM Safety against Adversarial
Prompting" (arXiv 2309.02705): their classifier is DistilBERT fine-tuned on harmful prompts (label
harmful) and on safe prompts **plus the erased subsequences of safe prompts** for the mode and d it
will check (label safe), so erasing tokens from a safe prompt does not flip it to harmful; one model
per mode. Here the encoder is frozen (all-MiniLM-L6-v2, Wang et al. 2020, offline) and the head is
L2 logistic regression on its sentence embedding (:func:`assay.lenses.probes.logistic`):

    e(x) = normalise(mean_t h_t([CLS] ⊕ x ⊕ [SEP])),   F(x) = σ(w·e(x) + b)

with the sentence-transformers mean pooling of :func:`assay.models.offline.encode_sentences`, but on
token ids, so erased sequences are never decoded to text. ``soft_logit`` (for GradEC) weights each
prompt token's input embedding by keep_t and fills the rest with the [PAD] embedding, as the repo does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from assay.lenses.probes import LinearProbe, logistic
from assay.safety.erase import Mode, erased_subsequences

__all__ = ["ClassifierFilter", "fit_classifier_filter", "tokenize"]


def tokenize(tokenizer: Any, texts: Sequence[str]) -> list[tuple[int, ...]]:
    """Token ids of each text, without special tokens (no BOS/[CLS]): the space erase-and-check works in."""
    return [tuple(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


class ClassifierFilter:
    """Frozen BERT-style encoder + logistic head, as a batched safety filter on token ids."""

    def __init__(self, encoder: nn.Module, head: LinearProbe, *, cls_id: int, sep_id: int, pad_id: int,
                 context_length: int, name: str = "minilm-classifier", batch_size: int = 64) -> None:
        self.encoder, self.head = encoder, head
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        self.context_length, self.name, self.batch_size = context_length, name, batch_size

    @classmethod
    def for_encoder(cls, loaded: Any, head: LinearProbe | None = None, **kwargs: Any) -> ClassifierFilter:
        """From an :class:`assay.models.offline.LoadedModel` (e.g. ``load("minilm-l6")``); the context is the
        encoder's positions minus [CLS] and [SEP]."""
        tok = loaded.tokenizer
        head = head if head is not None else LinearProbe(torch.zeros(loaded.model.config.hidden_size),
                                                         torch.zeros(()), "untrained")
        return cls(loaded.model, head, cls_id=tok.cls_token_id, sep_id=tok.sep_token_id, pad_id=tok.pad_token_id,
                   context_length=loaded.model.config.max_position_embeddings - 2, **kwargs)

    def embed(self, sequences: Sequence[Sequence[int]]) -> Tensor:
        """Normalised mean-pooled embeddings ``[n, d_model]`` of ``[CLS] ⊕ x ⊕ [SEP]``."""
        device = next(self.encoder.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(sequences), self.batch_size):
                rows = [(self.cls_id, *s, self.sep_id) for s in sequences[i:i + self.batch_size]]
                width = max(len(r) for r in rows)
                ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros(len(rows), width, dtype=torch.long)
                for j, r in enumerate(rows):
                    ids[j, : len(r)] = torch.tensor(r)
                    mask[j, : len(r)] = 1
                hidden = self.encoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                m = mask.to(device).unsqueeze(-1).to(hidden.dtype)
                out.append(nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1).float().cpu())
        return torch.cat(out)

    def harmful_probability(self, sequences: Sequence[Sequence[int]]) -> Tensor:
        """σ(head(e(x))) ``[n]``."""
        return torch.sigmoid(self.head.score(self.embed(sequences)).float())

    def embedding_table(self) -> Tensor:
        """The encoder's input embedding matrix ``[vocab, d_model]`` (for gradient attacks)."""
        return self.encoder.get_input_embeddings().weight

    def content_logit(self, emb: Tensor) -> Tensor:
        """Head logit (0-d, differentiable) of a prompt given as input embeddings ``[T, d_model]`` (no [CLS]/[SEP])."""
        table = self.encoder.get_input_embeddings()
        ends = table(torch.tensor([self.cls_id, self.sep_id], device=emb.device))
        hidden = self.encoder(inputs_embeds=torch.cat([ends[:1], emb, ends[1:]]).unsqueeze(0)).last_hidden_state[0]
        e = nn.functional.normalize(hidden.mean(0), dim=-1)
        return (e.to(self.head.w.dtype) @ self.head.w.to(e.device) + self.head.b.to(e.device)).cpu()

    def soft_logit(self, tokens: Sequence[int], keep: Tensor) -> Tensor:
        """Head logit with token t's input embedding keep_t·E[x_t] + (1 − keep_t)·E[PAD] (differentiable in keep)."""
        table = self.encoder.get_input_embeddings()
        device = table.weight.device
        emb = table(torch.tensor(list(tokens), dtype=torch.long, device=device))
        pad = table(torch.tensor([self.pad_id], device=device))
        k = keep.to(device=device, dtype=emb.dtype).unsqueeze(-1)
        return self.content_logit(k * emb + (1 - k) * pad)


def fit_classifier_filter(base: ClassifierFilter, harmful: Sequence[Sequence[int]], safe: Sequence[Sequence[int]], *,
                          mode: Mode, d: int, k: int = 1, C: float = 10.0, max_erased_per_prompt: int | None = 64,
                          generator: torch.Generator | None = None) -> ClassifierFilter:
    """Train the head: harmful prompts → 1; safe prompts and their distinct erased subsequences (``mode``, ``d``,
    ``k``; at most ``max_erased_per_prompt`` per prompt, drawn by ``generator``) → 0."""
    if not harmful or not safe:
        raise ValueError(f"need harmful and safe prompts, got {len(harmful)} harmful and {len(safe)} safe")
    negatives: list[tuple[int, ...]] = []
    for s in safe:
        seqs = list(erased_subsequences(s, mode, d, k))
        rest = seqs[1:]
        if max_erased_per_prompt is not None and len(rest) > max_erased_per_prompt:
            pick = torch.randperm(len(rest), generator=generator)[:max_erased_per_prompt]
            rest = [rest[int(i)] for i in pick]
        negatives += [seqs[0], *rest]
    x = base.embed([tuple(h) for h in harmful] + negatives)
    y = torch.tensor([1] * len(harmful) + [0] * len(negatives))
    head = logistic(x, y, C=C, standardise=False)
    return ClassifierFilter(base.encoder, head, cls_id=base.cls_id, sep_id=base.sep_id, pad_id=base.pad_id,
                            context_length=base.context_length, name=base.name, batch_size=base.batch_size)
