"""Shard files: safetensors written atomically, read through a memory map with bounded residency.

The file format is safetensors (an 8-byte little-endian header length, a JSON header giving each
tensor's dtype, shape and byte range, then the raw little-endian tensor bytes), so any safetensors
reader opens a shard. Writing streams the tensor bytes straight to a temporary file while hashing
them (SHA-256), fsyncs, and renames into place: a reader never sees a half-written shard.

Reading maps the file (``mmap``, read-only) and views each tensor as a NumPy array without copying.
Pages touched through a mapping count toward the process's resident memory (RSS) until unmapped,
and a single fault maps more than the page touched: Linux maps up to 16 neighbouring cached pages
("fault-around", 64 KiB) and, since 6.18, a whole large page-cache folio (up to :data:`MAX_FOLIO`).
:meth:`MappedFile.release` drops a mapping's resident pages (``madvise(MADV_DONTNEED)``: they stay
in the OS page cache, only this process's mapping of them goes); :func:`mapped_file_bytes` measures
them. The reader uses the two to keep RSS under a budget whatever the store size.

:func:`file_damage` checks a listed shard file against its manifest record, cheapest test first
(present, size, header and tensor shapes, then SHA-256: only the last reads the whole file); the
reader and the writer's repair both use it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from assay.store.manifest import FileRecord, StoreError, fsync_dir

__all__ = [
    "TensorInfo",
    "write_shard",
    "read_header",
    "sha256_of",
    "shape_problem",
    "file_damage",
    "MappedFile",
    "DTYPES",
    "dtype_name",
    "MAX_FOLIO",
    "mapped_file_bytes",
]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""On-disk activation dtypes by name."""

_ST_CODE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32"}
_FROM_CODE = {v: k for k, v in _ST_CODE.items()}
# NumPy has no bfloat16: such tensors are viewed as uint16 and reinterpreted by torch.
_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "I32": np.int32}
MAX_FOLIO = 2 << 20
"""Most bytes one page fault of a file mapping may make resident (a PMD-sized folio on x86-64/arm64)."""
_CHUNK = 1 << 22


def dtype_name(dtype: torch.dtype | str) -> str:
    """Canonical name (``"float32"``/``"float16"``/``"bfloat16"``) of an on-disk activation dtype."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise StoreError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        return dtype
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    raise StoreError(f"dtype must be one of {', '.join(DTYPES)} (or the torch dtypes); got {dtype!r}")


def _check_endianness() -> None:
    if sys.byteorder != "little":
        raise StoreError("activation stores are little-endian; this machine is big-endian")


def _bytes_view(t: torch.Tensor) -> memoryview:
    t = t.detach().contiguous().cpu().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def write_shard(path: str | Path, tensors: dict[str, torch.Tensor], *, metadata: dict[str, str] | None = None) -> tuple[str, int]:
    """Write ``tensors`` as one safetensors file at ``path`` atomically; return ``(sha256, bytes)``."""
    _check_endianness()
    path = Path(path)
    header: dict[str, object] = {}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _ST_CODE:
            raise StoreError(f"cannot store tensor {name!r} of dtype {t.dtype}")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_CODE[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    h = hashlib.sha256()
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            for block in (struct.pack("<Q", len(text)), text, *(_bytes_view(t) for t in tensors.values())):
                h.update(block)
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return h.hexdigest(), 8 + len(text) + offset


class TensorInfo(NamedTuple):
    """Where one tensor lies in a shard file."""

    code: str
    """safetensors dtype code (``"F32"``, ``"BF16"``, ...)."""
    shape: tuple[int, ...]
    """Tensor shape."""
    begin: int
    """Absolute byte offset of the first element in the file."""
    end: int
    """Absolute byte offset one past the last element."""


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """Parse a safetensors header; a malformed one raises :class:`StoreError` naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        return {
            name: TensorInfo(v["dtype"], tuple(v["shape"]), 8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
            for name, v in header.items()
        }
    except (OSError, struct.error, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"shard file {path} is corrupted or unreadable ({type(e).__name__}: {e})") from None


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks (bounded memory; does not touch any mapping)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def shape_problem(info: Mapping[str, TensorInfo], shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """What differs between a parsed header and the tensor shapes it should hold; ``None`` if nothing."""
    for name, want in shapes.items():
        got = info[name].shape if name in info else "absent"
        if got != tuple(want):
            return f"tensor {name!r} is {got}, expected {tuple(want)}"
    return None


def file_damage(
    folder: str | Path,
    rec: FileRecord,
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    digest: bool = True,
) -> str | None:
    """What is wrong with the shard file ``rec`` of the store at ``folder`` (a phrase to follow its
    name, e.g. ``"is missing"``), or ``None`` if it is intact.

    Cheapest check first: the file exists, has the recorded size, (with ``shapes``) its header parses
    and holds those tensors, and (with ``digest``) its SHA-256 is the recorded one — the only check
    that reads the whole file.
    """
    path = Path(folder) / rec.path
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != rec.bytes:
        return f"has {size} bytes, the manifest says {rec.bytes} (truncated or replaced)"
    if shapes is not None:
        try:
            problem = shape_problem(read_header(path), shapes)
        except StoreError:
            problem = "its safetensors header does not parse"
        if problem is not None:
            return f"is corrupted ({problem})"
    if digest and sha256_of(path) != rec.sha256:
        return "is corrupted (SHA-256 differs from the manifest)"
    return None


class MappedFile:
    """A read-only memory map of one shard file with NumPy views of its tensors."""

    def __init__(self, path: str | Path):
        _check_endianness()
        self.path = Path(path)
        self.info = read_header(self.path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            for name, ti in self.info.items():
                if ti.end > size or ti.code not in _NP:
                    raise StoreError(f"shard file {self.path} is corrupted: tensor {name!r} lies outside the file")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        if self._mm is not None and hasattr(mmap, "MADV_RANDOM"):
            self._mm.madvise(mmap.MADV_RANDOM)
        self._arrays: dict[str, np.ndarray] = {}
        self.touched = False

    def array(self, name: str) -> np.ndarray:
        """Zero-copy NumPy view of tensor ``name`` (bfloat16 shows as uint16; see :func:`to_torch`)."""
        if name not in self._arrays:
            ti = self.info[name]
            dt = np.dtype(_NP[ti.code]).newbyteorder("<")
            count = int(np.prod(ti.shape, dtype=np.int64))
            buf = self._mm if self._mm is not None else b""
            self._arrays[name] = np.frombuffer(buf, dtype=dt, count=count, offset=ti.begin).reshape(ti.shape)
        return self._arrays[name]

    def torch_dtype(self, name: str) -> torch.dtype:
        return _FROM_CODE[self.info[name].code]

    def release(self) -> None:
        """Drop this process's resident pages of the mapping (the data stays in the page cache)."""
        if self._mm is not None and self.touched:
            self._mm.madvise(mmap.MADV_DONTNEED)
        self.touched = False

    def close(self) -> None:
        self._arrays.clear()
        if self._mm is not None:
            self._mm.close()
            self._mm = None


def to_torch(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A NumPy array read from a shard as a torch tensor of its stored ``dtype`` (no copy)."""
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


_PAGE = mmap.PAGESIZE


def mapped_file_bytes() -> int | None:
    """Resident bytes of this process's file-backed (and shared) mappings, from ``/proc/self/statm``;
    ``None`` where that file does not exist (then the reader releases after every chunk)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None
