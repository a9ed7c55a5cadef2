"""The SAE architectures by name, and saving/loading them as assay artifacts.

An SAE artifact is a folder (``assay.artifact``) of kind ``"sae.<architecture>"`` with the config,
``weights.safetensors`` holding the state dict, and metadata. Loading validates the architecture,
every tensor name, shape and dtype, and the checksums (SAELens#553: an SAE of one architecture must
never load silently as another).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from assay.artifact import ArtifactError, load_artifact, save_artifact
from assay.dictionaries.base import SAE, SAEConfig

__all__ = ["ARCHITECTURES", "TRANSCODERS", "CROSSCODERS", "SEQUENCE_SAES", "sae_class", "build_sae", "save_sae", "load_sae"]

ARCHITECTURES: dict[str, str] = {
    "relu": "assay.dictionaries.relu:ReLUSAE",
    "topk": "assay.dictionaries.topk:TopKSAE",
    "batchtopk": "assay.dictionaries.batchtopk:BatchTopKSAE",
    "jumprelu": "assay.dictionaries.jumprelu:JumpReLUSAE",
    "matryoshka": "assay.dictionaries.matryoshka:MatryoshkaSAE",
    "archetypal": "assay.dictionaries.archetypal:ArchetypalSAE",
    "mp": "assay.dictionaries.mp:MatchingPursuitSAE",
    "spade": "assay.dictionaries.spade:SpaDESAE",
}
"""SAE architecture name → ``module:Class``."""

TRANSCODERS: dict[str, str] = {
    "topk_transcoder": "assay.dictionaries.transcoder:TopKTranscoder",
    "jumprelu_transcoder": "assay.dictionaries.transcoder:JumpReLUTranscoder",
    "topk_clt": "assay.dictionaries.clt:TopKCLT",
    "jumprelu_clt": "assay.dictionaries.clt:JumpReLUCLT",
}
"""Transcoder architecture name → ``module:Class`` (input site → output site; config adds ``d_out``, ``skip``;
the cross-layer transcoders add ``n_layers``, ``window``)."""

CROSSCODERS: dict[str, str] = {"crosscoder": "assay.dictionaries.crosscoder:Crosscoder"}
"""Crosscoder architecture name → ``module:Class`` (several sources concatenated; config adds ``n_sources``)."""

SEQUENCE_SAES: dict[str, str] = {"temporal": "assay.dictionaries.temporal:TemporalSAE"}
"""Sequence SAE name → ``module:Class`` (they read whole windows ``[B, T, d]``, not tokens; outside
``ARCHITECTURES``, whose contract suite assumes token-level SAEs)."""


def sae_class(architecture: str) -> type[SAE]:
    """The SAE (or transcoder) class registered under ``architecture``."""
    table = ARCHITECTURES | TRANSCODERS | CROSSCODERS | SEQUENCE_SAES
    if architecture not in table:
        raise ValueError(f"unknown SAE architecture {architecture!r}; choose one of {', '.join(table)}")
    module, name = table[architecture].split(":")
    return getattr(importlib.import_module(module), name)


def build_sae(architecture: str, **config: Any) -> SAE:
    """Build an SAE by name from config keywords, e.g. ``build_sae("topk", d_in=64, d_sae=512, k=8)``."""
    cls = sae_class(architecture)
    return cls(cls.config_cls(**config))


def save_sae(path: str | Path, sae: SAE, *, meta: dict[str, Any] | None = None) -> Path:
    """Save ``sae`` as an artifact folder (weights in their own dtype)."""
    return save_artifact(
        path, kind=f"sae.{sae.architecture}", config=sae.cfg, tensors=dict(sae.state_dict()), meta=meta or {}
    )


def load_sae(path: str | Path, *, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE artifact, validating architecture, tensor names, shapes and dtypes."""
    art = load_artifact(path, kind="sae", device=device)
    arch = art.kind.split(".", 1)[1] if "." in art.kind else ""
    try:
        cls = sae_class(arch)
    except ValueError as e:
        raise ArtifactError(f"{path}: {e}") from None
    from assay.config import from_dict

    try:
        cfg: SAEConfig = from_dict(cls.config_cls, art.config)
    except ValueError as e:
        raise ArtifactError(f"{path}: the saved config does not fit a {arch!r} SAE: {e}") from None
    sae = cls(cfg)
    expected = sae.state_dict()
    got = cls.upgrade_state_dict(dict(art.tensors.get("weights", {})))
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        raise ArtifactError(f"{path}: a {arch!r} SAE needs tensors {sorted(expected)}; missing {missing}, "
                            f"unexpected {extra}")
    for name, t in expected.items():
        if tuple(got[name].shape) != tuple(t.shape):
            raise ArtifactError(f"{path}: tensor {name!r} has shape {tuple(got[name].shape)}, expected {tuple(t.shape)}")
        if got[name].dtype != t.dtype and not (got[name].is_floating_point() and t.is_floating_point()):
            raise ArtifactError(f"{path}: tensor {name!r} has dtype {got[name].dtype}, expected {t.dtype}")
    sae.load_state_dict(got)
    return sae.to(device)
