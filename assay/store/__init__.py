"""Activation store: sharded, memory-mapped, resumable activations on disk.

- :func:`write_store` — a model's activations at one or more sites over token windows, in fixed-size
  checksummed shards, resumable after a crash (:mod:`assay.store.writer`);
- :class:`ActivationStore` — memory-mapped reader: seeded random batches with exact resume, bounded
  memory, checksum verification (:mod:`assay.store.reader`);
- :class:`SequenceReader` — the same store as whole windows ``[batch, pos, d]`` with padding masks, in a
  seeded resumable order (:mod:`assay.store.sequence_reader`).

See ``docs/store.md``. Importing this package does no work.
"""

from assay.store.manifest import StoreError
from assay.store.reader import ActivationStore, Column
from assay.store.sequence_reader import SequenceBatch, SequenceReader
from assay.store.writer import StoreSummary, model_fingerprint, write_store

__all__ = ["ActivationStore", "Column", "SequenceBatch", "SequenceReader", "StoreError", "StoreSummary",
           "model_fingerprint", "write_store"]
