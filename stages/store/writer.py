"""Writing one shard of a column: an attempt folder filled in clip order, then one atomic commit record."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import zarr

from stages.core.fs import join, write_json_atomic
from stages.store.format import CHECKSUM, StoreError, checksum
from stages.store.lease import Lease

class ShardWriter:
    """One attempt at a shard of a column: rows appended in clip order (by one thread), then one commit.

    The arrays are created at the shard's capacity and trimmed to the rows written at commit
    (a metadata-only resize: chunks are one clip each), so a shard written piece by piece is
    byte-identical to one written whole. Nothing is visible to readers before `commit`, which
    writes the commit record last; an attempt abandoned before it is garbage.
    """

    def __init__(self, column: Any, shard: int, capacity: int, lease: Lease):  # column: the Column that opened it (Column.open_shard)
        self.column, self.shard, self.lease = column, shard, lease
        self.name = lease.attempt
        self.group = zarr.open_group(column._zarr_target(join("shards", self.name)), mode="w", **column._zarr_kwargs())
        # one chunk per clip: streaming reads clip by clip
        # write_empty_chunks: every clip gets a chunk file, even an all-zero one, so the commit can list
        # them all and a missing file is damage (Zarr would silently read it as the fill value)
        self.arrays = {
            key: self.group.create_array(
                key, shape=(capacity, *spec.shape), dtype=spec.dtype, chunks=(1, *spec.shape), compressors=compressors(),
                config={"write_empty_chunks": True},
            )
            for key, spec in column.schema.items()
        }
        self.checksums: dict[str, list[str]] = {key: [] for key in column.schema}  # per row, of the values written
        self.capacity = capacity
        self.rows = 0

    def check(self, arrays: dict[str, np.ndarray], n: int) -> None:
        """Raise StoreError unless `arrays` are n rows of this column's schema (callers check before queueing)."""
        self.column._check_arrays(self.shard, arrays, n)

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Write the next rows: arrays [n, ...] per schema key, cast to the schema dtype."""
        n = len(next(iter(arrays.values()))) if arrays else 0
        self.check(arrays, n)
        if self.rows + n > self.capacity:
            raise StoreError(f"shard {self.shard} of {self.column.dirname}: {self.rows + n} rows exceed its {self.capacity} clips")
        if n:
            for key, spec in self.column.schema.items():
                block = np.asarray(arrays[key]).astype(spec.dtype, copy=False)
                self.arrays[key][self.rows : self.rows + n] = block
                self.checksums[key] += [checksum(row) for row in block]
        self.rows += n

    def commit(self, records: list[dict], failed: list[dict]) -> dict:
        """Trim to the rows written, store the records, then write the commit record (atomically, last)."""
        if len(records) != self.rows:
            raise StoreError(f"shard {self.shard} of {self.column.dirname}: {len(records)} records for {self.rows} written rows")
        if self.rows != self.capacity:
            for arr in self.arrays.values():
                arr.resize((self.rows, *arr.shape[1:]))
        self.group.attrs["records"] = records
        self._check_intact()
        record = {
            "shard": self.shard,
            "attempt": self.name,
            "clips": [r["key"] for r in records],
            "indices": [r["index"] for r in records],
            "failed": failed,
            "committed": time.time(),
            "column": self.column.dirname,
            "checksum": CHECKSUM,
            "checksums": self.checksums,
            "chunks": {
                key: [arr.metadata.encode_chunk_key((row,) + (0,) * (arr.ndim - 1)) for row in range(self.rows)]
                for key, arr in self.arrays.items()
            },
        }
        write_json_atomic(self.column.store.fs, self.column._path("commits", f"{self.shard:05d}.json"), record)
        self.lease.release()
        return record

    def _check_intact(self) -> None:
        """Refuse to commit an attempt whose lease is no longer ours or whose folder lost an array:
        a commit record must never name data that is not all there."""
        fs = self.column.store.fs
        base = self.column._path("shards", self.name)
        missing = [key for key in ("", *self.column.schema) if not fs.exists(join(base, key, "zarr.json") if key else join(base, "zarr.json"))]
        problem = self.lease.check()
        if missing:
            problem = f"arrays {', '.join(m or '<group>' for m in missing)} are missing from it" + (f" and {problem}" if problem else "")
        if problem:
            raise StoreError(
                f"shard {self.shard} of column {self.column.dirname} in {self.column.store.url}: attempt {self.name} "
                f"not committed: {problem}; rerun extract to redo the shard"
            )


def compressors() -> list:
    # fp16 activations compress ~1.05-1.2x losslessly (platform.md): a light, fast codec is enough.
    return [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]
