"""Artifacts: anything assay saves — one folder with ``config.json`` and ``*.safetensors``.

``config.json`` holds the artifact kind, the frozen config, the library version, free-form
metadata and the SHA-256 of every tensor file. Saving is atomic (written to a temporary sibling
folder, then renamed into place), so an interrupted save never leaves a half-written artifact.
Loading validates the kind, the checksums, and (when asked) the expected tensor names, shapes and
dtypes, and says exactly what is wrong. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from assay import __version__
from assay.config import from_dict, to_dict

__all__ = ["ArtifactError", "Artifact", "save_artifact", "load_artifact", "sha256_file", "atomic_write_text",
           "check_writable", "staged_folder"]

C = TypeVar("C")
CONFIG_FILE = "config.json"


class ArtifactError(ValueError):
    """An artifact folder that is missing, corrupted, or not what the caller expected."""


class Artifact(NamedTuple):
    """A loaded artifact."""

    kind: str
    """What the artifact is, e.g. ``"sae.topk"``."""
    config: Any
    """The config: an instance of ``config_cls`` when given to :func:`load_artifact`, else a dict."""
    tensors: dict[str, dict[str, torch.Tensor]]
    """``file stem -> {tensor name -> tensor}``, one entry per ``*.safetensors`` file."""
    meta: dict[str, Any]
    """Free-form metadata saved alongside (step counts, metrics, ...)."""
    version: str
    """The assay version that wrote it."""


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | Path, *, overwrite: bool = False) -> Path:
    """Check, before any work, that an artifact can later be saved at ``path``: refuse an existing
    ``path`` unless ``overwrite``, and prove its folder can be created and written (a temporary file is
    made and removed there). Returns ``path``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path} already exists; choose another output, or pass overwrite to replace it")
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{path} is a file, not an artifact folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ArtifactError(f"cannot write the output {path}: {e.strerror or e}; choose a writable folder") from None
    return path


def save_artifact(
    path: str | Path,
    *,
    kind: str,
    config: Any,
    tensors: Mapping[str, Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor],
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Save an artifact folder atomically and return its path.

    ``tensors`` is either one ``name -> tensor`` mapping (saved as ``weights.safetensors``) or
    ``file stem -> {name -> tensor}`` for several files. ``config`` is a config dataclass or a dict.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ArtifactError(f"{path} exists; pass overwrite=True to replace it")
    if tensors and all(isinstance(v, torch.Tensor) for v in tensors.values()):
        files = {"weights": dict(tensors)}  # type: ignore[arg-type]
    else:
        files = {stem: dict(t) for stem, t in tensors.items()}  # type: ignore[union-attr]
    cfg = to_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    with staged_folder(path) as tmp:
        checksums = {}
        for stem, ts in files.items():
            f = tmp / f"{stem}.safetensors"
            save_file({k: v.detach().contiguous().cpu() for k, v in ts.items()}, str(f))
            checksums[f.name] = sha256_file(f)
        doc = {"kind": kind, "assay_version": __version__, "config": cfg, "meta": dict(meta or {}),
               "files": checksums}
        (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True))
    return path


@contextmanager
def staged_folder(path: str | Path) -> Iterator[Path]:
    """Write a folder atomically: the block fills a fresh temporary folder beside ``path``, which then replaces
    ``path`` (an existing one is moved aside first and removed after); if the block fails the temporary folder
    is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_artifact(
    path: str | Path,
    *,
    kind: str | None = None,
    config_cls: type[C] | None = None,
    expect: Mapping[str, tuple[tuple[int, ...], torch.dtype]] | None = None,
    device: str | torch.device = "cpu",
) -> Artifact:
    """Load and validate an artifact folder.

    ``kind`` must match the saved kind (a prefix match: ``"sae"`` accepts ``"sae.topk"``);
    ``config_cls`` turns the config into that dataclass; ``expect`` maps tensor names (of the
    ``weights`` file) to their expected ``(shape, dtype)``.
    """
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise ArtifactError(f"{path} is not an assay artifact: {CONFIG_FILE} is missing")
    try:
        doc = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{cfg_file} is corrupted (not valid JSON: {e})") from None
    for key in ("kind", "config", "files"):
        if key not in doc:
            raise ArtifactError(f"{cfg_file} lacks the field {key!r}; the artifact is corrupted")
    if kind is not None and not (doc["kind"] == kind or doc["kind"].startswith(kind + ".")):
        raise ArtifactError(f"{path} holds a {doc['kind']!r} artifact, expected {kind!r}")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name, digest in doc["files"].items():
        f = path / name
        if not f.is_file():
            raise ArtifactError(f"{path}: tensor file {name} is missing")
        if sha256_file(f) != digest:
            raise ArtifactError(f"{path}: tensor file {name} is corrupted (checksum mismatch)")
        try:
            tensors[name.removesuffix(".safetensors")] = load_file(str(f), device=str(device))
        except SafetensorError as e:
            raise ArtifactError(f"{path}: tensor file {name} cannot be read: {e}") from None
    if expect:
        weights = tensors.get("weights", {})
        for name, (shape, dtype) in expect.items():
            if name not in weights:
                raise ArtifactError(f"{path}: tensor {name!r} missing; found {sorted(weights)}")
            t = weights[name]
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ArtifactError(
                    f"{path}: tensor {name!r} is {tuple(t.shape)} {t.dtype}, expected {tuple(shape)} {dtype}"
                )
    config = from_dict(config_cls, doc["config"]) if config_cls is not None else doc["config"]
    return Artifact(doc["kind"], config, tensors, doc.get("meta", {}), doc.get("assay_version", "?"))
