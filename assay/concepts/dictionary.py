"""The concept dictionary of SpLiCE: named unit-norm concept rows plus both modality means, as an artifact.

Bhalla, Oesterling, Srinivas, Calmon & Lakkaraju 2024, "Interpreting CLIP with Sparse Linear Concept
Embeddings (SpLiCE)" (NeurIPS 2024, arXiv 2402.10376). Concepts are embedded on one side of a
two-modality model (text), queries on the other (images), and the two clouds sit around different means
(the *modality gap*). The dictionary therefore stores, beside the rows, the mean of each modality:

    e_i = normalise(enc_concept(name_i)),   μ_con = mean_i e_i,   C_i = normalise(e_i − μ_con)   (rows of C)
    z_c = normalise(normalise(z) − μ_qry)                                      (a centred query)

where μ_qry is the mean normalised query embedding over a reference set. assay generalises the
dictionary beyond CLIP text concepts [design]: :func:`from_text` takes any text encoder (MiniLM offline,
:func:`from_text_model`), :func:`from_sae` takes SAE decoder rows and :func:`from_probes` probe
directions (rows normalised; centring is off by default there, since such rows have no second modality).
Both means are saved with the rows (the SpLiCE repository downloads them at run time, which fails
offline). Saved as an :mod:`assay.artifact` (kind ``"concepts.dictionary"``: atomic, checksummed,
safetensors; the names live in the config).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from assay.artifact import ArtifactError, load_artifact, save_artifact

__all__ = ["ConceptDictionary", "DictionaryConfig", "DictionaryError", "normalise", "modality_mean",
           "centre", "from_embeddings", "from_text", "from_text_model", "from_sae", "from_probes",
           "save_dictionary", "load_dictionary"]

KIND = "concepts.dictionary"
NORM_TOL = 1e-3
"""How far from 1 a row's L2 norm may be before the dictionary is refused."""


class DictionaryError(ValueError):
    """A concept dictionary, or a query for it, that is malformed; the message says what to do."""


def normalise(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    return torch.nn.functional.normalize(x, dim=-1)


def modality_mean(embeddings: Tensor) -> Tensor:
    """μ = mean of the normalised rows of ``embeddings [n, d]`` (one modality's mean, SpLiCE §3)."""
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise DictionaryError(f"need a non-empty [n, d] matrix of embeddings, got shape {tuple(embeddings.shape)}")
    return normalise(embeddings.double()).mean(0).to(embeddings.dtype)


def centre(x: Tensor, mean: Tensor) -> Tensor:
    """normalise(normalise(x) − mean): the centring SpLiCE applies to concepts and queries alike."""
    if x.shape[-1] != mean.shape[-1]:
        raise DictionaryError(f"embeddings have dimension {x.shape[-1]} but the mean has {mean.shape[-1]}; "
                              "use the mean computed with the same embedding model")
    return normalise(normalise(x) - mean.to(x))


@dataclass(frozen=True, kw_only=True)
class DictionaryConfig:
    """What a saved concept dictionary is (the artifact's config)."""

    names: tuple[str, ...]
    """Concept names, one per row."""
    d: int
    """Embedding dimension."""
    source: str = "embeddings"
    """Where the rows came from (``text:minilm-l6``, ``sae``, ``probes``, …)."""
    centred: bool = True
    """Whether the rows were centred on the concept-side mean before renormalising."""


@dataclass(frozen=True, kw_only=True)
class ConceptDictionary:
    """Concept rows ``C [c, d]`` (unit norm), their names, and both modality means ``[d]``."""

    names: tuple[str, ...]
    """Concept names, one per row."""
    rows: Tensor
    """C ``[c, d]``: unit-norm (centred, when ``centred``) concept embeddings."""
    concept_mean: Tensor
    """μ_con ``[d]``: mean of the normalised concept embeddings before centring (zeros when not centred)."""
    query_mean: Tensor
    """μ_qry ``[d]``: mean of the normalised query embeddings (the other modality), added back on recomposition."""
    source: str = "embeddings"
    """Where the rows came from."""
    centred: bool = True
    """Whether the rows were centred."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (reference set, model, …), saved with the artifact."""

    def __post_init__(self) -> None:
        if self.rows.dim() != 2:
            raise DictionaryError(f"concept rows must be a [c, d] matrix, got shape {tuple(self.rows.shape)}")
        c, d = self.rows.shape
        if len(self.names) != c:
            raise DictionaryError(f"{len(self.names)} concept names for {c} rows; give one name per row")
        if len(set(self.names)) != c:
            dup = sorted({n for n in self.names if self.names.count(n) > 1})[:5]
            raise DictionaryError(f"concept names must be unique; repeated: {dup}")
        for what, m in (("concept_mean", self.concept_mean), ("query_mean", self.query_mean)):
            if tuple(m.shape) != (d,):
                raise DictionaryError(f"{what} has shape {tuple(m.shape)} but the rows have dimension {d}; "
                                      "compute both means with the embedding model that made the rows")
        norms = self.rows.double().norm(dim=1)
        bad = (norms - 1).abs() > NORM_TOL
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise DictionaryError(
                f"concept rows must have unit L2 norm: row {i} ({self.names[i]!r}) has norm {float(norms[i]):.4g} "
                f"({int(bad.sum())} of {c} rows are off by more than {NORM_TOL}); build the dictionary with "
                "from_embeddings / from_sae / from_probes (they normalise), or divide each row by its norm")

    @property
    def d(self) -> int:
        """Embedding dimension."""
        return self.rows.shape[1]

    def __len__(self) -> int:
        return self.rows.shape[0]

    def index(self, names: str | Sequence[str]) -> list[int]:
        """Row indices of concept ``names`` (an unknown name raises, with close matches)."""
        import difflib

        lookup = {n: i for i, n in enumerate(self.names)}
        out = []
        for n in [names] if isinstance(names, str) else names:
            if n not in lookup:
                close = difflib.get_close_matches(n, self.names, n=3)
                raise DictionaryError(f"no concept {n!r} in the dictionary" + (f"; did you mean {close}?" if close else ""))
            out.append(lookup[n])
        return out

    def check_queries(self, z: Tensor) -> None:
        """Raise a clear error unless ``z [..., d]`` has the dictionary's dimension."""
        if z.shape[-1] != self.d:
            raise DictionaryError(f"queries have dimension {z.shape[-1]} but the dictionary's rows have {self.d}; "
                                  "embed the queries with the model that built the dictionary")

    def centre_queries(self, z: Tensor) -> Tensor:
        """z_c = normalise(normalise(z) − μ_qry) ``[..., d]``."""
        self.check_queries(z)
        return centre(z, self.query_mean)


def from_embeddings(names: Sequence[str], embeddings: Tensor, *, query_mean: Tensor | None = None,
                    centred: bool = True, source: str = "embeddings",
                    meta: Mapping[str, Any] | None = None) -> ConceptDictionary:
    """The dictionary of concept ``embeddings [c, d]``: rows normalised, centred on their mean when
    ``centred`` (then renormalised); ``query_mean`` is the other modality's mean (zeros if None)."""
    if embeddings.dim() != 2:
        raise DictionaryError(f"concept embeddings must be a [c, d] matrix, got shape {tuple(embeddings.shape)}")
    e = embeddings.detach().float()
    mu = modality_mean(e) if centred else torch.zeros(e.shape[1])
    rows = centre(e, mu) if centred else normalise(e)
    if bool((rows.norm(dim=1) == 0).any()):
        i = int((rows.norm(dim=1) == 0).nonzero()[0])
        raise DictionaryError(f"concept {names[i]!r} has a zero embedding (after centring); drop it")
    qm = torch.zeros(e.shape[1]) if query_mean is None else query_mean.detach().float().reshape(-1)
    return ConceptDictionary(names=tuple(names), rows=rows, concept_mean=mu, query_mean=qm, source=source,
                             centred=centred, meta=dict(meta or {}))


def from_text(names: Sequence[str], encode: Callable[[Sequence[str]], Tensor], *, query_mean: Tensor | None = None,
              centred: bool = True, source: str = "text") -> ConceptDictionary:
    """Concepts named in text, embedded by ``encode`` (``list[str] -> [c, d]``, any text encoder)."""
    if not names:
        raise DictionaryError("no concept names given")
    return from_embeddings(names, encode(list(names)), query_mean=query_mean, centred=centred, source=source)


def from_text_model(names: Sequence[str], loaded: Any, *, query_mean: Tensor | None = None,
                    centred: bool = True) -> ConceptDictionary:
    """Concepts embedded by an offline text encoder (``assay.models.offline.load("minilm-l6")``)."""
    from assay.models.offline import encode_sentences

    return from_text(names, lambda t: encode_sentences(loaded, t), query_mean=query_mean, centred=centred,
                     source=f"text:{loaded.name}")


def from_sae(sae_or_rows: Any, *, names: Sequence[str] | None = None, query_mean: Tensor | None = None,
             centred: bool = False) -> ConceptDictionary:
    """SAE atoms as concepts: the decoder rows ``W_dec [n, d]`` (or an SAE holding them), normalised; names
    default to ``latent_<i>``."""
    w = getattr(sae_or_rows, "W_dec", sae_or_rows)
    if not isinstance(w, Tensor):
        raise DictionaryError(f"from_sae takes an SAE with W_dec or a [n, d] tensor, got {type(sae_or_rows).__name__}")
    names = tuple(names) if names is not None else tuple(f"latent_{i}" for i in range(w.shape[0]))
    return from_embeddings(names, w, query_mean=query_mean, centred=centred, source="sae")


def from_probes(directions: Mapping[str, Any], *, query_mean: Tensor | None = None,
                centred: bool = False) -> ConceptDictionary:
    """Probe directions as concepts: ``name -> direction [d]`` (a tensor, or a probe with a ``w`` weight)."""
    if not directions:
        raise DictionaryError("no probe directions given")
    rows = [getattr(v, "w", v) for v in directions.values()]
    dims = {tuple(r.shape) for r in rows}
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        raise DictionaryError(f"probe directions must all be vectors of one dimension, got shapes {sorted(dims)}")
    return from_embeddings(list(directions), torch.stack(rows), query_mean=query_mean, centred=centred,
                           source="probes")


def save_dictionary(path: str | Path, dictionary: ConceptDictionary, *, overwrite: bool = True) -> Path:
    """Save as an artifact folder (kind ``concepts.dictionary``)."""
    cfg = DictionaryConfig(names=dictionary.names, d=dictionary.d, source=dictionary.source,
                           centred=dictionary.centred)
    tensors = {"rows": dictionary.rows, "concept_mean": dictionary.concept_mean, "query_mean": dictionary.query_mean}
    return save_artifact(path, kind=KIND, config=cfg, tensors=tensors, meta=dictionary.meta, overwrite=overwrite)


def load_dictionary(path: str | Path) -> ConceptDictionary:
    """Load a saved dictionary, validating shapes, checksums and row norms."""
    art = load_artifact(path, kind=KIND, config_cls=DictionaryConfig)
    cfg: DictionaryConfig = art.config
    c, d = len(cfg.names), cfg.d
    w = art.tensors.get("weights", {})
    for name, shape in (("rows", (c, d)), ("concept_mean", (d,)), ("query_mean", (d,))):
        if name not in w or tuple(w[name].shape) != shape:
            got = tuple(w[name].shape) if name in w else "missing"
            raise ArtifactError(f"{path}: tensor {name!r} is {got}, expected {shape}; the artifact is corrupted")
    return ConceptDictionary(names=cfg.names, rows=w["rows"], concept_mean=w["concept_mean"],
                             query_mean=w["query_mean"], source=cfg.source, centred=cfg.centred, meta=art.meta)
