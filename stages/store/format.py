"""The on-disk contract of the feature store: its layout, versions, checksums and errors.

The store is a corpus snapshot plus columns of per-clip arrays, sharded, in Zarr.

Layout (any fsspec URL: a local folder, s3://bucket/prefix, ...):

    store.json                                 format version
    corpus/snapshot.json                       frozen listing: clips in shard order
    columns/<name>-<hash>/column.json          producer config, its hash, schema, attrs
    columns/<name>-<hash>/column.zarr/         column-level arrays (written once, e.g. empty-prompt embedding)
    columns/<name>-<hash>/shards/<sid>.<attempt>.zarr/   one attempt at a shard: arrays [n, ...]
    columns/<name>-<hash>/commits/<sid>.json   commit record: names the attempt, its clips and its failures,
                                               and per clip and array a checksum and the chunk key

A shard is written whole by one worker into a directory of its own attempt, then committed by one
atomic JSON write (rename locally, a single PUT on object stores). Readers only follow commit
records, so a crash mid-shard leaves an invisible attempt that the next run redoes, and two
attempts at the same shard never touch the same files. The error ledger is the union of the
commit records' failures. A column is keyed by the hash of its producer config: a different
config is a different column, never a silent reuse.

Integrity: Zarr returns a missing chunk as its fill value and decodes a damaged one without
complaint when its bytes still decompress, so the commit record carries, per clip and array, the
CRC-32 of the clip's values as written (cheap to recompute on every read of one clip) and the
chunk's key. `Column.read_row` checks them; records written before them read as "unverified".
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

FORMAT_VERSION = 1
SNAPSHOT_VERSION = 1


CHECKSUM = "crc32"  # of each clip's array values as written (C order, schema dtype): ~6 GB/s, one pass per read


class StoreError(RuntimeError):
    """The store is missing, inconsistent, or does not match what was asked of it."""


def checksum(values: np.ndarray) -> str:
    """CRC-32 (hex) of an array's bytes in C order: what a commit record holds per clip and array."""
    return f"{zlib.crc32(np.ascontiguousarray(values).data):08x}"


def read_json(fs: fsspec.AbstractFileSystem, path: str, required: tuple[str, ...] = ()) -> Any:
    """A store JSON file, or a StoreError naming it (unreadable, not JSON, or missing a required key)."""
    try:
        with fs.open(path, "r") as f:
            obj = json.load(f)
    except FileNotFoundError as exc:
        raise StoreError(f"{path}: missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: not valid JSON (truncated or damaged): {exc}") from exc
    except OSError as exc:
        raise StoreError(f"{path}: unreadable: {exc}") from exc
    missing = [k for k in required if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise StoreError(f"{path}: damaged, no {', '.join(repr(k) for k in missing)}")
    return obj


COMMIT_KEYS = ("attempt", "clips", "indices", "failed")
COLUMN_KEYS = ("name", "hash", "config", "schema")


class ShardBusy(StoreError):
    """Another live run holds the claim on this shard of this column."""


@dataclass(frozen=True)
class ArraySpec:
    """Per-clip shape and dtype of one column array (the leading clip axis is implied)."""

    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(d: dict) -> "ArraySpec":
        return ArraySpec(tuple(d["shape"]), d["dtype"])



def schema_bytes(schema: dict[str, ArraySpec]) -> int:
    """Uncompressed bytes of one clip under `schema` (what a column's producer writes before compression)."""
    return sum(int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize for spec in schema.values())



@dataclass
class ClipDamage:
    """One damaged piece of a committed shard: a clip's array (key and array set) or a whole shard/file."""

    column: str  # column dirname
    shard: int | None
    cause: str  # what is wrong, naming the file
    key: str | None = None  # clip key (None: the whole shard or column)
    array: str | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def line(self) -> str:
        where = f"{self.column}" + (f" shard {self.shard}" if self.shard is not None else "")
        where += f" clip {self.key}" if self.key else ""
        where += f" array {self.array}" if self.array else ""
        return f"{where}: {self.cause}"



def error_line(exc: BaseException) -> str:
    """One line for an exception from zarr/numcodecs/fsspec."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
