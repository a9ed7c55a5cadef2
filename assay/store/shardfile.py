"""Shard files: safetensors written atomically, read through a memory map with bounded residency.

The file format is safetensors (an 8-byte little-endian header length, a JSON header giving each
tensor's dtype, shape and byte range, then the raw little-endian tensor bytes), so any safetensors
reader opens a shard. Writing streams the tensor bytes straight to a temporary file while hashing
them (SHA-256), fsyncs, and renames into place: a reader never sees a half-written shard.

Reading maps the file (``mmap``, read-only) and views each tensor as a NumPy array without copying.
Pages touched through a mapping count toward the process's resident memory (RSS) until unmapped,
and Linux maps up to 16 neighbouring cached pages on each fault ("fault-around"), so a random row
can add 64 KiB to RSS. :class:`MappedFile` therefore reports an upper bound of the bytes each access
may make resident, and :meth:`MappedFile.release` drops them (``madvise(MADV_DONTNEED)``: the pages
stay in the OS page cache, only this process's mapping of them goes). The reader uses the two to
keep RSS under a budget whatever the store size.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from assay.store.manifest import StoreError, fsync_dir

__all__ = ["TensorInfo", "write_shard", "read_header", "MappedFile", "DTYPES", "dtype_name", "FAULT_AROUND"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""On-disk activation dtypes by name."""

_ST_CODE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32"}
_FROM_CODE = {v: k for k, v in _ST_CODE.items()}
# NumPy has no bfloat16: such tensors are viewed as uint16 and reinterpreted by torch.
_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "I32": np.int32}
FAULT_AROUND = 1 << 16
"""Bytes one page fault may map (Linux ``fault_around_bytes`` default): the residency unit."""
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


def resident_bound(offsets: np.ndarray, row_bytes: int) -> int:
    """Upper bound of the bytes that reading rows starting at sorted byte ``offsets`` may map."""
    if offsets.size == 0:
        return 0
    first = offsets // FAULT_AROUND
    last = (offsets + row_bytes - 1) // FAULT_AROUND
    blocks = 1 + int(np.count_nonzero(first[1:] != last[:-1])) + int(np.sum(last - first))
    return (blocks + 1) * FAULT_AROUND
